"""Where a few-shot training step spends its time: forward, backward and optimizer of the decoder over cached
embeddings (the default bundle settings: batch 2, LoRA rank 4, decoder heads trained, DiceCE), and the operators
that dominate, from ``torch.profiler``.

    python scripts/profile_training_step.py [--steps 10] [--batch 2] [--backbone litemedsam] [--threads 1]
    python scripts/profile_training_step.py --compile [--threads 1]   # torch.compile: cold and cached start, steady
    python scripts/profile_training_step.py --bf16 [--threads 1]      # bfloat16 autocast against float32

Prints the mean seconds per step of each phase and the top operators by self CPU time; the estimate for a default
training (300 iterations) is steps x mean step time, without validation and caching.

``--compile`` times instead one bi-level iteration as the trainer runs it (a lower step on LoRA and heads with the
prompt held constant, then the prompt's gradient), eager and through ``torch.compile`` (Inductor): the first compiled
iteration (the compile; run the script twice to see it from Inductor's and AOTAutograd's on-disk caches,
``TORCHINDUCTOR_CACHE_DIR``) and the median of the following ones.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="eager against torch.compile, per bi-level iteration")
    parser.add_argument("--bf16", action="store_true", help="float32 against bfloat16 autocast, per bi-level iteration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = BloSam(build_backbone(args.backbone)).train()
    opt = torch.optim.AdamW(bilevel_param_groups(net, lr=1e-3, weight_decay=0.1, upper_lr=1e-3))
    loss_fn = DiceCELoss(sigmoid=True, lambda_ce=0.2, lambda_dice=0.8)
    x = torch.randn(args.batch, *net.embedding_shape)
    side = 4 * net.embedding_shape[-1]
    y = (torch.rand(args.batch, 1, side, side) > 0.5).float()

    if args.compile or args.bf16:
        (compare_compile if args.compile else compare_bf16)(net, opt, loss_fn, x, y, args.steps)
        return

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


def time_iterations(
    name: str,
    forward: Callable,
    net: BloSam,
    opt: torch.optim.Optimizer,
    loss_fn: DiceCELoss,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
) -> None:
    """Print the first and the median following seconds of a bi-level iteration (a lower step with the prompt held
    constant, then the prompt's gradient) through ``forward``."""
    upper = net.upper_parameters()

    def iteration() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for p in upper:
            p.requires_grad_(False)
        loss_fn(forward(x), y).backward()
        for p in upper:
            p.requires_grad_(True)
        opt.step()
        torch.autograd.grad(loss_fn(forward(x), y), upper)
        return time.perf_counter() - start

    first = iteration()
    steady = float(np.median([iteration() for _ in range(steps)]))
    print(
        f"{name}: first iteration {first:.1f} s, then {steady:.3f} s per iteration ({torch.get_num_threads()} threads)"
    )


def compare_compile(
    net: BloSam, opt: torch.optim.Optimizer, loss_fn: DiceCELoss, x: torch.Tensor, y: torch.Tensor, steps: int
) -> None:
    """Seconds per bi-level iteration, eager and compiled."""
    for name, forward in (("eager", net.forward_embeddings), ("compiled", torch.compile(net.forward_embeddings))):
        time_iterations(name, forward, net, opt, loss_fn, x, y, steps)


def compare_bf16(
    net: BloSam, opt: torch.optim.Optimizer, loss_fn: DiceCELoss, x: torch.Tensor, y: torch.Tensor, steps: int
) -> None:
    """Seconds per bi-level iteration in float32 and under ``torch.autocast`` to bfloat16 on the CPU, and how far the
    untrained network's probabilities move."""

    def forward(embeddings: torch.Tensor, bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net.forward_embeddings(embeddings).float()

    with torch.no_grad():
        p32, p16 = (torch.sigmoid(forward(x, bf16)) for bf16 in (False, True))
    flipped = ((p32 > 0.5) != (p16 > 0.5)).float().mean().item()
    print(
        f"bf16 against fp32: max |probability difference| {(p32 - p16).abs().max():.4f}, mask pixels flipped {flipped:.2%}"
    )
    for bf16 in (False, True):
        time_iterations(
            "bf16 autocast" if bf16 else "fp32", lambda e, b=bf16: forward(e, b), net, opt, loss_fn, x, y, steps
        )


if __name__ == "__main__":
    main()
