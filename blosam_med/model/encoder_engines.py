"""Encoder engines: the frozen image encoder in eager PyTorch or exported once to a CPU inference runtime.

``torch`` runs the encoder module as built. ``openvino`` and ``onnxruntime`` run an ONNX export of it in float32
(OpenVINO's precision hint is set to ``f32`` explicitly: its default is bf16 on CPUs with bf16 units). The export is
made once per backbone and kept on disk beside the embeddings (``<cache>/engines/<backbone>/<runtime>-<key>/``),
keyed by the backbone's weights fingerprint, input shape and the torch and runtime versions, so a change of any of
them exports again. The first run logs that it is exporting; an export or load that fails falls back to eager
PyTorch with one warning, never an error. ``auto`` picks the fastest installed runtime on the CPU (OpenVINO, then
ONNX Runtime; ``scripts/benchmark_inference.py`` measures them) and ``torch`` on a GPU or under autocast.

The exported graph has a fixed batch of one image (TinyViT's reshapes fix the batch size when traced); a batch is run
image by image, or in OpenVINO several images side by side (asynchronous requests of a model compiled with the
throughput hint; :data:`OPENVINO_STREAMS_ENV`), which embeds each image exactly as one at a time does.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blosam_med.model.backbones import Backbone
from blosam_med.model.paths import default_cache_dir

__all__ = [
    "ENGINES",
    "RUNTIMES",
    "EncoderEngine",
    "TorchEngine",
    "RuntimeEngine",
    "installed_runtimes",
    "resolve_engine",
    "engine_id",
    "export_encoder",
    "build_engine",
    "openvino_engine",
]

logger = logging.getLogger(__name__)

#: Runtimes an encoder can be exported to, fastest first on the development CPU (README "Speed").
RUNTIMES = ("openvino", "onnxruntime")
#: Values of ``--engine``.
ENGINES = ("auto", "torch", *RUNTIMES)
#: Bump when the export procedure changes, so older exports are not reused.
EXPORT_FORMAT = 1
#: Largest |runtime - eager| on a random input, relative to the largest |eager| value, accepted at export time.
EXPORT_TOLERANCE = 1e-4


def _version(runtime: str) -> str | None:
    if importlib.util.find_spec(runtime) is None:
        return None
    try:
        return importlib.metadata.version(runtime)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_runtimes() -> list[str]:
    """The runtimes of :data:`RUNTIMES` that are installed, fastest first."""
    return [r for r in RUNTIMES if _version(r) is not None]


def resolve_engine(engine: str, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None) -> str:
    """The engine to use: ``auto`` becomes the fastest installed runtime on the CPU in float32, else ``torch``.

    Raises:
        ValueError: an unknown engine, a runtime that is not installed (with the install command), or a runtime
            asked for on a GPU or under autocast (runtimes run float32 on the CPU).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    on_cpu = torch.device(device).type == "cpu" and amp_dtype is None
    if engine == "auto":
        found = installed_runtimes()
        return found[0] if on_cpu and found else "torch"
    if engine == "torch":
        return engine
    if not on_cpu:
        raise ValueError(f"engine '{engine}' runs the encoder in float32 on the CPU; use engine 'torch' on {device}")
    if _version(engine) is None:
        raise ValueError(
            f"engine '{engine}' is not installed: pip install 'blosam_med[{engine}]' (or use --engine auto)"
        )
    return engine


def engine_id(engine: str) -> str:
    """What identifies an engine's numerics: ``torch`` or ``<runtime>-<version>`` (part of embedding cache keys)."""
    return engine if engine == "torch" else f"{engine}-{_version(engine)}"


class EncoderEngine:
    """Runs the frozen encoder: (B, 3, S, S) float32 encoder inputs -> (B, C, h, w) float32 embeddings on the CPU.

    ``name`` is the engine (``torch``, ``openvino``, ``onnxruntime``), ``id`` what cache keys record.
    ``batch_invariant``: an image's embedding does not depend on the batch it is in (runtimes run image by image),
    so callers may pass any number of images in one call.
    """

    name: str = "torch"
    batch_invariant: bool = False

    @property
    def id(self) -> str:
        return engine_id(self.name)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(EncoderEngine):
    """The encoder module in eager PyTorch on ``device``, optionally under ``torch.autocast(amp_dtype)``."""

    name = "torch"

    def __init__(
        self, encoder: torch.nn.Module, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None
    ) -> None:
        self.encoder, self.device, self.amp_dtype = encoder, torch.device(device), amp_dtype

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return encoder(batch.to(self.device)).float().cpu()


class RuntimeEngine(EncoderEngine):
    """An exported encoder in a runtime: ``run`` maps one (1, 3, S, S) float32 array to its (1, C, h, w) output;
    ``run_many`` (optional) maps a list of them to their outputs at once (e.g. OpenVINO's throughput mode), used for
    batches of two or more images. Both give the same output for an image (``tests/model/test_encoder_engines.py``).
    """

    batch_invariant = True

    def __init__(
        self, name: str, run: Callable, run_many: Callable | None = None, engine_id: str | None = None
    ) -> None:
        self.name, self._run, self._run_many, self._id = name, run, run_many, engine_id

    @property
    def id(self) -> str:
        """``<runtime>-<version>``, or the ``engine_id`` given (e.g. an int8 encoder's, naming its calibration)."""
        return self._id or engine_id(self.name)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().float().contiguous().numpy()
        images = [x[i : i + 1] for i in range(len(x))]
        outputs = self._run_many(images) if self._run_many is not None and len(images) > 1 else map(self._run, images)
        return torch.cat([torch.from_numpy(np.array(o, copy=True)) for o in outputs])


#: OpenVINO's streams for batches of images (``PERFORMANCE_HINT`` ``THROUGHPUT``: several images at once, each
#: stream on its share of the cores); ``1`` (or the variable ``BLOSAM_OPENVINO_STREAMS=1``) runs a batch image by
#: image at the latency hint. Both give the same float32 embeddings (f32 precision hint either way).
OPENVINO_STREAMS_ENV = "BLOSAM_OPENVINO_STREAMS"


def _openvino_session(folder: Path) -> Callable:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(folder / "encoder.xml"),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


def _openvino_throughput(folder: Path) -> Callable | None:
    """``run_many`` for OpenVINO: images through asynchronous requests of a model compiled for throughput (made at
    first use); ``None`` when :data:`OPENVINO_STREAMS_ENV` is ``1``."""
    streams = os.environ.get(OPENVINO_STREAMS_ENV, "").strip()
    if streams == "1":
        return None
    state: dict[str, Any] = {}

    def run_many(images: list) -> list:
        import openvino as ov

        if "compiled" not in state:
            core = ov.Core()
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}
            if streams.isdigit():
                config["NUM_STREAMS"] = streams
            state["compiled"] = core.compile_model(core.read_model(folder / "encoder.xml"), "CPU", config)
        compiled = state["compiled"]
        queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        outputs: list = [None] * len(images)

        def done(request: Any, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        queue.set_callback(done)
        for i, image in enumerate(images):
            queue.start_async({0: image}, i)
        queue.wait_all()
        return outputs

    return run_many


def openvino_engine(folder: Path, name: str = "openvino", engine_id: str | None = None) -> RuntimeEngine:
    """The OpenVINO model ``folder/encoder.xml`` as an engine: one image at the latency hint, batches in throughput
    mode (:data:`OPENVINO_STREAMS_ENV`)."""
    return RuntimeEngine(name, _openvino_session(folder), _openvino_throughput(folder), engine_id)


def _onnxruntime_session(folder: Path) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino_convert(folder: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(folder / "encoder.onnx"), folder / "encoder.xml", compress_to_fp16=False)


_SESSIONS: dict[str, Callable[[Path], Callable]] = {"openvino": _openvino_session, "onnxruntime": _onnxruntime_session}
_CONVERT: dict[str, Callable[[Path], None]] = {"openvino": _openvino_convert}
_THROUGHPUT: dict[str, Callable[[Path], Callable | None]] = {"openvino": _openvino_throughput}


def _export_description(backbone: Backbone, runtime: str) -> dict:
    size = backbone.preprocessing.input_size
    return {
        "backbone": backbone.name,
        "weights": backbone.fingerprint,
        "input_shape": [1, 3, size, size],
        "torch": torch.__version__,
        "runtime": engine_id(runtime),
        "format": EXPORT_FORMAT,
    }


def export_encoder(backbone: Backbone, runtime: str, root: str | Path) -> Path:
    """The folder of ``backbone``'s encoder exported for ``runtime`` under ``root/engines``; exported when absent.

    The export is checked against eager PyTorch on a random input (relative difference at most
    :data:`EXPORT_TOLERANCE`) and written atomically: into a temporary folder renamed into place, so concurrent
    processes each see a whole export or none.

    Raises:
        RuntimeError: the exported encoder disagrees with eager PyTorch; any error of the exporter or the runtime.
    """
    described = _export_description(backbone, runtime)
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(root) / "engines" / backbone.name / f"{runtime}-{key}"
    if (folder / "export.json").is_file():
        return folder
    logger.info(
        "exporting the %s encoder to %s (once per backbone, torch and runtime version; kept in %s)",
        backbone.name,
        runtime,
        folder,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        size = backbone.preprocessing.input_size
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        encoder = backbone.image_encoder.eval()
        with torch.inference_mode():
            expected = encoder(x)
        torch.onnx.export(
            encoder, (x,), str(tmp / "encoder.onnx"), dynamo=False, input_names=["image"], output_names=["embedding"]
        )
        if runtime in _CONVERT:
            _CONVERT[runtime](tmp)
        got = torch.from_numpy(_SESSIONS[runtime](tmp)(x.numpy()).copy())
        error = float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
        if got.shape != expected.shape or not error <= EXPORT_TOLERANCE:
            raise RuntimeError(f"exported encoder disagrees with eager PyTorch (relative error {error:.2e})")
        (tmp / "export.json").write_text(json.dumps({**described, "relative_error": error}, indent=1))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process renamed its export into place first; theirs is as good
            if not (folder / "export.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_engine(
    backbone: Backbone,
    engine: str = "torch",
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    root: str | Path | None = None,
) -> EncoderEngine:
    """The engine that runs ``backbone``'s encoder (see the module docstring).

    Args:
        backbone: the backbone whose frozen encoder runs.
        engine: one of :data:`ENGINES`.
        device: where eager PyTorch runs; runtimes run on the CPU.
        amp_dtype: autocast dtype of eager PyTorch (GPU); runtimes are not used under autocast.
        root: the embedding cache folder the export is kept in (``None``: the default cache folder).

    Raises:
        ValueError: from :func:`resolve_engine`. Export and runtime failures are not raised: they fall back to eager
        PyTorch with one warning.
    """
    name = resolve_engine(engine, device, amp_dtype)
    if name == "torch":
        return TorchEngine(backbone.image_encoder, device, amp_dtype)
    if root is None:
        root = default_cache_dir()
    try:
        folder = export_encoder(backbone, name, root)
        many = _THROUGHPUT[name](folder) if name in _THROUGHPUT else None
        return RuntimeEngine(name, _SESSIONS[name](folder), many)
    except Exception as err:  # any exporter or runtime failure: eager PyTorch still gives the same masks
        logger.warning(
            "%s engine unavailable for the %s encoder (%s: %s); running it in eager PyTorch",
            name,
            backbone.name,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        return TorchEngine(backbone.image_encoder, device, amp_dtype)
