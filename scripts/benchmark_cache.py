"""Encoder engines and why embeddings are cached, in one run: encoder s/image per engine (interleaved rounds),
against a cached decoder forward+backward.

python scripts/benchmark_cache.py [--backbone litemedsam] [--rounds 3] [--batch 4] [--engines torch openvino ...]

Every engine runs the same inputs in each round (eager PyTorch float32 first), so the ratios hold even when other
jobs share the CPU; the median over rounds is printed. Exports are made (once) in --export-dir.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from blosam_med.model import BloSam, build_backbone
from blosam_med.model.encoder_engines import build_engine, installed_runtimes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--images", type=int, default=2, help="images per round and engine")
    parser.add_argument("--batch", type=int, default=4, help="decoder training batch")
    parser.add_argument("--engines", nargs="+", default=None, help="default: torch and every installed runtime")
    parser.add_argument("--export-dir", default=None, help="where exports are kept (default: a temporary folder)")
    args = parser.parse_args()

    backbone = build_backbone(args.backbone, args.checkpoint)
    size = backbone.preprocessing.input_size
    root = args.export_dir or tempfile.mkdtemp(prefix="blosam_export_")
    names = args.engines or ["torch", *installed_runtimes()]
    engines = {}
    for name in names:
        start = time.perf_counter()
        engines[name] = build_engine(backbone, name, root=root)
        print(f"{name}: ready in {time.perf_counter() - start:.1f} s (export or load; runs as {engines[name].id})")
    x = torch.rand(args.images, 1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in engines}
    reference = torch.cat([engines[names[0]](xi) for xi in x])
    for name, engine in engines.items():
        got = torch.cat([engine(xi) for xi in x])
        error = float((got - reference).abs().max() / reference.abs().max())
        print(f"{name}: max |embedding - {names[0]}| / max |{names[0]}| = {error:.1e}")
    for _ in range(args.rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            for xi in x:
                engine(xi)
            times[name].append((time.perf_counter() - start) / args.images)
    encoder_s = {n: statistics.median(t) for n, t in times.items()}

    model = BloSam(backbone).train()
    emb = torch.randn(args.batch, *backbone.embedding_shape)
    target = (torch.rand(args.batch, 1, 4 * emb.shape[-2], 4 * emb.shape[-1]) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def decoder_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model.forward_embeddings(emb), target).backward()

    decoder_step()
    start = time.perf_counter()
    for _ in range(args.rounds):
        decoder_step()
    decoder_s = (time.perf_counter() - start) / args.rounds / args.batch

    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"backbone {backbone.name} ({size}px), median of {args.rounds} interleaved rounds of {args.images} images"
    )
    base = encoder_s[names[0]]
    print(f"{'engine':<14}{'encoder s/image':>16}{'speed-up':>10}")
    for name, s in encoder_s.items():
        print(f"{name:<14}{s:>16.3f}{base / s:>9.2f}x")
    print(f"decoder forward+backward per image (cached): {decoder_s * 1000:8.1f} ms  (batch {args.batch})")
    best = min(encoder_s.values())
    print(f"cached step speed-up (encoder+decoder)/decoder: {(base + decoder_s) / decoder_s:.1f}x with {names[0]}, ")
    print(f"  {(best + decoder_s) / decoder_s:.1f}x with the fastest engine")


if __name__ == "__main__":
    main()
