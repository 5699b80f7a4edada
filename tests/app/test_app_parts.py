"""The MONAI Label app's parts without a server: label checks, labels written on the input's grid, train options,
the refusal of trainings that cannot run, training progress, the uncertainty score. Tiny synthetic files only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import disc, write_nifti, write_png

pytest.importorskip(
    "monailabel",
    reason="MONAI Label is not installed: it is the optional extra 'monailabel', installed in its own venv "
    "(.ci/monailabel runs these tests)",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "apps" / "blosam_label"))  # the app's `lib`, as served

from ignite.engine import Engine, Events
from lib.activelearning import uncertainty
from lib.datastore import label_problem
from lib.infers import write_label
from lib.models import ModelStore
from lib.trainers import BlosamTrain, TrainProgress, TrainStats

from blosam_med.data import SampleKeys, TaskConfig, load_samples, read_image
from blosam_med.inference import CasePrediction


def test_uncertainty_is_zero_when_decided_and_half_for_coin_tosses():
    assert uncertainty(np.array([0.0, 1.0, 1.0])) == 0.0
    assert uncertainty(np.full((4, 4), 0.5)) == pytest.approx(0.5)
    assert uncertainty(np.array([0.9, 0.1, 0.5, 0.5])) == pytest.approx(1 - (0.9 + 0.9 + 0.5 + 0.5) / 4)


def test_label_problem_accepts_a_fitting_mask_and_names_each_fault(tmp_path):
    image = write_png(tmp_path / "img.png", np.random.default_rng(0).integers(0, 256, (24, 32, 3)))
    assert label_problem(image, write_png(tmp_path / "ok.png", disc(24, 32))) is None
    # a NIfTI label of a PNG image (what 3D Slicer submits) is (X, Y, 1) = (cols, rows, 1)
    assert label_problem(image, write_nifti(tmp_path / "ok.nii.gz", disc(24, 32).T[..., None])) is None
    assert "(12, 32)" in label_problem(image, write_png(tmp_path / "half.png", disc(12, 32)))
    frac = write_nifti(tmp_path / "frac.nii.gz", np.full((32, 24, 1), 0.25, np.float32))
    assert "values [0.25]" in label_problem(image, frac, "the uploaded label")
    neg = write_nifti(tmp_path / "neg.nii.gz", np.full((32, 24, 1), -1, np.int16))
    assert "values [-1.0]" in label_problem(image, neg)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    message = label_problem(image, junk, "the uploaded label")
    assert "the uploaded label" in message and "unreadable" in message and str(junk) not in message


def _prediction(image: Path, task: TaskConfig, fg: float) -> CasePrediction:
    """A prediction of ``image`` whose foreground is where the windowed image exceeds ``fg`` (logits +/-10)."""
    samples = load_samples([{"image": str(image)}], task, foreground_only=False, every_n=1)
    logits = [torch.where(s[SampleKeys.IMAGE][:1] > fg, 10.0, -10.0) for s in samples]
    first = samples[0]
    return CasePrediction(
        case="c",
        image_path=str(image),
        kind="volume" if first.get(SampleKeys.SOURCE) is not None else "2d",
        images=[s[SampleKeys.IMAGE] for s in samples],
        logits=logits,
        slices=[s[SampleKeys.SLICE] for s in samples],
        source=first.get(SampleKeys.SOURCE),
    )


def test_labels_are_written_on_the_input_grid(tmp_path):
    rng = np.random.default_rng(1)
    # a one-slice NIfTI image: the label keeps its voxel order and affine
    flat = rng.integers(0, 100, (7, 5, 1)).astype(np.int16)
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    image = write_nifti(tmp_path / "flat.nii.gz", flat, affine)
    out = write_label(_prediction(image, TaskConfig(name="t", window="minmax"), 0.5), image)
    written = nib.load(str(out))
    expected = (flat - flat.min()) / (flat.max() - flat.min()) > 0.5
    assert written.shape == flat.shape and np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj) > 0, expected)
    # a volume stored LPS-first: the label comes back in the file's own voxel order
    vol = rng.integers(0, 100, (6, 5, 4)).astype(np.int16)
    lps = np.diag([-1.0, -1.2, 2.0, 1.0])
    image = write_nifti(tmp_path / "vol.nii.gz", vol, lps)
    task = TaskConfig(name="v", window="minmax", spatial_dims=3, foreground_only=False)
    out = write_label(_prediction(image, task, 0.5), image)
    written = nib.load(str(out))
    assert written.shape == vol.shape and np.allclose(written.affine, lps)
    assert np.array_equal(np.asarray(written.dataobj) > 0, (vol - vol.min()) / (vol.max() - vol.min()) > 0.5)
    # a PNG image: a 0/255 PNG of its size
    png = write_png(tmp_path / "img.png", rng.integers(0, 256, (9, 11)))
    out = write_label(_prediction(png, TaskConfig(name="p"), 0.5), png)
    assert out.suffix == ".png" and read_image(out).shape[1:] == (9, 11)


@pytest.fixture
def trainer(tmp_path) -> BlosamTrain:
    return BlosamTrain(ModelStore(tmp_path / "model", {"polyp": "polyp"}, torch.device("cpu")), "polyp")


def test_train_options_are_typed_and_checked(trainer):
    options = trainer.options({"iterations": "3", "views": 0, "tracking": "false", "model": "x", "gpus": "all"})
    assert options == {"iterations": 3, "views": 0, "tracking": False}
    for bad, match in (
        ({"iterations": 0}, "'iterations': 0; give 1 or more"),
        ({"iterations": 2.5}, "'iterations': 2.5 is not a int"),
        ({"views": -1}, "'views': -1; give 0 or more"),
        ({"lr": "fast"}, "'lr': 'fast' is not a float"),
    ):
        with pytest.raises(ValueError, match=match):
            trainer.options(bad)
    assert trainer.config()["views"] == 8  # the polyp preset's, read from the bundle configs


class _Store:
    """The three datastore calls a training makes."""

    def __init__(self, pairs: dict[str, tuple[Path, Path]]) -> None:
        self.pairs = pairs

    def get_labeled_images(self, label_tag=None):
        return list(self.pairs)

    def get_image_uri(self, image_id):
        return str(self.pairs[image_id][0])

    def get_label_uri(self, image_id, tag):
        return str(self.pairs[image_id][1])


def test_training_refuses_too_few_or_unusable_labels(trainer, tmp_path):
    rgb = lambda i: write_png(tmp_path / f"i{i}.png", np.full((24, 32, 3), 40 * i, np.uint8))
    good = {"a": (rgb(0), write_png(tmp_path / "a.png", disc()))}
    with pytest.raises(ValueError, match=r"needs 2 or more labelled images; the datastore has 1 \(a\)"):
        trainer({"iterations": 1}, _Store(good))
    assert trainer.stats()["state"] == "FAILED" and "needs 2 or more" in trainer.stats()["message"]
    empty = write_png(tmp_path / "b.png", np.zeros((24, 32), np.uint8))
    several = write_png(tmp_path / "c.png", disc() // 255 + disc(r=3) // 255)  # values 1 and 2: two structures
    store = _Store({**good, "b": (rgb(1), empty), "c": (rgb(2), several)})
    with pytest.raises(ValueError) as err:
        trainer.labelled(store)
    assert "image 'b'" in str(err.value) and "no polyp" in str(err.value)
    assert "image 'c'" in str(err.value) and "not a binary mask" in str(err.value)
    assert not (tmp_path / "model" / "polyp" / "runs").exists()  # refused before any run folder


def test_train_progress_counts_over_folds_and_keeps_the_best_dice(tmp_path):
    stats = TrainStats(tmp_path / "train_stats.json")
    stats.reset(state="RUNNING", validation=[{"fold": 0, "epoch": 1, "dice": 0.8}])
    validator = SimpleNamespace(state=SimpleNamespace(metrics={"val_dice": 0.6}, key_metric_name="val_dice"))
    engine = Engine(lambda e, b: None)
    TrainProgress(stats.path, validator, fold=1, folds=2, max_epochs=2, epoch_length=3, every=1).attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(stats.read()["progress"]))
    engine.run(range(3), max_epochs=2)
    status = json.loads(stats.path.read_text())
    assert status["iteration"] == status["total_iterations"] == 12 and status["progress"] == 1.0
    assert status["epoch"] == status["total_epochs"] == 4
    assert [v["fold"] for v in status["validation"]] == [0, 1, 1]
    assert status["best_metric"] == 0.8  # fold 0's best is kept
    assert seen[0] == round(7 / 12, 4) and seen == sorted(seen)  # written every iteration (every=1)
