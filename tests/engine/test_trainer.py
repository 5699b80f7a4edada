from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler, from_engine
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from blosam_med.engine import BiLevelEvents, BiLevelTrainer, TrainableState, bilevel_param_groups
from blosam_med.model import BloSam


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that snapshots every parameter after each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = []

    def step(self, closure=None):
        out = super().step(closure)
        self.snapshots.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out


def _loader(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    data = [
        {"image": torch.randn(*shape, generator=g), "label": (torch.rand(1, 64, 64, generator=g) > 0.5).float()}
        for _ in range(n)
    ]
    return DataLoader(Dataset(data), batch_size=2, shuffle=False)


def _trainer(tiny_backbone, bilevel=True, upper_heads=False, **kw):
    model = BloSam(tiny_backbone, upper_heads=upper_heads)
    opt = RecordingAdamW(bilevel_param_groups(model, lr=1e-2, weight_decay=0.1))
    loss = DiceCELoss(sigmoid=True, lambda_ce=0.2, lambda_dice=0.8)
    shape = tiny_backbone.embedding_shape
    if bilevel:
        kw.setdefault("upper_data_loader", _loader(2, shape, 1))
    trainer = BiLevelTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_loader(2, shape, 0),
        network=model,
        optimizer=opt,
        loss_function=loss,
        **kw,
    )
    return trainer, model, opt


def _changed(before, after):
    return [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order"])
def test_lower_step_moves_lower_only_upper_step_moves_prompt_only(tiny_backbone, hypergradient):
    trainer, _model, opt = _trainer(tiny_backbone, hypergradient=hypergradient)
    n_lower = len(opt.param_groups[0]["params"])
    initial = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    trainer.run()
    assert len(opt.snapshots) == 2  # one iteration: a lower step, then an upper step
    lower_step = _changed(initial, opt.snapshots[0])
    upper_step = _changed(opt.snapshots[0], opt.snapshots[1])
    assert any(lower_step[:n_lower]) and not any(lower_step[n_lower:])
    assert not any(upper_step[:n_lower]) and all(upper_step[n_lower:])
    out = trainer.state.output[0]["loss"]
    assert set(out) == {"loss_lower", "loss_upper"} and all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order"])
def test_upper_heads_train_on_b_and_lora_alone_on_a(tiny_backbone, hypergradient):
    trainer, model, opt = _trainer(tiny_backbone, hypergradient=hypergradient, upper_heads=True)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    initial = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    trainer.run()
    lower_step = dict(zip(order, _changed(initial, opt.snapshots[0]), strict=True))
    upper_step = dict(zip(order, _changed(opt.snapshots[0], opt.snapshots[1]), strict=True))
    lora = [n for n in order if "lora_" in n]
    heads = [n for n in order if n.startswith("mask_decoder.output_upscaling")]
    assert lora and heads
    assert any(lower_step[n] for n in lora) and not any(lower_step[n] for n in heads)
    assert not lower_step["prompt_encoder.no_mask_embed.weight"]
    assert all(upper_step[n] for n in heads) and upper_step["prompt_encoder.no_mask_embed.weight"]
    assert not any(upper_step[n] for n in lora)


def test_single_level_moves_everything_in_one_step(tiny_backbone):
    trainer, _model, opt = _trainer(tiny_backbone, bilevel=False)  # no subset B: single-level
    n_lower = len(opt.param_groups[0]["params"])
    initial = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    trainer.run()
    assert len(opt.snapshots) == 1
    step = _changed(initial, opt.snapshots[0])
    assert any(step[:n_lower]) and all(step[n_lower:])
    assert set(trainer.state.output[0]["loss"]) == {"loss_joint"}


@pytest.mark.parametrize("bilevel", [True, False])
def test_bilevel_events_fire_in_step_order(tiny_backbone, bilevel):
    trainer, _, _ = _trainer(tiny_backbone, bilevel=bilevel)
    fired = []
    for event in BiLevelEvents:
        trainer.add_event_handler(event, lambda _, e=event: fired.append(e.value))
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda _: fired.append("model_completed"))
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda _: fired.append("forward_completed"))
    trainer.run()  # one iteration
    lower = ["lower_forward_completed", "lower_backward_completed"]
    upper = ["upper_forward_completed", "upper_backward_completed"] if bilevel else []
    assert fired == [*lower, *upper, "model_completed"]


def test_stats_handler_reads_both_losses(tiny_backbone, capsys):
    handler = StatsHandler(
        name="blosam_test", output_transform=from_engine(["loss"], first=True), iteration_log=True, epoch_log=False
    )
    trainer, _, _ = _trainer(tiny_backbone, train_handlers=[handler])
    trainer.run()
    printed = capsys.readouterr()
    assert "loss_lower:" in printed.out + printed.err and "loss_upper:" in printed.out + printed.err


def test_optimizer_must_hold_both_levels(tiny_backbone):
    model = BloSam(tiny_backbone)
    opt = torch.optim.AdamW(model.lower_parameters())
    with pytest.raises(ValueError, match="bilevel_param_groups"):
        BiLevelTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[],
            network=model,
            optimizer=opt,
            loss_function=torch.nn.BCEWithLogitsLoss(),
        )
    with pytest.raises(ValueError, match="hypergradient"):
        _trainer(tiny_backbone, hypergradient="third_order")


def test_trainable_state_round_trip(tiny_backbone):
    trainer, model, _ = _trainer(tiny_backbone)
    trainer.run()
    state = TrainableState(model).state_dict()
    fresh = BloSam(tiny_backbone)
    TrainableState(fresh).load_state_dict(state)
    emb = torch.randn(1, *tiny_backbone.embedding_shape)
    with torch.no_grad():
        assert torch.equal(fresh.eval().forward_embeddings(emb), model.eval().forward_embeddings(emb))


def test_distributed_needs_a_process_group(tiny_backbone):
    with pytest.raises(ValueError, match="initialised torch.distributed process group.*multi_gpu_train.yaml"):
        _trainer(tiny_backbone, distributed=True)


def _plain_losses(backbone, bilevel: bool, iterations: int) -> list[tuple[float, ...]]:
    """The training step written plainly (positional encoding recomputed in every call, the lower step's backward
    through the prompt too): the reference the trainer's shortcuts must reproduce."""
    torch.manual_seed(0)  # LoRA's random initialisation, as for the trainer's model
    model = BloSam(backbone)
    opt = torch.optim.AdamW(bilevel_param_groups(model, lr=1e-2, weight_decay=0.1))
    loss_fn = DiceCELoss(sigmoid=True, lambda_ce=0.2, lambda_dice=0.8)
    lower, upper = model.lower_parameters(), model.upper_parameters()

    def logits(x):
        dense = model.prompt.reshape(1, -1, 1, 1).expand(1, -1, *x.shape[-2:])
        out, _ = model.mask_decoder(
            image_embeddings=x,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=x.new_zeros((1, 0, x.shape[1])),
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return out

    def step(params):
        for p in lower + upper:
            if all(p is not q for q in params):
                p.grad = None
        opt.step()

    losses = []
    batches_a = [next(iter(_loader(2, backbone.embedding_shape, 0)))] * iterations
    batches_b = [next(iter(_loader(2, backbone.embedding_shape, 1)))] * iterations
    for a, b in zip(batches_a, batches_b, strict=True):
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_a = loss_fn(logits(a["image"]), a["label"])
        loss_a.backward()
        step(lower if bilevel else lower + upper)
        if not bilevel:
            losses.append((loss_a.item(),))
            continue
        loss_b = loss_fn(logits(b["image"]), b["label"])
        grads = torch.autograd.grad(loss_b, upper)
        opt.zero_grad(set_to_none=True)
        for p, g in zip(upper, grads, strict=True):
            p.grad = g
        step(upper)
        losses.append((loss_a.item(), loss_b.item()))
    return losses


@pytest.mark.parametrize("bilevel", [True, False])
def test_loss_curve_equals_the_plain_step(tiny_backbone, bilevel):
    torch.manual_seed(0)
    trainer, _, _ = _trainer(tiny_backbone, bilevel, epoch_length=6)
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(tuple(e.state.output[0]["loss"].values()))
    )
    trainer.run()
    expected = _plain_losses(tiny_backbone, bilevel, 6)
    assert len(losses) == 6 and len(losses[0]) == (2 if bilevel else 1)
    assert torch.allclose(torch.tensor(losses), torch.tensor(expected), rtol=0, atol=1e-6), (losses, expected)


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order"])
def test_bf16_autocast_runs_both_levels_in_bfloat16_and_keeps_float32_weights(
    tiny_backbone, hypergradient, monkeypatch
):
    """--amp bf16: every decoder forward (lower, and inside the hypergradient) computes in bfloat16; trained tensors,
    losses and steps stay float32, and the first iteration's losses stay near float32's."""
    import blosam_med.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_native_bf16_cpu", lambda: True)  # emulated bf16 computes the same, slower
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        trainer, model, _ = _trainer(tiny_backbone, hypergradient=hypergradient, amp=amp)
        seen = []
        model.mask_decoder.output_upscaling.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        trainer.run()
        losses[amp] = torch.tensor(list(trainer.state.output[0]["loss"].values()))
        forwards = 2 if hypergradient == "first_order" else 5  # lower; B (+ unrolled A and the two differences)
        assert seen == [torch.bfloat16 if amp else torch.float32] * forwards
        assert all(p.dtype == torch.float32 for p in model.lower_parameters() + model.upper_parameters())
        assert trainer.scaler is None
    assert not torch.equal(losses[True], losses[False])
    assert torch.allclose(losses[True], losses[False], atol=0.02), losses


def test_fp16_training_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="bfloat16 only.*not loss-scaled"):
        _trainer(tiny_backbone, amp=True, amp_kwargs={"dtype": torch.float16})
    with pytest.raises(ValueError, match="amp must be True or False, got 'false'"):
        _trainer(tiny_backbone, amp="false")  # fire's parse of `--amp false`: truthy, so refused, not run in bf16


def test_bf16_on_a_cpu_without_native_bfloat16_is_refused(tiny_backbone, monkeypatch):
    import blosam_med.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_native_bf16_cpu", lambda: True)
    assert _trainer(tiny_backbone, amp=True)[0].amp_kwargs["dtype"] == torch.bfloat16
    monkeypatch.setattr(trainer_module, "_native_bf16_cpu", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16.*drop --amp"):
        _trainer(tiny_backbone, amp=True)
    assert _trainer(tiny_backbone, amp=False)[0].amp is False  # float32 training is unaffected
