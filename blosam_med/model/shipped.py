"""Adapters that ship inside the package: ``blosam_med/assets/adapters/<task>/adapter.pt`` plus its model card."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED_DIR", "shipped_adapters", "shipped_adapter"]

#: Folder of the shipped adapters, one sub-folder per task with ``adapter.pt`` and ``MODEL_CARD.md``.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "adapters"


def shipped_adapters() -> dict[str, Path]:
    """``{task: adapter file}`` for every adapter shipped with this installation."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {d.name: d / "adapter.pt" for d in sorted(SHIPPED_DIR.iterdir()) if (d / "adapter.pt").is_file()}


def shipped_adapter(task: str) -> Path:
    """The shipped adapter of ``task`` (``blosam infer --task polyp``).

    Raises:
        ValueError: no adapter ships for ``task`` (the message lists those that do).
    """
    found = shipped_adapters()
    if task not in found:
        raise ValueError(
            f"no shipped adapter for task '{task}'; shipped: {sorted(found) or 'none'} "
            f"(in {SHIPPED_DIR}); train one with `blosam train` and pass --adapter"
        )
    return found[task]
