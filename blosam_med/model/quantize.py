"""Int8 encoder: the OpenVINO float32 export quantised by NNCF, calibrated on a task's own images (opt-in).

:func:`quantize_encoder` writes a self-contained folder (``encoder.xml``/``encoder.bin`` and ``int8.json``, which
records the backbone, its weights, the calibration images and the versions); :func:`int8_engine` runs it as an
:class:`~blosam_med.model.encoder_engines.EncoderEngine` whose cache keys name the folder's calibration, so its
embeddings never mix with float32 ones. Post-training quantisation (NNCF's mixed preset for transformers; the patch
embedding, which sees the raw image, stays float32) changes the embeddings by about 10 % and flips boundary pixels,
so ``blosam quantize`` keeps a folder only where its masks agree with float32's (:data:`MIN_DICE`) on check images.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blosam_med.model.backbones import Backbone
from blosam_med.model.encoder_engines import EncoderEngine, RuntimeEngine, export_encoder, openvino_engine
from blosam_med.model.preprocess import preprocess_image

__all__ = ["INT8_ENGINE", "INT8_FORMAT", "MIN_DICE", "encoder_engine", "int8_engine", "quantize_encoder", "read_int8"]

logger = logging.getLogger(__name__)

#: The engine name of an int8 folder (``blosam infer --int8-encoder``).
INT8_ENGINE = "openvino-int8"
#: Bump when the quantisation procedure changes.
INT8_FORMAT = 1
#: Smallest mask Dice against float32, on every check image, for ``blosam quantize`` to keep an int8 encoder.
MIN_DICE = 0.99
#: Layers kept in float32: TinyViT's patch embedding sees the raw image (quantising it doubled the embedding error).
KEEP_FLOAT = (".*patch_embed.*",)
DESCRIPTION = "int8.json"


def _versions() -> dict[str, str]:
    return {p: importlib.metadata.version(p) for p in ("openvino", "nncf")}


def quantize_encoder(
    backbone: Backbone, images: Sequence[torch.Tensor], names: Sequence[str], out: str | Path, root: str | Path
) -> Path:
    """Quantise ``backbone``'s encoder to int8 with ``images`` as calibration data and write it to ``out``.

    Args:
        backbone: the backbone (or the head of a cut encoder) whose encoder the engines run.
        images: calibration images, (C, H, W) in [0, 1] after the task's windowing.
        names: one name per image (its file, and slice for a volume), recorded in ``int8.json``.
        out: the folder to write (created atomically: a temporary folder renamed into place; must not exist).
        root: the engine cache folder holding (or receiving) the float32 OpenVINO export.

    Raises:
        ValueError: no calibration images, ``names`` of another length, or OpenVINO or NNCF not installed (the
            message gives ``pip install 'blosam_med[openvino]'``).
        FileExistsError: ``out`` exists.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise ValueError(
            f"the int8 encoder needs nncf and openvino ({err}): pip install 'blosam_med[openvino]'"
        ) from err
    if not images or len(images) != len(names):
        raise ValueError(f"{len(images)} calibration images for {len(names)} names; give one image or more")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; remove it or choose another --out")
    fp32 = export_encoder(backbone, "openvino", root)
    inputs = [preprocess_image(im, backbone.preprocessing)[None].numpy() for im in images]
    digests = [hashlib.sha256(x.tobytes()).hexdigest() for x in inputs]
    logger.info("quantising the %s encoder to int8 on %d calibration images", backbone.name, len(inputs))
    quantized = nncf.quantize(
        ov.Core().read_model(fp32 / "encoder.xml"),
        nncf.Dataset(inputs),
        preset=nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(patterns=list(KEEP_FLOAT), validate=False),
        subset_size=len(inputs),
    )
    described = {
        "engine": INT8_ENGINE,
        "format": INT8_FORMAT,
        "backbone": backbone.name,
        "weights": backbone.fingerprint,
        "input_shape": list(inputs[0].shape),
        **_versions(),
        "calibration": [{"image": n, "input_sha256": d} for n, d in zip(names, digests, strict=True)],
    }
    described["key"] = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        ov.save_model(quantized, tmp / "encoder.xml", compress_to_fp16=False)
        (tmp / DESCRIPTION).write_text(json.dumps(described, indent=1))
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_int8(folder: str | Path, backbone: Backbone | None = None) -> dict[str, Any]:
    """``int8.json`` of an int8 folder, checked against ``backbone`` when given.

    Raises:
        FileNotFoundError: the folder, its description or its model is missing.
        ValueError: an unreadable description, or one made for another backbone, cut, weights or input size.
    """
    folder = Path(folder)
    path = folder / DESCRIPTION
    if not path.is_file() or not (folder / "encoder.xml").is_file():
        raise FileNotFoundError(
            f"{folder}: not an int8 encoder folder (no {DESCRIPTION} or encoder.xml; make one with blosam quantize)"
        )
    try:
        described = json.loads(path.read_text())
        key = str(described["key"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable int8 description ({type(err).__name__}: {err})") from err
    if backbone is not None:
        size = backbone.preprocessing.input_size
        wanted = {"backbone": backbone.name, "weights": backbone.fingerprint, "input_shape": [1, 3, size, size]}
        wrong = {k: described.get(k) for k, v in wanted.items() if described.get(k) != v}
        if wrong:
            raise ValueError(
                f"{folder}: int8 encoder made for another encoder ({', '.join(f'{k} {v}' for k, v in wrong.items())}; "
                f"this adapter needs {backbone.name}); quantize again for it"
            )
    if described.get("format") != INT8_FORMAT:
        raise ValueError(f"{path}: int8 format {described.get('format')}, this version reads {INT8_FORMAT}")
    return {**described, "key": key}


def int8_engine(folder: str | Path, backbone: Backbone) -> RuntimeEngine:
    """The int8 folder as an encoder engine for ``backbone`` (checked by :func:`read_int8`); its ``id`` names the
    OpenVINO version and the folder's key, so cache entries it fills are its own."""
    described = read_int8(folder, backbone)
    return openvino_engine(Path(folder), INT8_ENGINE, f"{INT8_ENGINE}-{described['openvino']}-{described['key']}")


def encoder_engine(
    engine: str,
    int8_encoder: str | Path | None,
    backbone: Backbone,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> str | EncoderEngine:
    """``engine``, or the int8 engine of the ``int8_encoder`` folder (CPU, float32 decoders) checked against
    ``backbone``.

    Raises:
        ValueError: an int8 encoder on a GPU or under autocast, or made for another encoder (naming the folder).
        FileNotFoundError: the folder is not an int8 encoder folder.
    """
    if int8_encoder is None:
        return engine
    if torch.device(device).type != "cpu" or amp_dtype is not None:
        raise ValueError(f"{int8_encoder}: an int8 encoder runs on the CPU in OpenVINO; drop it on {device}")
    return int8_engine(int8_encoder, backbone)
