"""KeepBestState: the adapter written at completion holds the tensors of the best validation round."""

from __future__ import annotations

import json

import torch
from ignite.engine import Engine, Events

from blosam_med.engine import KeepBestState, RunRecorder
from blosam_med.model import BloSam


class _Validator(Engine):
    """An evaluator stand-in whose key metric takes the given values round after round."""

    def __init__(self, values):
        super().__init__(lambda e, b: None)
        self.values = iter(values)
        self.add_event_handler(Events.COMPLETED, self._metric)  # before KeepBestState's handler
        self.state.key_metric_name = "val_dice"

    def _metric(self, engine):
        engine.state.metrics = {"val_dice": next(self.values)}


def _train(tiny_backbone, values, enabled=True):
    model = BloSam(tiny_backbone)
    validator = _Validator(values)
    snapshots = []

    def step(engine, batch):
        with torch.no_grad():
            model.prompt.add_(1.0)  # every epoch moves the prompt: its value tells which epoch was kept

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):
        validator.run([0], max_epochs=1)
        snapshots.append(model.prompt.detach().clone())

    keeper = KeepBestState(model, validator, enabled=enabled)
    keeper.attach(trainer)
    trainer.run([0], max_epochs=len(values))
    return model, snapshots, keeper


def test_best_round_is_restored_at_completion(tiny_backbone):
    model, snapshots, keeper = _train(tiny_backbone, [0.2, 0.7, 0.4, 0.1])
    assert keeper.best_epoch == 2 and keeper.best_metric == 0.7
    assert torch.equal(model.prompt.detach(), snapshots[1])


def test_a_tie_keeps_the_later_round(tiny_backbone):
    model, snapshots, _ = _train(tiny_backbone, [0.5, 0.5, 0.3])
    assert torch.equal(model.prompt.detach(), snapshots[1])


def test_disabled_keeps_the_last_round(tiny_backbone):
    model, snapshots, _ = _train(tiny_backbone, [0.9, 0.1], enabled=False)
    assert torch.equal(model.prompt.detach(), snapshots[-1])


def test_state_round_trip_resumes_the_selection(tiny_backbone):
    _, _, keeper = _train(tiny_backbone, [0.3, 0.8, 0.2])
    other = KeepBestState(BloSam(tiny_backbone), _Validator([]))
    other.load_state_dict(keeper.state_dict())
    assert other.best_metric == 0.8 and other.best_epoch == 2
    assert all(torch.equal(other.best_state[k], v) for k, v in keeper.best_state.items())


def test_summary_names_the_kept_round_and_every_round(tiny_backbone):
    _, _, keeper = _train(tiny_backbone, [0.2, 0.7, 0.4])
    assert keeper.summary() == {
        "epoch": 2,
        "value": 0.7,
        "metrics": {"val_dice": 0.7},
        "rounds": [[1, 0.2], [2, 0.7], [3, 0.4]],
    }
    restored = KeepBestState(keeper.network, keeper.validator)
    restored.load_state_dict(keeper.state_dict())
    assert restored.summary() == keeper.summary()
    assert _train(tiny_backbone, [0.9], enabled=False)[2].summary() is None


def test_recorder_reports_the_kept_rounds_validation(tiny_backbone, tmp_path):
    """metrics.json's ``validation`` describes the adapter it sits beside: the kept round's, not the last round's."""
    model, _, keeper = _train(tiny_backbone, [0.2, 0.7, 0.4])
    recorder = RunRecorder(model, tmp_path, draw={}, validator=keeper.validator, selection=keeper)
    trainer = Engine(lambda e, b: None)
    recorder.attach(trainer)
    trainer.run([0], max_epochs=1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["validation"] == {"val_dice": 0.7} and metrics["validation_last"] == {"val_dice": 0.4}
    assert metrics["selected"]["epoch"] == 2
