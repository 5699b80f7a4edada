"""Tiny synthetic inputs for the data tests: PNG pairs, NIfTI volumes, DICOM files and series (written in tmp_path)."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array (PNG, JPEG, TIFF or BMP by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def disc(h: int = 24, w: int = 32, r: float = 6.0, centre: tuple[float, float] | None = None) -> np.ndarray:
    """A uint8 0/255 disc mask of shape (h, w)."""
    cy, cx = centre or (h / 2, w / 2)
    yy, xx = np.mgrid[:h, :w]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8) * 255


def png_pairs(root: Path, n: int = 5, h: int = 24, w: int = 32, rgb: bool = False) -> Path:
    """``root/images/case{i}.png`` + ``root/masks/case{i}.png`` (0/255 discs); returns ``root``."""
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (h, w, 3) if rgb else (h, w)
        write_png(root / "images" / f"case{i}.png", rng.integers(0, 256, shape))
        write_png(root / "masks" / f"case{i}.png", disc(h, w, r=4 + i % 3))
    return root


def ct_template() -> pydicom.Dataset:
    """CT_small.dcm (128x128 CT, rescale intercept -1024) without its trailing padding, so pixel data ends the file."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    spacing_z: float = 2.5,
    z_positions=None,
    series_uid: str | None = None,
    decreasing: bool = False,
) -> list[Path]:
    """Write an int16 (Z, rows, cols) volume (stored values) as a CT series; slice k at z = k * spacing_z (or at
    ``z_positions[k]``); with ``decreasing`` the instance numbers run against z."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    base = ct_template()
    paths = []
    for k, plane in enumerate(volume):
        ds = copy.deepcopy(base)
        rows, cols = plane.shape
        ds.Rows, ds.Columns = rows, cols
        z = float(z_positions[k]) if z_positions is not None else k * spacing_z
        ds.ImagePositionPatient = [-10.0, -20.0, z]
        ds.SliceLocation = z
        ds.InstanceNumber = (len(volume) - k) if decreasing else k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.PixelData = np.ascontiguousarray(plane, dtype=np.int16).tobytes()
        p = folder / f"IM{ds.InstanceNumber:04d}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths


def write_ct_cohort(
    folder: Path, n: int = 4, shape: tuple[int, int, int] = (12, 10, 7), corrupt: str | None = None
) -> Path:
    """``folder/ct{i}.nii.gz``: ``n`` small random CT volumes (HU, int16, different affines); with ``corrupt``, also
    ``folder/<corrupt>.nii.gz`` holding bytes that are not a NIfTI."""
    rng = np.random.default_rng(0)
    for i in range(n):
        hu = rng.normal(-700, 150, shape).astype(np.int16)
        hu[2:7, 3:8, 1 + i % 3 : 5] = 40  # a soft-tissue block, placed differently per case
        write_nifti(folder / f"ct{i}.nii.gz", hu, np.diag([0.8 + 0.1 * i, 0.9, 2.5, 1.0]))
    if corrupt:
        (folder / f"{corrupt}.nii.gz").write_bytes(b"\x1f\x8b not a nifti" * 10)
    return folder


def write_tiny_adapter(path: Path, task: str = "lung_ct", seed: int = 0) -> Path:
    """An adapter of the tiny random backbone for ``task``, its prompt randomised by ``seed`` (so masks vary)."""
    import torch

    from blosam_med.data import load_task
    from blosam_med.model import BloSam, build_backbone, save_adapter

    model = BloSam(build_backbone("tiny"))
    with torch.no_grad():
        model.prompt.add_(torch.randn(model.prompt.shape, generator=torch.Generator().manual_seed(seed)))
    return save_adapter(model, path, extra={"task": load_task(task).to_dict()})


def write_synthetic_2d(root: Path, n: int = 8, size: tuple[int, int] = (48, 56), seed: int = 0) -> Path:
    """``root/images/*.png`` (grey, a bright disc on noise) and ``root/masks/*.png`` (0/255 disc)."""
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


def write_seg(path: Path, series: Path, seed: int = 0) -> Path:
    """A DICOM-SEG object (highdicom, one random segment) referencing the series written by :func:`write_series`."""
    from blosam_med.inference.writers import write_dicom_seg

    files = sorted(series.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    shape = (1, int(first.Columns), int(first.Rows), len(files))  # (n, X, Y, Z) on the series' ITK grid
    mask = np.random.default_rng(seed).random(shape) > 0.7
    return write_dicom_seg(mask, series, path, ["structure"])


def write_rtstruct(path: Path) -> Path:
    """pydicom's RTSTRUCT test file, saved as a proper Part 10 file (the shipped one has no preamble)."""
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden ones too) with its size and modification time: compare before/after."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts the images it was asked to encode."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x)
