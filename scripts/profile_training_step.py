"""Where a few-shot training step spends its time: forward, backward and optimizer of the decoder over cached
embeddings (the default bundle settings: batch 2, LoRA rank 4, decoder heads trained, DiceCE), and the operators
that dominate, from ``torch.profiler``.

    python scripts/profile_training_step.py [--steps 10] [--batch 2] [--backbone litemedsam]

Prints the mean seconds per step of each phase and the top operators by self CPU time; the estimate for a default
training (300 iterations) is steps x mean step time, without validation and caching.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.profiler import ProfilerActivity, profile

from blosam_med.engine import bilevel_param_groups
from blosam_med.model import BloSam, build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--iterations", type=int, default=300, help="for the estimate of one training")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = BloSam(build_backbone(args.backbone)).train()
    opt = torch.optim.AdamW(bilevel_param_groups(net, lr=1e-3, weight_decay=0.1, upper_lr=1e-3))
    loss_fn = DiceCELoss(sigmoid=True, lambda_ce=0.2, lambda_dice=0.8)
    x = torch.randn(args.batch, *net.embedding_shape)
    side = 4 * net.embedding_shape[-1]
    y = (torch.rand(args.batch, 1, side, side) > 0.5).float()

    def step() -> tuple[float, float, float]:
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = loss_fn(net.forward_embeddings(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(3):
        step()
    times = np.array([step() for _ in range(args.steps)])
    fwd, bwd, opt_s = times.mean(0)
    total = times.sum(1).mean()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"batch {args.batch}: forward {fwd:.3f} s, backward {bwd:.3f} s, optimizer {opt_s:.3f} s, "
        f"step {total:.3f} s; {args.iterations} iterations = {total * args.iterations:.0f} s"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
