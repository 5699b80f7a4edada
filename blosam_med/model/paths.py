"""Where the model's on-disk caches live (embeddings and exported encoder engines)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """Embedding cache folder: ``$BLOSAM_CACHE`` or ``~/.cache/blosam_med/embeddings``."""
    return Path(os.environ.get("BLOSAM_CACHE", Path.home() / ".cache" / "blosam_med" / "embeddings"))
