"""On-disk cache of frozen-encoder embeddings, so training and repeated runs never re-run the encoder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from blosam_med.io import atomic_write
from blosam_med.model.backbones import Backbone
from blosam_med.model.encoder_engines import EncoderEngine, build_engine, engine_id, resolve_engine
from blosam_med.model.preprocess import preprocess_image

__all__ = ["EmbeddingCache", "autocast"]

logger = logging.getLogger(__name__)

#: Images per call of a runtime engine (any number gives the same embeddings; entries are written after each call).
RUNTIME_CHUNK = 16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``; no autocast for ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _checksum(emb: torch.Tensor) -> str:
    """SHA-256 of an embedding's float32 bytes, stored with each entry and checked when it is read."""
    return hashlib.sha256(emb.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


class EmbeddingCache:
    """Encoder outputs keyed by (input content, backbone weights, preprocessing).

    The key hashes the preprocessed encoder input, so an augmented view, a different window or a different
    preprocessing is a different entry. Entries are written atomically; an unreadable, truncated or inconsistent entry
    is logged, recomputed and rewritten; each entry stores a SHA-256 of its embedding, so bytes changed in place
    (same size, which the file format does not detect) are found too; an entry of a version before checksums is
    checked as the others are (key, shape, finite values) and rewritten with its checksum, not recomputed. Several processes (``torchrun`` ranks, on one node or sharing a network
    folder) may use one cache: each entry is written to a temporary file and renamed into place (``os.replace``), so
    a reader sees a whole entry or none; when two processes encode the same input, the last rename wins and both
    entries are valid (``tests/distributed/test_cache_sharing.py``).

    Args:
        backbone: the backbone whose encoder produces the embeddings.
        root: cache folder; ``None`` stores nothing (identical inputs within one call are still encoded once).
        device: where the encoder runs.
        batch_size: images per encoder call of eager PyTorch (a runtime gets up to :data:`RUNTIME_CHUNK`).
        progress: show a progress bar while encoding.
        amp_dtype: run the encoder under ``torch.autocast`` with this dtype (GPU inference); entries computed so are
            kept apart from float32 ones.
        engine: what runs the encoder (:mod:`blosam_med.model.encoder_engines`): ``torch``, ``auto`` or a runtime.
            A runtime's embeddings agree with eager PyTorch to float32 rounding but are not bitwise equal, so its
            entries are kept apart (keyed by runtime and version): a run reproduces exactly whatever engine filled
            the cache before. The engine is built (and exported, once) at the first encoder call. A built
            :class:`~blosam_med.model.encoder_engines.EncoderEngine` is used as given, its ``id`` in the keys.
    """

    def __init__(
        self,
        backbone: Backbone,
        root: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        progress: bool = True,
        amp_dtype: torch.dtype | None = None,
        engine: str | EncoderEngine = "torch",
    ) -> None:
        self.backbone = backbone
        self.root = Path(root) if root is not None else None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.encoder_calls = 0
        self.amp_dtype = amp_dtype
        self._engine: EncoderEngine | None = None
        if isinstance(engine, EncoderEngine):  # a built engine (an int8 folder's): its id keys the entries
            self._engine, self.engine_name = engine, engine.name
            self._salt = self._describe(engine.id)
        else:
            self.engine_name = resolve_engine(engine, self.device, amp_dtype)
            self._salt = self._describe(engine_id(self.engine_name))

    def _describe(self, engine: str) -> bytes:
        described = {
            "backbone": self.backbone.name,
            "weights": self.backbone.fingerprint,
            "prep": self.backbone.preprocessing.to_dict(),
        }
        if self.amp_dtype is not None:
            described["amp"] = str(self.amp_dtype)
        if engine != "torch":  # eager entries keep the keys they always had
            described["engine"] = engine
        return json.dumps(described, sort_keys=True).encode()

    @property
    def engine(self) -> EncoderEngine:
        """The encoder engine, built at first use; a runtime that fails falls back to ``torch`` (one warning)."""
        if self._engine is None:
            self._build_engine()
        assert self._engine is not None
        return self._engine

    def _build_engine(self) -> bool:
        """Build the engine; True when it fell back to another engine, which changes the keys."""
        self._engine = build_engine(self.backbone, self.engine_name, self.device, self.amp_dtype, self.root)
        salt, self._salt = self._salt, self._describe(self._engine.id)
        self.engine_name = self._engine.name
        return salt != self._salt

    def key(self, encoder_input: torch.Tensor) -> str:
        """SHA-256 of the backbone description and the preprocessed input's bytes."""
        h = hashlib.sha256(self._salt)
        h.update(str(tuple(encoder_input.shape)).encode())
        h.update(encoder_input.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / self.backbone.name / key[:2] / f"{key}.pt"

    def _read(self, key: str) -> torch.Tensor | None:
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            emb = entry["embedding"]
            if entry.get("key") != key or tuple(emb.shape) != tuple(self.backbone.embedding_shape):
                raise ValueError(f"key or shape mismatch ({tuple(emb.shape)})")
            if "sha256" in entry and entry["sha256"] != _checksum(emb):
                raise ValueError("checksum mismatch: the stored embedding changed after it was written")
            if not torch.isfinite(emb).all():
                raise ValueError("non-finite values")
        except Exception as err:  # corrupt entries are recomputed, never fatal
            logger.warning("%s: unusable cache entry (%s: %s); recomputing", path, type(err).__name__, err)
            return None
        if "sha256" not in entry:  # an entry of a version before checksums: whole (renamed into place), so upgraded
            self._write(key, emb)
        return emb

    def _write(self, key: str, emb: torch.Tensor) -> None:
        if self.root is None:
            return
        atomic_write(
            self._path(key),
            lambda tmp: torch.save({"key": key, "embedding": emb.clone(), "sha256": _checksum(emb)}, tmp),
            overwrite=True,
        )

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        self.encoder_calls += 1
        # a plain tensor: inputs may be MONAI MetaTensors (e.g. a flipped image), whose metadata would make the
        # stored entry unloadable with weights_only=True (and the cache useless for them)
        return self.engine(batch.as_subclass(torch.Tensor)).as_subclass(torch.Tensor)

    def embed_inputs(self, inputs: Sequence[torch.Tensor], desc: str = "encoding") -> torch.Tensor:
        """Embeddings (N, C, h, w) for preprocessed encoder inputs, each (3, S, S); misses are encoded in batches."""
        keys = [self.key(x) for x in inputs]
        found: dict[str, torch.Tensor] = {}
        for k in dict.fromkeys(keys):
            emb = self._read(k)
            if emb is not None:
                found[k] = emb
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self._engine is None and self._build_engine():
            return self.embed_inputs(inputs, desc)  # fell back to torch: look up the eager entries
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            bar = tqdm(total=len(missing), desc=desc, unit="img", disable=not self.progress, leave=False)
            # a runtime embeds an image alike in any batch: up to RUNTIME_CHUNK per call (its throughput mode runs
            # them side by side); eager PyTorch keeps batch_size images per call
            step = max(self.batch_size, RUNTIME_CHUNK) if self.engine.batch_invariant else self.batch_size
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                embs = self._encode(torch.stack([inputs[first[k]] for k in chunk]))
                for k, emb in zip(chunk, embs, strict=True):
                    self._write(k, emb)
                    found[k] = emb
                bar.update(len(chunk))
            bar.close()
        return torch.stack([found[k] for k in keys])

    def embed(self, images: Sequence[torch.Tensor], desc: str = "encoding") -> torch.Tensor:
        """Embeddings (N, C, h, w) for images (C, H, W) in [0, 1], preprocessed for this backbone first."""
        return self.embed_inputs([preprocess_image(im, self.backbone.preprocessing) for im in images], desc)
