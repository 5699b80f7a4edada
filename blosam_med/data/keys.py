"""Key names of the dicts that cross module boundaries, in one place (as MONAI's ``CommonKeys``): a leaf module.

The values are plain ``str`` constants, so the dicts, the draw JSON and every file written from them are unchanged;
build and read the dicts with these names instead of repeating string literals.

- :class:`SampleKeys`: a 2D sample (:func:`blosam_med.data.load_samples`, :func:`blosam_med.data.volume_to_slices`)
  and a cached few-shot view (:class:`blosam_med.engine.FewShotData`);
- :class:`PairKeys`: a loaded image/mask pair (:func:`blosam_med.data.load_pair`);
- :class:`SourceKeys`: the volume geometry a slice sample carries under ``SampleKeys.SOURCE``;
- :class:`CaseKeys`: one scored case (:func:`blosam_med.inference.evaluate.group_volumes`).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

__all__ = ["SampleKeys", "PairKeys", "SourceKeys", "CaseKeys", "Sample"]

#: A 2D sample: keys from :class:`SampleKeys`.
Sample: TypeAlias = dict[str, Any]


class SampleKeys:
    """Keys of a 2D sample.

    ``IMAGE``: float32 (C, H, W) in [0, 1] (a cached view: the encoder embedding); ``LABEL``: uint8 (1, H, W) 0/1
    (a cached view: the float target in the decoder's frame), absent when unlabelled; ``CASE``: case name; ``SLICE``:
    index along the slicing axis or frame number (``None`` for a 2D image; ``-1`` in a cached view); ``IMAGE_PATH``:
    the file or series read; ``SPACING``: (row, col) mm; ``SPACING_KNOWN``: False where the spacing is the (1.0, 1.0)
    placeholder; ``SOURCE``: volume slices only, see :class:`SourceKeys`; ``PHOTOMETRIC``: frames of a multi-frame
    DICOM; ``VIEW``: cached views only, 0 for the shot itself, 1.. for its augmentations.
    """

    IMAGE: Final = "image"
    LABEL: Final = "label"
    CASE: Final = "case"
    SLICE: Final = "slice"
    IMAGE_PATH: Final = "image_path"
    SPACING: Final = "spacing"
    SPACING_KNOWN: Final = "spacing_known"
    SOURCE: Final = "source"
    PHOTOMETRIC: Final = "photometric"
    VIEW: Final = "view"


class PairKeys:
    """Keys of a loaded pair: ``IMAGE`` and ``LABEL`` MetaTensors, ``IMAGE_PATH``, ``LABEL_PATH`` (str), ``KIND``
    (``"2d"``, ``"volume"`` or ``"frames"``)."""

    IMAGE: Final = "image"
    LABEL: Final = "label"
    IMAGE_PATH: Final = "image_path"
    LABEL_PATH: Final = "label_path"
    KIND: Final = "kind"


class SourceKeys:
    """Keys of a slice's volume geometry: ``SHAPE`` (X, Y, Z), ``AFFINE`` (4x4, RAS grid), ``ORIGINAL_AFFINE`` (as
    read), ``AXIS`` (0, 1, 2), ``AXIS_NAME`` (``axial``, ``coronal``, ``sagittal``)."""

    SHAPE: Final = "shape"
    AFFINE: Final = "affine"
    ORIGINAL_AFFINE: Final = "original_affine"
    AXIS: Final = "axis"
    AXIS_NAME: Final = "axis_name"


class CaseKeys:
    """Keys of one scored case: ``CASE`` (name), ``PRED`` and ``LABEL`` (uint8 numpy, (H, W) or (X, Y, Z)),
    ``SPACING`` (mm per axis)."""

    CASE: Final = "case"
    PRED: Final = "pred"
    LABEL: Final = "label"
    SPACING: Final = "spacing"
