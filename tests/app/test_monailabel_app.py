"""The MONAI Label app (apps/blosam_label) in a real MONAI Label server, driven by MONAI Label's own client.

One server (module scope) on a free port serves a copy of the app over a studies folder of six polyp images from
../shared/data and one file that is not an image. The tests run in order: info, shipped inference, refused inputs,
a refused training (one label), training on four labels with a short schedule, inference with the new adapter,
next sample. Run in the MONAI Label venv (.ci/monailabel); skipped where MONAI Label or the data are absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import SHARED_DATA

pytest.importorskip(
    "monailabel",
    reason="MONAI Label is not installed: it is the optional extra 'monailabel', installed in its own venv "
    "(.ci/monailabel runs these tests)",
)
from monailabel.client.client import MONAILabelClient, MONAILabelClientException

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

APP = Path(__file__).resolve().parents[2] / "apps" / "blosam_label"
LABELLED, UNLABELLED = 4, 2
BROKEN = "broken"
TRAIN_OPTIONS = {"iterations": 2, "views": 0}  # a short schedule: 2 iterations per fold, no augmented views


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def _mask(path: str | Path) -> np.ndarray:
    arr = np.asarray(Image.open(path))
    return (arr.max(axis=-1) if arr.ndim == 3 else arr) > 127


class Server:
    def __init__(self, root: Path, proc: subprocess.Popen, client: MONAILabelClient, log: Path) -> None:
        self.root, self.proc, self.client, self.log = root, proc, client, log
        self.studies = root / "studies"
        self.stems = sorted(p.stem for p in self.studies.glob("*.png") if p.stem != BROKEN)
        self.shipped_sha256 = ""  # of the shipped polyp adapter, as the first inference reports it

    def mask_file(self, stem: str) -> Path:
        return SHARED_DATA / "polyp" / "masks" / f"{stem}.png"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_training(self, timeout: float = 300) -> dict:
        """The training task once it stopped running (DONE or ERROR)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = self.client.train_status()
            if status.get("status") not in ("SUBMITTED", "RUNNING"):
                return status
            time.sleep(2)
        raise AssertionError(f"training still running after {timeout} s\n{self.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    if not (SHARED_DATA / "polyp").is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA / 'polyp'} is absent (it sits beside the project in development only)"
        )
    root = tmp_path_factory.mktemp("monailabel")
    shutil.copytree(APP, root / "app", ignore=shutil.ignore_patterns("model", "logs", "bin", "__pycache__"))
    studies = root / "studies"
    studies.mkdir()
    for image in sorted((SHARED_DATA / "polyp" / "images").glob("*.png"))[: LABELLED + UNLABELLED]:
        shutil.copy(image, studies / image.name)
    (studies / f"{BROKEN}.png").write_bytes(b"this is not a PNG image")
    port = _free_port()
    env = {**os.environ, "BLOSAM_CACHE": str(root / "cache"), "MONAILABEL_PYEXE": sys.executable}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "server.log"
    command = [str(Path(sys.executable).with_name("monailabel")), "start_server", "--app", str(root / "app")]
    command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client = MONAILabelClient(f"http://127.0.0.1:{port}", tmpdir=str(root / "client"))
    (root / "client").mkdir()
    server = Server(root, proc, client, log)
    try:
        end = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}\n{server.log_tail()}")
            try:
                client.info()
                break
            except Exception:  # not listening yet
                if time.monotonic() > end:
                    raise AssertionError(f"server not up after 240 s\n{server.log_tail()}") from None
                time.sleep(1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its training processes: the group we started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def test_info_lists_models_trainers_and_strategies(server):
    info = server.client.info()
    expected = {f"blosam_{t}" for t in ("polyp", "lung_xray", "teeth", "lung_ct")}
    assert expected <= set(info["models"])
    assert expected <= set(info["trainers"])
    assert {"least_confident", "random"} <= set(info["strategies"])
    assert info["models"]["blosam_polyp"]["labels"] == {"polyp": 1}
    assert info["models"]["blosam_lung_ct"]["dimension"] == 3
    assert info["blosam_med"]["blosam_polyp"]["source"] == "shipped"
    assert info["trainers"]["blosam_polyp"]["config"]["views"] == 8  # the polyp preset's, read from the bundle


def test_infer_with_the_shipped_polyp_adapter(server):
    stem = server.stems[0]
    out, params = server.client.infer("blosam_polyp", stem, {})
    assert params["adapter_source"] == "shipped"
    server.shipped_sha256 = params["adapter_sha256"]
    pred, ref = _mask(out), _mask(server.mask_file(stem))
    assert pred.shape == ref.shape
    assert _dice(pred, ref) > 0.5, f"Dice {_dice(pred, ref):.3f} against {server.mask_file(stem)}"


def test_bad_inputs_end_the_request_with_the_reason(server):
    with pytest.raises(MONAILabelClientException, match=r"Status: 400.*broken\.png.*unreadable"):
        server.client.infer("blosam_polyp", BROKEN, {})
    stem = server.stems[0]
    small = server.root / "small_label.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small)
    with pytest.raises(MONAILabelClientException, match=r"Status: 400.*not saved.*size \(8, 8\)"):
        server.client.save_label(stem, str(small), tag="final")
    fractional = server.root / "fractional_label.nii.gz"
    h, w = _mask(server.mask_file(stem)).shape
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((w, h, 1), 0.5, np.float32), np.eye(4)), fractional)
    with pytest.raises(MONAILabelClientException, match=r"Status: 400.*values \[0\.5\]"):
        server.client.save_label(stem, str(fractional), tag="final")
    assert server.client.datastore()["objects"][stem]["labels"] == {}  # nothing was stored
    assert "blosam_polyp" in server.client.info()["models"]  # the server kept running


def test_training_with_one_label_is_refused(server):
    stem = server.stems[0]
    server.client.save_label(stem, str(server.mask_file(stem)), tag="final")
    server.client.train_start("blosam_polyp", dict(TRAIN_OPTIONS))
    status = server.wait_training()
    assert status["status"] == "ERROR"
    assert any("needs 2 or more labelled images" in line for line in status["details"]), status["details"]
    stats = server.client.info()["train_stats"]["blosam_polyp"]
    assert stats["state"] == "FAILED" and "needs 2 or more" in stats["message"]
    assert "final" in server.client.datastore()["objects"][stem]["labels"]  # the label is still there


def test_training_installs_a_new_adapter_that_infer_uses(server):
    for stem in server.stems[1:LABELLED]:
        server.client.save_label(stem, str(server.mask_file(stem)), tag="final")
    first = server.stems[0]  # a bad label for an image labelled before is refused, the stored one kept
    with pytest.raises(MONAILabelClientException, match="not saved"):
        server.client.save_label(first, str(server.root / "small_label.png"), tag="final")
    stored = server.client.download_label(first, "final")
    assert np.array_equal(_mask(stored), _mask(server.mask_file(first)))

    server.client.train_start("blosam_polyp", dict(TRAIN_OPTIONS))
    status = server.wait_training()
    assert status["status"] == "DONE", f"{status.get('details')}\n{server.log_tail()}"
    stats = server.client.info()["train_stats"]["blosam_polyp"]
    assert stats["state"] == "DONE" and stats["progress"] == 1.0
    assert stats["folds"] == 2 and stats["epoch"] == stats["total_epochs"] == 2
    assert {v["fold"] for v in stats["validation"]} == {0, 1}  # subset B's Dice after each fold's epoch
    assert 0.0 <= stats["best_metric"] <= 1.0
    assert sorted(stats["images"]) == server.stems[:LABELLED]
    run = Path(stats["run"])
    assert (run / "train" / "fold1" / "adapter.pt").is_file() and (
        server.root / "app" / "model" / "mlruns.db"
    ).is_file()

    out, after = server.client.infer("blosam_polyp", server.stems[LABELLED], {})
    assert after["adapter_source"] == "trained"
    assert after["adapter"] == str(server.root / "app" / "model" / "polyp" / "adapter.pt")
    assert server.shipped_sha256 and after["adapter_sha256"] != server.shipped_sha256
    assert _mask(out).shape == _mask(server.mask_file(server.stems[LABELLED])).shape


def test_next_sample_least_confident_and_random(server):
    unlabelled = set(server.stems[LABELLED:])
    sample = server.client.next_sample("least_confident", {"model": "blosam_polyp"})
    assert sample["id"] in unlabelled
    assert sample["scored"] == UNLABELLED and 0.0 <= sample["uncertainty"] <= 0.5
    assert any(s.startswith(f"{BROKEN}:") for s in sample["skipped"])  # unreadable: skipped, named
    assert sample["adapter"].endswith(os.path.join("polyp", "adapter.pt"))  # scored with the trained adapter
    assert server.client.next_sample("random", {})["id"] in unlabelled | {BROKEN}
