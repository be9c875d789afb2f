"""Meta-training throughput: vectorized MAML / HyperMAML against the per-task loop reference.

    python benchmarks/throughput.py --data-root ../shared/data/omniglot [--device cuda] [--meta-batch 32] [--rounds 3]

Every measurement (one learner, vectorized or loop) runs in a fresh process, as users and Ray
workers run training: no heap, allocator or cache state is inherited from an earlier case. The
cases are alternated, round after round, so that drift of the machine's speed hits all of them
alike, and the vectorized/loop order flips every round. Each measurement times full outer steps
(episode sampling, meta-loss, backward, Adam step) on real Omniglot 5-way 1-shot episodes after
warm-up steps: our learner vectorizes `--task-chunk` tasks per pass, the loop runs one task at a
time with torch.autograd.grad (hypermaml/loop_reference.py). Prints each run, then per case the
median and range (min-max) of episodes/s and the ratio of the medians. Prints figures only: speed
targets are read here, not asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hypermaml import HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, loop_reference, new_learner
from hypermaml.allocator import keep_heap_warm
from hypermaml.training import chunks, episode_sampler, load_data, task_chunk_size

CASES = {
    "maml-1step": MAMLConfig(inner_steps=1, inner_lr=0.4),
    "maml-5step": MAMLConfig(inner_steps=5, inner_lr=0.4),
    "maml-1step-fo": MAMLConfig(inner_steps=1, inner_lr=0.4, first_order=True),
    "maml-head-5step": MAMLConfig(inner_steps=5, inner_lr=0.4, inner_params="head"),
    "hypermaml": HyperMAMLConfig(hn_hidden=512, hn_layers=3),
}
MODES = ("vectorized", "loop")


def steps_per_second(step: Callable[[], None], n_steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n_steps / (time.perf_counter() - start)


def measure_in_process(args: argparse.Namespace, case: str, mode: str) -> float:
    """Episodes/s of one case in this process: the child's entry point."""
    keep_heap_warm()  # as fit/evaluate do: the steps here call the learners directly
    algo = CASES[case]
    algorithm = "maml" if isinstance(algo, MAMLConfig) else "hypermaml"
    device = torch.device(args.device)
    train = TrainConfig(algorithm=algorithm, data_root=args.data_root, query=args.query, meta_batch=args.meta_batch,
                        device=args.device, task_chunk=args.task_chunk)
    config = RunConfig(train, algo).validate()
    sampler = episode_sampler(config, load_data(config, ("train",))["train"].to(device), "train")
    generator = torch.Generator(device).manual_seed(0)
    learner = new_learner(config, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    chunk = task_chunk_size(config, device)

    def vectorized_step() -> None:
        ep = sampler.sample(args.meta_batch, generator)
        optimizer.zero_grad(set_to_none=True)
        for part in chunks(ep, chunk):
            loss, _ = learner.meta_loss(part, 0)
            (loss * part.tasks / ep.tasks).backward()
        optimizer.step()

    def loop_step() -> None:
        ep = sampler.sample(args.meta_batch, generator)
        optimizer.zero_grad(set_to_none=True)
        if algorithm == "maml":
            loss = loop_reference.maml_meta_loss(learner, algo, ep)
        else:
            loss = loop_reference.hypermaml_meta_loss(learner, ep)
        loss.backward()
        optimizer.step()

    step = vectorized_step if mode == "vectorized" else loop_step
    return args.meta_batch * steps_per_second(step, args.steps, args.warmup, device)


def measure_in_fresh_process(args: argparse.Namespace, case: str, mode: str) -> float:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--data-root", args.data_root, "--device", args.device,
        "--meta-batch", str(args.meta_batch), "--query", str(args.query), "--task-chunk", str(args.task_chunk),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--child", case, mode,
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{case} {mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["episodes_per_s"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--task-chunk", type=int, default=0, help="tasks per vectorized pass; 0 = the library's default")
    parser.add_argument("--steps", type=int, default=5, help="timed outer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed outer steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process measurements per case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-loop", action="store_true", help="skip the loop reference")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    if args.child:  # one measurement, in this process, for the parent below
        case, mode = args.child
        print(json.dumps({"episodes_per_s": measure_in_process(args, case, mode)}))
        return

    device = torch.device(args.device)
    chunk = args.task_chunk or ("all" if device.type == "cuda" else "library default")
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, threads {torch.get_num_threads()}, "
          f"5-way 1-shot {args.query}-query Omniglot, meta-batch {args.meta_batch}, task chunk {chunk}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per fresh process, {args.rounds} rounds", flush=True)
    modes = ("vectorized",) if args.no_loop else MODES
    rates: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for case in args.cases:
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                rate = measure_in_fresh_process(args, case, mode)
                rates.setdefault((case, mode), []).append(rate)
                print(f"round {round_ + 1}  {case:<16} {mode:<10} {rate:6.1f} episodes/s", flush=True)

    print(f"\n{'case':<16} {'vectorized ep/s (min-max)':>26} {'loop ep/s (min-max)':>22} {'vectorized/loop':>16}")
    for case in args.cases:
        cells, medians = [], {}
        for mode, width in zip(MODES, (26, 22)):
            values = rates.get((case, mode))
            if values is None:
                cells.append(f"{'-':>{width}}")
                continue
            medians[mode] = statistics.median(values)
            cells.append(f"{f'{medians[mode]:.1f} ({min(values):.1f}-{max(values):.1f})':>{width}}")
        ratio = f"{medians['vectorized'] / medians['loop']:.2f}x" if len(medians) == 2 else "-"
        print(f"{case:<16} {cells[0]} {cells[1]} {ratio:>16}")


if __name__ == "__main__":
    main()
