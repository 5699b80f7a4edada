"""2D slices of RAS-oriented volumes, in radiological display orientation, and their way back into the volume.

A volume is a channel-first (C, X, Y, Z) tensor oriented to RAS (index x grows to the patient's right, y to anterior,
z to superior). A slice is shown as a radiologist would see it: axial with anterior up and the patient's right on
the image's left; coronal and sagittal with superior up. :func:`slice_view` and :func:`slices_to_volume` are exact
inverses, so a predicted slice mask can be written back into the volume's voxel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from blosam_med.data.files import case_id
from blosam_med.data.keys import PairKeys, Sample, SampleKeys, SourceKeys
from blosam_med.data.tasks import AXES

__all__ = ["slice_view", "slice_spacing", "slices_to_volume", "volume_to_slices", "axis_index"]


def _plain(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A plain torch tensor (MetaTensor metadata dropped: slices carry their geometry in ``source``)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def axis_index(axis: str | int) -> int:
    """Index of a spatial axis of a RAS volume: ``axial`` 2, ``coronal`` 1, ``sagittal`` 0 (ints pass through)."""
    if isinstance(axis, int) and 0 <= axis <= 2:
        return axis
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)} (or 0, 1, 2), got {axis!r}")
    return AXES[axis]


def slice_view(volume: torch.Tensor, axis: str | int, index: int) -> torch.Tensor:
    """Slice ``index`` of a (C, X, Y, Z) RAS volume along ``axis`` as a (C, H, W) image in display orientation.

    The two remaining spatial axes (a, b), in volume order, become rows = b reversed and columns = a reversed.
    """
    a = axis_index(axis)
    return volume.select(a + 1, index).transpose(-1, -2).flip(-1, -2)


def slice_spacing(affine: np.ndarray | torch.Tensor, axis: str | int) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of slices along ``axis`` of a volume with this 4x4 affine."""
    a = axis_index(axis)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    rest = [d for d in range(3) if d != a]
    return float(spacing[rest[1]]), float(spacing[rest[0]])


def slices_to_volume(
    slices: Sequence[torch.Tensor | np.ndarray], indices: Sequence[int], source: dict[str, Any], fill: float = 0
) -> torch.Tensor:
    """Put (C, H, W) display-oriented slices back at ``indices`` of a volume with ``source["shape"]``.

    Args:
        slices: slices as produced by :func:`slice_view` (or predictions on them), each (C, H, W).
        indices: each slice's index along ``source["axis"]``.
        source: the ``source`` entry of a slice sample: ``shape`` (X, Y, Z) and ``axis`` (0, 1, 2).
        fill: value of voxels of slices not given.

    Returns:
        (C, X, Y, Z) tensor on the RAS grid of ``source["affine"]``, dtype of the first slice.
    """
    if len(slices) != len(indices) or not slices:
        raise ValueError(f"need one index per slice and at least one slice, got {len(slices)} and {len(indices)}")
    a = axis_index(int(source[SourceKeys.AXIS]))
    shape = tuple(int(s) for s in source[SourceKeys.SHAPE])
    first = torch.as_tensor(slices[0])
    out = torch.full((first.shape[0], *shape), fill, dtype=first.dtype)
    for s, i in zip(slices, indices, strict=True):
        s = torch.as_tensor(s)
        out.select(a + 1, int(i)).copy_(s.flip(-1, -2).transpose(-1, -2))
    return out


def volume_to_slices(
    pair: dict[str, Any],
    axis: str | int = "axial",
    foreground_only: bool = False,
    every_n: int = 1,
    case: str | None = None,
) -> list[Sample]:
    """2D samples from a loaded volume pair (see :func:`blosam_med.data.load_pair`).

    Args:
        pair: ``image`` (C, X, Y, Z) RAS MetaTensor windowed to [0, 1], optional ``label`` (1, X, Y, Z) 0/1,
            ``image_path``.
        axis: slicing axis: ``axial`` (default), ``coronal``, ``sagittal``.
        foreground_only: keep only slices whose label has foreground (needs a label).
        every_n: keep every n-th of the candidate slices (all slices, or the foreground ones), starting at the first.
        case: case name (default: the image file or folder name).

    Returns:
        one dict per slice (keys: :class:`blosam_med.data.keys.SampleKeys`, ``source``: :class:`SourceKeys`): ``image`` float32 (C, H, W), ``label`` uint8 (1, H, W) (when labelled), ``spacing``
        (row, col) mm, ``spacing_known`` True, ``case``, ``slice`` (index along the axis), ``image_path``, and
        ``source``: ``shape`` (X, Y, Z), ``affine`` (4x4 numpy, RAS grid), ``original_affine`` (as read), ``axis``
        (int), ``axis_name``.
    """
    image, label = pair[PairKeys.IMAGE], pair.get(PairKeys.LABEL)
    if image.ndim != 4:
        raise ValueError(
            f"{pair.get(PairKeys.IMAGE_PATH)}: expected a (C, X, Y, Z) volume, got shape {tuple(image.shape)}"
        )
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    a = axis_index(axis)
    if foreground_only and label is None:
        raise ValueError(f"{pair.get(PairKeys.IMAGE_PATH)}: foreground_only needs a label")
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=float)
    meta = getattr(image, "meta", {})
    source = {
        SourceKeys.SHAPE: tuple(int(s) for s in image.shape[1:]),
        SourceKeys.AFFINE: affine,
        SourceKeys.AXIS: a,
        SourceKeys.AXIS_NAME: next(k for k, v in AXES.items() if v == a),
        SourceKeys.ORIGINAL_AFFINE: np.asarray(meta.get("original_affine", affine), dtype=float),
    }
    spacing = slice_spacing(affine, a)
    img_t, lab_t = _plain(image), None if label is None else _plain(label)
    candidates = list(range(image.shape[a + 1]))
    if foreground_only and lab_t is not None:
        other = tuple(d for d in range(4) if d != a + 1)
        candidates = torch.nonzero(lab_t.amax(dim=other) > 0).flatten().tolist()
    case = case or case_id(pair.get(PairKeys.IMAGE_PATH, "volume"))
    out = []
    for i in candidates[::every_n]:
        sample = {
            SampleKeys.IMAGE: slice_view(img_t, a, i).float().contiguous(),
            SampleKeys.SPACING: spacing,
            SampleKeys.SPACING_KNOWN: True,
            SampleKeys.CASE: case,
            SampleKeys.SLICE: int(i),
            SampleKeys.IMAGE_PATH: str(pair.get(PairKeys.IMAGE_PATH, "")),
            SampleKeys.SOURCE: source,
        }
        if lab_t is not None:
            sample[SampleKeys.LABEL] = slice_view(lab_t, a, i).to(torch.uint8).contiguous()
        out.append(sample)
    return out
