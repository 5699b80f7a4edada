"""Compressed DICOM: read by ITK or pydicom, whichever decodes it; else refused in one line naming the transfer
syntax and the packages to install, with no decoder traceback in the log."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2KLossless, RLELossless

import blosam_med.data.dicom as dicom
import blosam_med.data.reading as reading
from blosam_med.data import check_dicom_file, read_image

#: pydicom's decoders that this environment lacks (the messages name them only then).
NO_PYLIBJPEG = importlib.util.find_spec("pylibjpeg") is None
NO_GDCM = importlib.util.find_spec("gdcm") is None


def _htj2k(tmp_path):
    """CT_small relabelled High-Throughput JPEG 2000 with a stub codestream: neither pydicom nor ITK decodes it."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(100)])
    ds.save_as(tmp_path / "htj2k.dcm", enforce_file_format=True)
    return tmp_path / "htj2k.dcm"


def _no_decoder_traceback(caplog) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_12_bit_jpeg_that_pydicom_cannot_decode_is_read_by_itk(caplog, capfd):
    """pydicom's JPEG-lossy.dcm (JPEG Extended, 12 bits; Pillow decodes only 8) is JPGExtended.dcm with a
    non-conformant marker: ITK's GDCM decodes both to the same image."""
    with caplog.at_level(logging.DEBUG):
        lossy = read_image(get_testdata_file("JPEG-lossy.dcm"))
    conformant = read_image(get_testdata_file("JPGExtended.dcm"))
    assert lossy.shape == (1, 1024, 256) and float(lossy.max()) > 200
    assert torch.equal(lossy.as_tensor(), conformant.as_tensor())
    _no_decoder_traceback(caplog)
    assert any("decoded by ITK (GDCM); pydicom could not" in r.getMessage() for r in caplog.records)
    assert "precision 12" not in capfd.readouterr().err  # GDCM's notes on stderr go to the debug log
    assert any("native stderr" in r.getMessage() and "precision 12" in r.getMessage() for r in caplog.records)


def test_undecodable_compressed_dicom_is_refused_in_one_line(tmp_path, caplog):
    path = _htj2k(tmp_path)
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as err:
        read_image(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: compressed pixel data in transfer syntax ")
    assert "'High-Throughput JPEG 2000 Image Compression (Lossless Only)' (1.2.840.10008.1.2.4.201)" in message
    assert "neither pydicom nor ITK decodes" in message
    if NO_PYLIBJPEG:
        assert message.endswith("install a decoder pydicom uses: pip install pylibjpeg pylibjpeg-openjpeg"), message
    _no_decoder_traceback(caplog)


@pytest.mark.skipif(not (NO_PYLIBJPEG and NO_GDCM), reason="pylibjpeg or gdcm installed: the hint names fewer packages")
def test_jpeg_extended_refusal_names_both_decoders(monkeypatch, caplog):
    monkeypatch.setattr(dicom, "_itk_decodes", lambda path: False)  # as if ITK had no 12-bit JPEG decoder
    path = get_testdata_file("JPEG-lossy.dcm")
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as err:
        check_dicom_file(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert "'JPEG Extended (Process 2 and 4)' (1.2.840.10008.1.2.4.51)" in message
    assert "Pillow does not support 'JPEG Extended' for samples with 12-bit precision" in message  # why
    assert "pip install python-gdcm" in message and "pip install pylibjpeg pylibjpeg-libjpeg" in message
    _no_decoder_traceback(caplog)


def test_install_hints_follow_pydicom_per_syntax():
    if NO_PYLIBJPEG and NO_GDCM:
        assert dicom.install_hint(pydicom.uid.JPEGLosslessSV1) == (
            "pip install python-gdcm, or pip install pylibjpeg pylibjpeg-libjpeg"
        )
    if NO_PYLIBJPEG:
        assert dicom.install_hint(HTJ2KLossless) == "pip install pylibjpeg pylibjpeg-openjpeg"
        assert dicom.install_hint(RLELossless) == "pip install pylibjpeg pylibjpeg-rle"  # pydicom's own decodes it
    assert dicom.install_hint(pydicom.uid.ExplicitVRLittleEndian) is None  # not compressed: nothing to install


class _ITKWithoutDecoder(reading.ITKReader):
    def read(self, data, **kwargs):
        raise RuntimeError("ITK ERROR: GDCMImageIO: Failed to change to Implicit Transfer Syntax")


@pytest.mark.parametrize("monochrome1", [False, True])
def test_compressed_file_that_only_pydicom_decodes_is_read_by_pydicom(tmp_path, monkeypatch, monochrome1):
    """After `pip install pylibjpeg pylibjpeg-openjpeg` pydicom decodes HTJ2K and ITK still cannot: the file is read
    by pydicom as ITK would read it (rescale applied, MONOCHROME1 inverted). RLE stands in for such a syntax."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    a = ds.pixel_array.astype(np.int64)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = (a * 4095 // a.max()).astype(np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    if monochrome1:
        ds.PhotometricInterpretation = "MONOCHROME1"
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    by_itk = read_image(tmp_path / "rle.dcm")
    monkeypatch.setattr(reading, "ITKReader", _ITKWithoutDecoder)
    by_pydicom = read_image(tmp_path / "rle.dcm")
    assert by_pydicom.shape == by_itk.shape == (1, 64, 64)
    np.testing.assert_array_equal(np.asarray(by_pydicom), np.asarray(by_itk))
    assert by_pydicom.meta["spacing"] == by_itk.meta["spacing"] == pytest.approx((0.3125, 0.3125))


def test_uncompressed_file_itk_cannot_read_is_not_read_another_way(monkeypatch):
    monkeypatch.setattr(reading, "ITKReader", _ITKWithoutDecoder)
    with pytest.raises(ValueError, match=r"MR_small.dcm: unreadable \(RuntimeError: ITK ERROR"):
        read_image(get_testdata_file("MR_small.dcm"))
