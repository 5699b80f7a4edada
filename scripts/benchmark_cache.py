"""Why embeddings are cached: encoder time per image against a cached decoder forward+backward, in one run.

python scripts/benchmark_cache.py [--backbone litemedsam] [--images 6] [--batch 4]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from blosam_med.model import BloSam, build_backbone


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=6, help="timed repetitions")
    parser.add_argument("--batch", type=int, default=4, help="decoder training batch")
    args = parser.parse_args()

    backbone = build_backbone(args.backbone, args.checkpoint)
    model = BloSam(backbone).train()
    size = backbone.preprocessing.input_size
    x = torch.rand(1, 3, size, size)
    emb = torch.randn(args.batch, *backbone.embedding_shape)
    target = (torch.rand(args.batch, 1, 4 * emb.shape[-2], 4 * emb.shape[-1]) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def decoder_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model.forward_embeddings(emb), target).backward()

    with torch.inference_mode():
        encoder_s = _time(lambda: backbone.image_encoder(x), args.images)
    decoder_s = _time(decoder_step, args.images) / args.batch
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"backbone {backbone.name} ({size}px)"
    )
    print(f"encoder forward per image:                  {encoder_s * 1000:8.1f} ms")
    print(f"decoder forward+backward per image (cached): {decoder_s * 1000:8.1f} ms  (batch {args.batch})")
    print(f"cached step speed-up (encoder+decoder)/decoder: {(encoder_s + decoder_s) / decoder_s:6.1f}x")


if __name__ == "__main__":
    main()
