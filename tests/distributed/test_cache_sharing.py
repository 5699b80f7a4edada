"""Two processes filling one embedding cache at the same time: every read is a whole entry, nothing is left over."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import torch

ROUNDS, IMAGES = 12, 6


def _images(round_: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(round_)
    return [torch.rand(1, 40, 48, generator=g) for _ in range(IMAGES)]


def _worker(root: str, queue: mp.Queue) -> None:
    """Embed the same new images each round into the shared cache (with a second cache object reading them back);
    report how many unusable entries were met and the embeddings' checksums."""
    torch.set_num_threads(1)
    from blosam_med.model import EmbeddingCache, build_backbone

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("blosam_med.model.embedding_cache").addHandler(handler)
    backbone = build_backbone("tiny")
    sums = []
    for round_ in range(ROUNDS):
        images = _images(round_)
        writer, reader = (EmbeddingCache(backbone, root, batch_size=1, progress=False) for _ in range(2))
        sums.append([float(e.double().sum()) for e in writer.embed(images)])
        sums[-1] += [float(e.double().sum()) for e in reader.embed(images)]
    queue.put((warnings, sums))


def test_two_processes_share_one_cache(tmp_path):
    from blosam_med.model import EmbeddingCache, build_backbone

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), queue)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    reference = EmbeddingCache(build_backbone("tiny"), None, progress=False)
    expected = [[float(e.double().sum()) for e in reference.embed(_images(r))] * 2 for r in range(ROUNDS)]
    for warnings, sums in results:
        assert warnings == []  # never a truncated or foreign entry
        assert torch.allclose(torch.tensor(sums), torch.tensor(expected), rtol=1e-5)
    files = [p for p in Path(tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == ROUNDS * IMAGES and not [p for p in files if p.name.startswith(".")]  # no temporary files
