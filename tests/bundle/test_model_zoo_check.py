"""Every bundle under ``bundles/`` passes the MONAI model zoo's own check (``ci/verify_bundle.py``, full mode, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ZOO_CI = Path(__file__).resolve().parent / "zoo_ci"
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def _zoo_layout(tmp_path: Path, bundle: str) -> Path:
    """The zoo's checkout layout: ``ci/`` and ``models/<bundle>`` (links followed, as a git checkout of the zoo has
    plain files), ``models/model_info.json`` listing no earlier version."""
    shutil.copytree(ZOO_CI, tmp_path / "ci")
    shutil.copytree(ROOT / "bundles" / bundle, tmp_path / "models" / bundle, symlinks=False)
    (tmp_path / "models" / "model_info.json").write_text("{}")
    return tmp_path


def test_every_shipped_task_has_a_bundle():
    assert BUNDLES == ["blosam_lung_ct", "blosam_lung_xray", "blosam_polyp", "blosam_teeth"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_model_zoo_verify_bundle_full_mode(bundle, tmp_path):
    zoo = _zoo_layout(tmp_path, bundle)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "ci/verify_bundle.py", "-b", bundle, "-m", "full"]
    done = subprocess.run(cmd, cwd=zoo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for step in (
        "directory is verified correctly.",
        "version and changelog are verified correctly.",
        "metadata format is verified correctly.",
        "data shape is verified correctly.",
        f"bundle: {bundle} does not support torchscript, skip verifying.",
    ):
        assert step in done.stdout, (step, done.stdout[-2000:])


def test_the_check_fails_a_bundle_without_its_model(tmp_path):
    """The vendored check is live: the same bundle without ``models/model.pt`` is refused."""
    zoo = _zoo_layout(tmp_path, BUNDLES[0])
    (zoo / "models" / BUNDLES[0] / "models" / "model.pt").unlink()
    cmd = [sys.executable, "ci/verify_bundle.py", "-b", BUNDLES[0], "-m", "min"]
    done = subprocess.run(cmd, cwd=zoo, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "models/model.pt is not existing" in done.stderr


def test_the_check_fails_a_version_already_in_the_zoo(tmp_path):
    zoo = _zoo_layout(tmp_path, BUNDLES[0])
    version = json.loads((zoo / "models" / BUNDLES[0] / "configs" / "metadata.json").read_text())["version"]
    (zoo / "models" / "model_info.json").write_text(json.dumps({f"{BUNDLES[0]}_v{version}": {}}))
    cmd = [sys.executable, "ci/verify_bundle.py", "-b", BUNDLES[0], "-m", "min"]
    done = subprocess.run(cmd, cwd=zoo, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "is already used" in done.stderr
