"""Fixtures of the data tests; the synthetic writers are in ``synthetic.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import SHARED_DATA


@pytest.fixture
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the project in development only)")
    return SHARED_DATA
