"""Meta-training throughput: vectorized MAML / HyperMAML against the per-task loop reference.

    python benchmarks/throughput.py --data-root ../shared/data/omniglot [--device cuda] [--meta-batch 32] [--rounds 3]
    python benchmarks/throughput.py --data-root ../shared/data/omniglot --no-loop --variants default grouped-conv bf16 bf16+compile

Every measurement (one learner, vectorized or loop) runs in a fresh process, as users and Ray
workers run training: no heap, allocator or cache state is inherited from an earlier case. The
cases are alternated, round after round, so that drift of the machine's speed hits all of them
alike, and the vectorized/loop order flips every round. Each measurement times full outer steps
(episode sampling, meta-loss, backward, Adam step) on real Omniglot 5-way 1-shot episodes after
warm-up steps: our learner vectorizes `--task-chunk` tasks per pass, the loop runs one task at a
time with torch.autograd.grad (hypermaml/loop_reference.py), in the same precision. Prints each
run, then per case the median and range (min-max) of episodes/s and the ratio of the medians.
Prints figures only: speed targets are read here, not asserted in tests.

`--variants` measures the speed levers one at a time (each variant is a case of its own, in fresh
processes, alternated with the others): `default` is the library's defaults; a variant is one or
more LEVERS joined by "+", each changing one thing from the defaults. The vectorized learner runs
every variant, the loop reference the default one only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hypermaml import HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, loop_reference
from hypermaml.allocator import keep_heap_warm
from hypermaml.fitting import autocast, episode_sampler, load_data, outer_step, start_training

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by path
import harness  # noqa: E402

CASES = {
    "maml-1step": MAMLConfig(inner_steps=1, inner_lr=0.4),
    "maml-5step": MAMLConfig(inner_steps=5, inner_lr=0.4),
    "maml-1step-fo": MAMLConfig(inner_steps=1, inner_lr=0.4, first_order=True),
    "maml-head-5step": MAMLConfig(inner_steps=5, inner_lr=0.4, inner_params="head"),
    "hypermaml": HyperMAMLConfig(hn_hidden=512, hn_layers=3),
}
MODES = ("vectorized", "loop")
# Each lever changes one thing from the library's defaults: TrainConfig fields, or (no-heap-warm) the
# allocator setting that fit/evaluate apply, left out.
LEVERS: dict[str, dict[str, object]] = {
    "no-heap-warm": {},
    "grouped-conv": {"dense_conv": False},
    "channels-last": {"channels_last": True},
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "compile": {"compile": True},
}
DEFAULT_VARIANT = "default"


def variant_levers(variant: str) -> list[str]:
    """The levers of a variant name ("default", "bf16", "bf16+compile", ...); ValueError for unknown ones."""
    if variant == DEFAULT_VARIANT:
        return []
    levers = variant.split("+")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(unknown)} in variant {variant!r}; levers: {', '.join(LEVERS)}")
    return levers


def variant_settings(variant: str) -> dict[str, object]:
    """The TrainConfig fields a variant sets."""
    return {k: v for lever in variant_levers(variant) for k, v in LEVERS[lever].items()}


def variant_type(text: str) -> str:
    try:
        variant_levers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


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


def measure_in_process(args: argparse.Namespace, case: str, mode: str, variant: str) -> float:
    """Episodes/s of one case in this process: the child's entry point."""
    if "no-heap-warm" not in variant_levers(variant):
        keep_heap_warm()  # as fit/evaluate do: the steps here call the training step directly
    algo = CASES[case]
    algorithm = "maml" if isinstance(algo, MAMLConfig) else "hypermaml"
    device = torch.device(args.device)
    train = TrainConfig(
        algorithm=algorithm,
        data_root=args.data_root,
        query=args.query,
        meta_batch=args.meta_batch,
        device=args.device,
        task_chunk=args.task_chunk,
        **variant_settings(variant),
    )
    config = RunConfig(train, algo).validate()
    sampler = episode_sampler(config, load_data(config, ("train",))["train"].to(device), "train")
    generator = torch.Generator(device).manual_seed(0)
    progress = start_training(config, device)  # the learner, Adam, and the configured execution options
    learner, optimizer = progress.learner, progress.optimizer

    def vectorized_step() -> None:  # what fit runs
        outer_step(progress, sampler.sample(args.meta_batch, generator), config, 0)

    def loop_step() -> None:
        ep = sampler.sample(args.meta_batch, generator)
        optimizer.zero_grad(set_to_none=True)
        with autocast(progress.precision, device):  # the same precision as the vectorized learner
            if algorithm == "maml":
                loss = loop_reference.maml_meta_loss(learner, algo, ep)
            else:
                loss = loop_reference.hypermaml_meta_loss(learner, ep)
        loss.backward()
        optimizer.step()

    step = vectorized_step if mode == "vectorized" else loop_step
    return args.meta_batch * steps_per_second(step, args.steps, args.warmup, device)


def measure_in_fresh_process(args: argparse.Namespace, case: str, mode: str, variant: str) -> float | None:
    """Episodes/s of one case in a fresh process; None (and its stderr printed) if it failed."""
    settings = {
        "--data-root": args.data_root,
        "--device": args.device,
        "--meta-batch": args.meta_batch,
        "--query": args.query,
        "--task-chunk": args.task_chunk,
        "--steps": args.steps,
        "--warmup": args.warmup,
    }
    flags = [word for flag, value in settings.items() for word in (flag, value)]
    try:
        figures = harness.run_fresh(harness.script_command(__file__, *flags, "--child", case, mode, variant))
    except subprocess.CalledProcessError as failed:  # reported, and the other cases still run
        print(f"{case} {mode} {variant} failed (exit {failed.returncode}):\n{failed.stderr[-3000:]}", file=sys.stderr)
        return None
    return float(figures["episodes_per_s"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument(
        "--task-chunk", type=int, default=0, help="tasks per vectorized pass; 0 = the library's default"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed outer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed outer steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process measurements per case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-loop", action="store_true", help="skip the loop reference")
    parser.add_argument(
        "--variants",
        nargs="+",
        type=variant_type,
        default=[DEFAULT_VARIANT],
        help=f"{DEFAULT_VARIANT} and/or levers joined by '+', from: {', '.join(LEVERS)} (default: {DEFAULT_VARIANT})",
    )
    parser.add_argument("--child", nargs=3, metavar=("CASE", "MODE", "VARIANT"), help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    if args.child:  # one measurement, in this process, for the parent below
        case, mode, variant = args.child
        harness.print_figures(episodes_per_s=measure_in_process(args, case, mode, variant))
        return

    device = torch.device(args.device)
    chunk = args.task_chunk or ("all" if device.type == "cuda" else "library default")
    print(
        f"torch {torch.__version__}, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, threads {torch.get_num_threads()}, "
        f"5-way 1-shot {args.query}-query Omniglot, meta-batch {args.meta_batch}, task chunk {chunk}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per fresh process, {args.rounds} rounds",
        flush=True,
    )
    # (mode, variant) pairs of each case: the loop reference runs with the default settings only.
    runs = [("vectorized", variant) for variant in args.variants]
    if not args.no_loop:
        runs.append(("loop", DEFAULT_VARIANT))

    def show(round_: int, key: tuple[str, str, str], rate: float | None) -> None:
        case, mode, variant = key
        shown = "failed" if rate is None else f"{rate:6.1f} episodes/s"
        print(f"round {round_}  {case:<16} {mode:<10} {variant:<28} {shown}", flush=True)

    # Mirrored: the order of the runs (vectorized/loop, the variants, the cases) flips every round.
    keys = [(case, mode, variant) for mode, variant in runs for case in args.cases]
    rates = harness.measure(keys, args.rounds, lambda key: measure_in_fresh_process(args, *key), mirror=True, show=show)

    print(f"\n{'case':<16} {'mode':<10} {'variant':<28} {'ep/s median (min-max)':>24} {'/ default':>10} {'/ loop':>8}")
    for case in args.cases:
        medians = {key[1:]: harness.spread(values).median for key, values in rates.items() if key[0] == case and values}
        default, loop = medians.get(("vectorized", DEFAULT_VARIANT)), medians.get(("loop", DEFAULT_VARIANT))
        for mode, variant in runs:
            values = rates[(case, mode, variant)]
            if not values:
                print(f"{case:<16} {mode:<10} {variant:<28} {'failed':>24}")
                continue
            spread = harness.spread(values)
            vs_default = f"{spread.median / default:.2f}x" if default and mode == "vectorized" else "-"
            vs_loop = f"{spread.median / loop:.2f}x" if loop and mode == "vectorized" else "-"
            print(f"{case:<16} {mode:<10} {variant:<28} {spread.text('.1f'):>24} {vs_default:>10} {vs_loop:>8}")


if __name__ == "__main__":
    main()
