"""Where a few-shot training step spends its time: forward, backward and optimizer of the decoder over cached
embeddings (the default bundle settings: batch 2, LoRA rank 4, decoder heads trained, DiceCE), and the operators
that dominate, from ``torch.profiler``.

    python scripts/profile_training_step.py [--steps 10] [--batch 2] [--backbone litemedsam] [--threads 1]
    python scripts/profile_training_step.py --compile [--threads 1]   # torch.compile: cold and cached start, steady
    python scripts/profile_training_step.py --bf16 [--threads 1]      # bfloat16 autocast against float32
    python scripts/profile_training_step.py --floor                   # FLOPs, and the fastest a training and a slice can be

Prints the mean seconds per step of each phase and the top operators by self CPU time; the estimate for a default
training (300 iterations) is steps x mean step time, without validation and caching.

``--compile`` times instead one bi-level iteration as the trainer runs it (a lower step on LoRA and heads with the
prompt held constant, then the prompt's gradient), eager and through ``torch.compile`` (Inductor): the first compiled
iteration (the compile; run the script twice to see it from Inductor's and AOTAutograd's on-disk caches,
``TORCHINDUCTOR_CACHE_DIR``) and the median of the following ones.

``--floor`` counts the floating-point operations of one bi-level iteration (``torch.utils.flop_counter``: matrix
products and convolutions, the arithmetic that dominates; element-wise work is not counted, so the floor is a lower
bound), measures this CPU's rate on a matrix product of the decoder's shape (tokens of the 64 x 64 grid x 256
channels) in float32 and bfloat16, and prints the fewest seconds the decoder steps of a default training can take at
that rate (``--iterations`` per fold, the cross-fit's folds side by side, one per core), beside the measured
iteration, all with one thread (a fold's process has one). It does the same for the frozen encoder of ``--backbone``
on one image (the CT's per-slice cost) with the process's threads (``--threads``, default torch's: the cores), beside
its eager float32 time.
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
    parser.add_argument("--floor", action="store_true", help="FLOPs per bi-level iteration and the training's floor")
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

    if args.floor:
        training_floor(net, opt, loss_fn, x, y, args.steps, args.iterations)
        return
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


def autocast_forward(net: BloSam, embeddings: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Float32 logits of the decoder, computed under bfloat16 autocast when ``bf16``."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return net.forward_embeddings(embeddings).float()


def bilevel_iteration(
    forward: Callable, net: BloSam, opt: torch.optim.Optimizer, loss_fn: DiceCELoss, x: torch.Tensor, y: torch.Tensor
) -> None:
    """One bi-level iteration as the trainer runs it: a lower step with the prompt held constant, then the prompt's
    gradient."""
    upper = net.upper_parameters()
    opt.zero_grad(set_to_none=True)
    for p in upper:
        p.requires_grad_(False)
    loss_fn(forward(x), y).backward()
    for p in upper:
        p.requires_grad_(True)
    opt.step()
    torch.autograd.grad(loss_fn(forward(x), y), upper)


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

    def iteration() -> float:
        start = time.perf_counter()
        bilevel_iteration(forward, net, opt, loss_fn, x, y)
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

    with torch.no_grad():
        p32, p16 = (torch.sigmoid(autocast_forward(net, x, bf16)) for bf16 in (False, True))
    flipped = ((p32 > 0.5) != (p16 > 0.5)).float().mean().item()
    print(
        f"bf16 against fp32: max |probability difference| {(p32 - p16).abs().max():.4f}, mask pixels flipped {flipped:.2%}"
    )
    for bf16 in (False, True):
        time_iterations(
            "bf16 autocast" if bf16 else "fp32",
            lambda e, b=bf16: autocast_forward(net, e, b),
            net,
            opt,
            loss_fn,
            x,
            y,
            steps,
        )


def gemm_rate(dtype: torch.dtype, repeats: int = 50) -> float:
    """GFLOP/s of this process's threads on (4096 x 256) @ (256 x 256), the decoder's token-by-channel products."""
    a, b = torch.randn(4096, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
    for _ in range(5):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 4096 * 256 * 256 * repeats / (time.perf_counter() - start) / 1e9


def training_floor(
    net: BloSam,
    opt: torch.optim.Optimizer,
    loss_fn: DiceCELoss,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    iterations: int,
) -> None:
    """FLOPs of a bi-level iteration, the measured iteration, and the decoder steps' floor at the GEMM rate, with one
    thread (a fold's process has one); then the encoder's, with this process's threads."""
    from torch.utils.flop_counter import FlopCounterMode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    with FlopCounterMode(display=False) as counter:
        bilevel_iteration(lambda e: autocast_forward(net, e, False), net, opt, loss_fn, x, y)
    gflop = counter.get_total_flops() / 1e9
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; decoder steps with 1 thread, the encoder with {threads}"
    )
    print(f"one bi-level iteration (batch {x.shape[0]}): {gflop:.1f} GFLOP in matrix products and convolutions")
    for name, dtype, bf16 in (("float32", torch.float32, False), ("bfloat16 autocast", torch.bfloat16, True)):
        rate = gemm_rate(dtype)
        bilevel_iteration(lambda e, b=bf16: autocast_forward(net, e, b), net, opt, loss_fn, x, y)  # warm-up
        measured = []
        for _ in range(steps):
            start = time.perf_counter()
            bilevel_iteration(lambda e, b=bf16: autocast_forward(net, e, b), net, opt, loss_fn, x, y)
            measured.append(time.perf_counter() - start)
        median = float(np.median(measured))
        print(
            f"{name}: matrix product {rate:.0f} GFLOP/s; iteration measured {median:.3f} s ({gflop / median:.0f} "
            f"GFLOP/s, {gflop / median / rate:.0%} of the product's rate), floor {gflop / rate:.3f} s; "
            f"{iterations} iterations per fold, folds side by side: measured {iterations * median:.0f} s, "
            f"floor {iterations * gflop / rate:.0f} s"
        )
    torch.set_num_threads(threads)
    encoder = net.backbone.image_encoder.eval()
    size = net.backbone.preprocessing.input_size
    image = torch.rand(1, 3, size, size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            encoder(image)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            encoder(image)
            times.append(time.perf_counter() - start)
    gflop, rate = counter.get_total_flops() / 1e9, gemm_rate(torch.float32)
    print(
        f"encoder, one {size} x {size} image: {gflop:.1f} GFLOP; eager float32 {np.median(times[1:]):.3f} s/image; "
        f"floor at {rate:.0f} GFLOP/s (float32 matrix product, {torch.get_num_threads()} threads) {gflop / rate:.3f} "
        f"s/image, {np.median(times[1:]) * rate / gflop:.2f} eager encoder rates"
    )


if __name__ == "__main__":
    main()
