"""How much batching more tasks into one pass can gain on this machine: the ceiling of vectorizing.

A learner whose backbone weights are shared by all tasks (HyperMAML, head-only MAML) can run one
convolution over the images of T tasks instead of T convolutions of one task's images. The FLOPs are
the same; only the cost per image can change. This script measures that cost: the Conv4 backbone's
forward and backward as meta-training runs it (the dense convolution of shared weights, batch norm
per task, the default precision, the allocator setting) over T tasks' images at once: T = 1 (the
per-task loop), 4 (the CPU's default task chunk), 8 and 32 (a whole meta-batch). Each case runs in a
fresh process, the cases alternate over rounds, and it prints per case the median and range of
images/s and the ratio to T = 1: the most that vectorizing can gain on the shared backbone, which
holds nearly all of HyperMAML's FLOPs (its hypernetwork reads a few rows per task). Prints figures only.

    python benchmarks/batch_scaling.py [--images-per-task 80] [--tasks 1 4 8 32] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hypermaml.allocator import keep_heap_warm
from hypermaml.fitting import autocast, training_precision
from hypermaml.models import backbone_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by path
import harness  # noqa: E402


def images_per_second(tasks: int, images_per_task: int, steps: int, warmup: int, precision: str) -> float:
    """Forward and backward of the Omniglot Conv4 over `tasks * images_per_task` images, per second."""
    keep_heap_warm()
    device = torch.device("cpu")
    backbone = backbone_for(in_channels=1, image_size=28)
    images = torch.randn(tasks, images_per_task, 1, 28, 28)  # [T, B, C, H, W], as the learners pass them

    def step() -> None:
        backbone.zero_grad(set_to_none=True)
        with autocast(precision, device):
            features = backbone(images)
        features.float().square().mean().backward()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * tasks * images_per_task / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-per-task", type=int, default=80, help="5-way 1-shot with 15 queries: 5 + 75")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 8, 32])
    parser.add_argument("--images", type=int, default=20480, help="images each measurement processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (Ray trials run with 1)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        steps = max(3, args.images // (args.child * args.images_per_task))
        rate = images_per_second(args.child, args.images_per_task, steps, warmup=2, precision=args.precision)
        harness.print_figures(images_per_s=rate)
        return

    print(
        f"Conv4 forward + backward, {args.images_per_task} images per task, precision "
        f"{training_precision(args.precision, torch.device('cpu'))}, {args.threads} thread(s); fresh process per case"
    )

    def run(tasks: int) -> float:
        flags = ["--images-per-task", args.images_per_task, "--images", args.images, "--threads", args.threads]
        command = harness.script_command(__file__, "--child", tasks, *flags, "--precision", args.precision)
        return harness.run_fresh(command)["images_per_s"]

    def show(round_: int, tasks: int, rate: float) -> None:
        print(f"round {round_}: {tasks:>2} task(s) per pass  {rate:8.0f} images/s", flush=True)

    rates = harness.measure(args.tasks, args.rounds, run, show=show)  # alternated: every round runs each case once
    base = harness.spread(rates[args.tasks[0]]).median
    print(f"\n{'tasks per pass':>14} {'images/s median (min-max)':>28} {f'/ {args.tasks[0]} task(s)':>12}")
    for tasks, values in rates.items():
        spread = harness.spread(values)
        print(f"{tasks:>14} {spread.text('.0f'):>28} {spread.median / base:>11.2f}x")


if __name__ == "__main__":
    main()
