"""BLO-SAM training as a MONAI engine: the bi-level trainer, which is the single-level baseline without subset B."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer, Workflow
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader

from blosam_med import distributed as dist_utils
from blosam_med.engine.events import BiLevelEvents
from blosam_med.engine.hypergradient import HYPERGRADIENTS
from blosam_med.model.blosam import BloSam
from blosam_med.variants import check_name

log = logging.getLogger(__name__)

__all__ = ["BiLevelTrainer", "bilevel_param_groups", "TrainableState"]


def bilevel_param_groups(
    network: BloSam,
    *,
    lr: float,
    weight_decay: float,
    upper_lr: float | None = None,
    upper_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: group 0 lower level (LoRA + heads), group 1 upper level (prompt).

    ``lr`` and ``weight_decay`` come from the bundle (train.yaml); the upper group takes ``upper_lr`` (default: ``lr``)
    and ``upper_weight_decay``. One optimizer with two groups behaves as two optimizers here: each step only gives gradients to one level's
    parameters (``AdamW`` skips parameters without a gradient), while MONAI's handlers (checkpointing, LR
    scheduling, MLflow's ``lr_group_<i>``) see a single ``engine.optimizer``.
    """
    return [
        {"params": network.lower_parameters(), "lr": lr, "weight_decay": weight_decay, "name": "lower"},
        {
            "params": network.upper_parameters(),
            "lr": lr if upper_lr is None else upper_lr,
            "weight_decay": upper_weight_decay,
            "name": "upper",
        },
    ]


class TrainableState:
    """``state_dict``/``load_state_dict`` over only the trained tensors, for MONAI's CheckpointSaver/Loader."""

    def __init__(self, network: BloSam) -> None:
        self.network = network

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.network.trainable_state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        self.network.load_trainable_state_dict(state, "training checkpoint")


@contextmanager
def _constant(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters that need no gradient inside the block (``requires_grad`` restored after)."""
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states, strict=True):
            p.requires_grad_(state)


class BiLevelTrainer(Trainer):
    """BLO-SAM's bi-level optimisation as a MONAI ``Trainer`` over cached image embeddings.

    Each iteration takes a batch from subset A (the engine's data loader) and one from subset B:

    1. lower step: the segmentation loss on A, gradients to the lower parameters only (LoRA + decoder heads);
    2. upper step: the prompt's hypergradient of the loss on B (``"first_order"`` or ``"second_order"``, see
       :mod:`blosam_med.engine.hypergradient`), applied to the prompt only.

    Without ``upper_data_loader`` it is the single-level baseline: one joint step of all trained parameters per
    batch. The usual engine events fire, so MONAI handlers work unchanged; inside an iteration the trainer fires
    :class:`~blosam_med.engine.events.BiLevelEvents` (lower forward/backward completed, then upper forward/backward
    completed) before ``IterationEvents.MODEL_COMPLETED``. After decollation every output item
    carries ``"loss"`` as a dict of floats (``loss_lower``, ``loss_upper``; ``loss_joint`` single-level), which
    ``from_engine(["loss"], first=True)`` hands to StatsHandler and MLFlowHandler as one metric per key.

    Several processes (``distributed=True``, under ``torchrun`` with ``the bundle's configs/multi_gpu_train.yaml``):
    each process gets a shard of every A and B batch (:func:`blosam_med.distributed.shard_loader`), the trained
    parameters start from rank 0's values, and every gradient is averaged over the processes before it is used: the
    lower (or joint) step's gradients after ``backward``, and inside the hypergradient each gradient it is built from
    (see :mod:`blosam_med.engine.hypergradient`). The processes therefore take identical steps, equal to one process's
    steps on the whole (global) batch; logged losses are averaged too. The network is not wrapped in
    ``DistributedDataParallel``: DDP averages gradients in hooks of one ``backward()`` per step over a fixed set of
    parameters, whereas a bi-level step calls ``backward`` for the lower parameters only, then
    ``torch.autograd.grad`` (which DDP's hooks do not reduce) for the prompt, and the second-order hypergradient
    needs the averaged ``v`` before its finite-difference forwards at perturbed weights. The explicit all-reduce
    keeps the single-process code path unchanged and communicates only the trained tensors (LoRA, heads, prompt).

    Args:
        device: where the decoder runs.
        max_epochs: epochs over the A loader (or ``epoch_length`` iterations each).
        train_data_loader: batches of subset A: dicts with ``"image"`` (embeddings) and ``"label"``.
        network: the BLO-SAM model.
        optimizer: one optimizer over both levels, groups from :func:`bilevel_param_groups`.
        loss_function: ``loss(logits, target)``, e.g. MONAI ``DiceCELoss(sigmoid=True)``.
        upper_data_loader: batches of subset B; ``None`` for single-level training.
        hypergradient: ``"first_order"`` or ``"second_order"``.
        unroll_lr: virtual step size of the second-order unrolled step; default: the lower group's current lr.
        fd_epsilon: finite-difference scale (``R = fd_epsilon / ||v||``).
        distributed: average gradients and losses over the initialised ``torch.distributed`` process group.
        amp: run the decoder's forward passes (both levels, the hypergradient's included) under
            ``torch.autocast`` to bfloat16, on the CPU or a GPU; losses and optimizer steps stay float32. float16 is
            refused: the prompt's hypergradient (``torch.autograd.grad``) is not loss-scaled; so is a CPU without
            native bfloat16 (``avx512_bf16`` or AMX), where it is emulated and 10x slower. A GPU before compute
            capability 8.0 is logged (slower, not measured).
        amp_kwargs: further ``torch.autocast`` arguments; ``dtype`` must be ``torch.bfloat16`` (the default).

    The other arguments are those of :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: BloSam,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        upper_data_loader: Iterable | DataLoader | None = None,
        hypergradient: str = "first_order",
        unroll_lr: float | None = None,
        fd_epsilon: float = 0.01,
        distributed: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        decollate: bool = True,
        optim_set_to_none: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        check_name("hypergradient", hypergradient)
        if not isinstance(amp, bool):  # a bundle run's `--amp false` is the string 'false', which is truthy
            raise ValueError(f"amp must be True or False, got {amp!r} (python -m monai.bundle run takes --amp True)")
        if distributed and not dist_utils.is_distributed():
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group: run under "
                "torchrun with the bundle's configs/multi_gpu_train.yaml merged after train.yaml"
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        if amp:
            self.amp_kwargs = bf16_autocast_kwargs(self.amp_kwargs, torch.device(device))
        self.network = network
        self.optimizer = optimizer
        self.loss_function = _float_loss(loss_function) if amp else loss_function
        self.upper_data_loader = upper_data_loader
        self.hypergradient = hypergradient
        self.unroll_lr = unroll_lr
        self.fd_epsilon = fd_epsilon
        self.distributed = distributed
        self.optim_set_to_none = optim_set_to_none
        self._upper_iter: Any = None
        self._check_groups()
        self.register_events(*BiLevelEvents)
        self.add_event_handler(Events.EPOCH_STARTED, self._set_sampler_epochs)
        if distributed:
            self.add_event_handler(Events.STARTED, self._broadcast_parameters)
        if decollate:
            self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._group_losses)

    def run(self) -> None:  # type: ignore[override]
        """Run the training; unlike ``monai.engines.Trainer.run``, no ``GradScaler`` (bfloat16 needs none)."""
        self.scaler = None
        Workflow.run(self)

    def _autocast(self) -> Any:
        return torch.autocast(self.state.device.type, **self.amp_kwargs) if self.amp else nullcontext()

    @property
    def bilevel(self) -> bool:
        return self.upper_data_loader is not None

    def _check_groups(self) -> None:
        owned = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        trained = {id(p) for p in self.network.lower_parameters() + self.network.upper_parameters()}
        if owned != trained:
            raise ValueError(
                "the optimizer must hold exactly the network's lower and upper parameters "
                "(use blosam_med.engine.bilevel_param_groups)"
            )

    def _lower_lr(self) -> float:
        first = self.network.lower_parameters()[0]
        return next(float(g["lr"]) for g in self.optimizer.param_groups if any(p is first for p in g["params"]))

    def _set_sampler_epochs(self, engine: BiLevelTrainer) -> None:
        """Seed per-epoch samplers of both loaders by the epoch, so a resumed run draws the same batches."""
        for loader in (engine.data_loader, engine.upper_data_loader):
            set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(engine.state.epoch)

    def _broadcast_parameters(self, engine: BiLevelTrainer) -> None:
        """Every process starts from rank 0's trained tensors (a resumed run then loads the same checkpoint)."""
        dist_utils.broadcast_(engine.network.lower_parameters() + engine.network.upper_parameters())

    def _average(self, tensors: list) -> list:
        """Mean over the processes, in place (``distributed=True``); unchanged in one process."""
        return list(dist_utils.average_(tensors)) if self.distributed else tensors

    def _next_upper_batch(self) -> Any:
        if self.upper_data_loader is None:
            raise RuntimeError("single-level training has no upper data loader")
        if self._upper_iter is None:
            self._upper_iter = iter(self.upper_data_loader)
        try:
            return next(self._upper_iter)
        except StopIteration:  # a fresh pass, so random transforms and shuffling stay random
            self._upper_iter = iter(self.upper_data_loader)
            return next(self._upper_iter)

    def _step(self, params: list[torch.nn.Parameter]) -> None:
        """Optimizer step over ``params`` only: every other trained parameter has its gradient cleared."""
        keep = {id(p) for p in params}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in keep:
                    p.grad = None
        self.optimizer.step()

    def _iteration(self, engine: BiLevelTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x_a, y_a = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        engine.network.train()
        lower = engine.network.lower_parameters()
        upper = engine.network.upper_parameters()

        # lower level (or the joint single-level step); bi-level, the prompt is held constant in it: its gradient
        # would be discarded, and without it the backward pass stops before the image-side input of the decoder
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _constant(upper if engine.bilevel else []):
            with engine._autocast():
                logits = engine.network.forward_embeddings(x_a)
                loss_a = engine.loss_function(logits, y_a)
            engine.fire_event(BiLevelEvents.LOWER_FORWARD_COMPLETED)
            loss_a.backward()
        stepped = lower + upper if not engine.bilevel else lower
        engine._average([p.grad for p in stepped])
        engine.fire_event(BiLevelEvents.LOWER_BACKWARD_COMPLETED)
        engine._step(stepped)
        output: dict[str, Any] = {
            Keys.PRED: logits.detach().float(),
            Keys.LABEL: y_a,
            Keys.LOSS: engine._average([loss_a.detach().clone()])[0],
        }

        # upper level
        if engine.bilevel:
            x_b, y_b = engine.prepare_batch(
                engine._next_upper_batch(), engine.state.device, engine.non_blocking, **engine.to_kwargs
            )[:2]
            with engine._autocast():
                grads, loss_b = HYPERGRADIENTS[engine.hypergradient](
                    engine.network,
                    engine.loss_function,
                    (x_b, y_b),
                    batch_a=(x_a, y_a),
                    xi=engine.unroll_lr if engine.unroll_lr is not None else engine._lower_lr(),
                    eps=engine.fd_epsilon,
                    reduce=engine._average,
                    on_loss=lambda: engine.fire_event(BiLevelEvents.UPPER_FORWARD_COMPLETED),
                )
            engine.fire_event(BiLevelEvents.UPPER_BACKWARD_COMPLETED)
            engine.optimizer.zero_grad(set_to_none=True)
            for p, g in zip(upper, grads, strict=True):
                p.grad = g.detach()
            engine._step(upper)
            output["loss_upper"] = engine._average([loss_b.clone()])[0]
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _group_losses(self, engine: BiLevelTrainer) -> None:
        """After decollation: ``item["loss"]`` becomes ``{"loss_lower": .., "loss_upper": ..}`` (floats)."""
        for item in engine.state.output:
            if self.bilevel:
                item[Keys.LOSS] = {"loss_lower": float(item[Keys.LOSS]), "loss_upper": float(item.pop("loss_upper"))}
            else:
                item[Keys.LOSS] = {"loss_joint": float(item[Keys.LOSS])}


def bf16_autocast_kwargs(amp_kwargs: dict, device: torch.device) -> dict:
    """``torch.autocast`` arguments for bfloat16 training; float16 and a CPU without native bf16 are refused."""
    kwargs = {**amp_kwargs, "dtype": amp_kwargs.get("dtype", torch.bfloat16)}
    if kwargs["dtype"] != torch.bfloat16:
        raise ValueError(
            f"amp dtype {kwargs['dtype']}: bi-level training runs autocast in bfloat16 only (the prompt's "
            "hypergradient is not loss-scaled, so float16 gradients could underflow)"
        )
    if device.type == "cpu" and not _native_bf16_cpu():
        raise ValueError(
            "amp: this CPU has no native bfloat16 (avx512_bf16 or AMX): emulated, a bfloat16 training iteration took "
            "10x a float32 one (docs/speed.md#bfloat16-training-opt-in), so train in float32 (drop --amp / amp: true)"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        log.warning("amp: this GPU has no native bfloat16 (compute capability 8.0 or later), so it may be slower")
    return kwargs


def _float_loss(loss_function: Callable) -> Callable:
    """The loss of bfloat16 logits computed in float32."""

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_function(logits.float(), target)

    return loss


def _native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX), by torch's private checks where it has them."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
