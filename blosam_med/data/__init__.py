"""Data layer: MONAI loading (PNG/JPEG/TIFF/BMP, NIfTI, DICOM), windowing, task presets, datalists, few-shot draws,
slices of volumes."""

from __future__ import annotations

from blosam_med.data.datalist import (
    DatalistError,
    build_datalist,
    find_pairs,
    load_datalist,
    open_datalist,
    prepare_datalist,
    validate_pairs,
    write_datalist,
)
from blosam_med.data.dicom import (
    check_dicom_file,
    check_dicom_series,
    is_dicom_file,
    non_image_modality,
    series_non_images,
)
from blosam_med.data.files import IMAGE_EXT, NIFTI_EXT, RASTER_EXT, case_id
from blosam_med.data.keys import CaseKeys, PairKeys, Sample, SampleKeys, SourceKeys
from blosam_med.data.loading import binarise, load_pair, load_samples, mask_values
from blosam_med.data.reading import image_kind, read_image
from blosam_med.data.sampling import describe_draw, sample_shots, split_ab
from blosam_med.data.slices import slice_spacing, slice_view, slices_to_volume, volume_to_slices
from blosam_med.data.tasks import (
    AXES,
    FLIPS,
    INFERENCE_KEYS,
    PRESET_DIR,
    TaskConfig,
    load_task,
    preset_names,
    task_preset_path,
)
from blosam_med.data.windowing import WINDOW_NAMES, WINDOW_PRESETS, WindowIntensity, WindowIntensityd, window_range

__all__ = [
    "AXES",
    "FLIPS",
    "INFERENCE_KEYS",
    "CaseKeys",
    "PairKeys",
    "Sample",
    "SampleKeys",
    "SourceKeys",
    "DatalistError",
    "IMAGE_EXT",
    "NIFTI_EXT",
    "RASTER_EXT",
    "PRESET_DIR",
    "TaskConfig",
    "WINDOW_NAMES",
    "WINDOW_PRESETS",
    "WindowIntensity",
    "WindowIntensityd",
    "binarise",
    "build_datalist",
    "case_id",
    "check_dicom_file",
    "check_dicom_series",
    "describe_draw",
    "find_pairs",
    "image_kind",
    "is_dicom_file",
    "load_datalist",
    "load_pair",
    "load_samples",
    "load_task",
    "mask_values",
    "non_image_modality",
    "open_datalist",
    "prepare_datalist",
    "preset_names",
    "read_image",
    "sample_shots",
    "series_non_images",
    "slice_spacing",
    "slice_view",
    "slices_to_volume",
    "split_ab",
    "task_preset_path",
    "validate_pairs",
    "volume_to_slices",
    "window_range",
    "write_datalist",
]
