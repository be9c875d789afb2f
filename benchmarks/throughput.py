"""Meta-training throughput: vectorized MAML / HyperMAML against the per-task loop reference.

    python benchmarks/throughput.py --data-root ../shared/data/omniglot [--device cuda] [--meta-batch 32]

Each row times full outer steps (episode sampling, meta-loss, backward, Adam step) on real Omniglot
5-way 1-shot episodes, after warm-up steps, and prints episodes/s for our learner (vectorized over
`--task-chunk` tasks per pass) and for the plain loop (one task at a time, torch.autograd.grad,
hypermaml/loop_reference.py). Prints figures only: speed targets are read here, not asserted in tests.
"""

from __future__ import annotations

import argparse
import time

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


def steps_per_second(step, n_steps: int, warmup: int, device: torch.device) -> float:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--task-chunk", type=int, nargs="+", default=[0], help="0 = the library's default for the device")
    parser.add_argument("--steps", type=int, default=3, help="timed outer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-loop", action="store_true", help="skip the loop reference")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    keep_heap_warm()  # as fit/evaluate do: the steps here call the learners directly

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, threads {torch.get_num_threads()}, "
          f"5-way 1-shot {args.query}-query Omniglot, meta-batch {args.meta_batch}")
    print(f"{'case':<18}{'chunk':>6}{'vectorized ep/s':>17}{'loop ep/s':>11}{'speed-up':>10}")
    data = None
    for name in args.cases:
        algo = CASES[name]
        algorithm = "maml" if isinstance(algo, MAMLConfig) else "hypermaml"
        loop_eps = None
        for chunk_arg in args.task_chunk:
            train = TrainConfig(algorithm=algorithm, data_root=args.data_root, query=args.query, meta_batch=args.meta_batch,
                                device=args.device, task_chunk=chunk_arg)
            config = RunConfig(train, algo).validate()
            data = data or load_data(config, ("train",))
            sampler = episode_sampler(config, data["train"].to(device), "train")
            generator = torch.Generator(device).manual_seed(0)
            learner = new_learner(config, device)
            optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
            chunk = task_chunk_size(config, device)

            def vectorized_step():
                ep = sampler.sample(args.meta_batch, generator)
                optimizer.zero_grad(set_to_none=True)
                for part in chunks(ep, chunk):
                    loss, _ = learner.meta_loss(part, 0)
                    (loss * part.tasks / ep.tasks).backward()
                optimizer.step()

            def loop_step():
                ep = sampler.sample(args.meta_batch, generator)
                optimizer.zero_grad(set_to_none=True)
                if algorithm == "maml":
                    loss = loop_reference.maml_meta_loss(learner, algo, ep)
                else:
                    loss = loop_reference.hypermaml_meta_loss(learner, ep)
                loss.backward()
                optimizer.step()

            vec_eps = args.meta_batch * steps_per_second(vectorized_step, args.steps, args.warmup, device)
            if loop_eps is None and not args.no_loop:
                loop_eps = args.meta_batch * steps_per_second(loop_step, args.steps, args.warmup, device)
            ratio = f"{vec_eps / loop_eps:9.2f}x" if loop_eps else f"{'-':>10}"
            print(f"{name:<18}{chunk:>6}{vec_eps:>17.1f}{(loop_eps or float('nan')):>11.1f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
