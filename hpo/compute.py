"""What a study will compute, and about how long that takes here: `--dry-run`'s estimate.

The compute is the same on every machine: how many networks the study trains at most, their
training episodes and FLOPs (the budget, or each algorithm's reference configuration, or a sample of
its space, at its full episodes). The time is this machine's: one outer step of that configuration
is timed here with the trial's threads, and the study's FLOPs are divided by that rate times the
trials that run at once. Early stopping only lowers both, so they are upper bounds.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from hypermaml import from_flat, step_flops, to_flat
from hypermaml.allocator import keep_heap_warm
from hypermaml.fitting import outer_step, resolve_device, start_training
from hypermaml.flops import synthetic_batch

from .spaces import SpaceFn, sample_space
from .spec import StudySpec

TIMED_STEPS = 2  # after one untimed step (allocations, first-call work)
TIMED_META_BATCH = 4


def estimate(spec: StudySpec, spaces: dict[str, SpaceFn], references: dict[str, tuple[dict, str]]) -> dict[str, Any]:
    """The study's compute and its expected wall time on this machine (see the module docstring)."""
    tuning = len(spec.algorithms) * spec.searches * spec.trials
    # Each search retrains its top configurations, and its reference (if it runs one) when that is close enough.
    candidates = spec.replicate_top + (1 if references else 0)
    replicates = len(spec.algorithms) * spec.searches * candidates * spec.replicate_seeds
    episodes = spec.epochs * spec.episodes_per_epoch
    flops, rates = {}, {}
    for algorithm in spec.algorithms:
        tuned = references[algorithm][0] if algorithm in references else sample_space(spaces[algorithm], seed=spec.seed)
        config = from_flat(
            {
                **spec.fixed_settings(algorithm),
                **tuned,
                "steps_per_epoch": max(1, spec.episodes_per_epoch // tuned.get("meta_batch", spec.meta_batch)),
            }
        )
        per_episode = step_flops(config) / config.train.meta_batch
        flops[algorithm] = min(spec.max_train_flops or float("inf"), episodes * per_episode)
        # Timed at a small meta-batch: the FLOP rate per task hardly depends on it on a CPU, and a dry run stays quick.
        timed = from_flat(
            {**to_flat(config), "device": "cpu", "meta_batch": min(TIMED_META_BATCH, config.train.meta_batch)}
        )
        rates[algorithm] = _flops_per_second(timed, max(1, int(spec.cpus_per_trial)))
    measured = "its reference configuration" if references else "a sample of its space"
    networks = (tuning + replicates * spec.replicate_scale) / len(spec.algorithms)  # in trials' budgets
    total = networks * sum(flops.values())
    at_once = max(1, min(spec.max_concurrent, int((os.cpu_count() or 1) // spec.cpus_per_trial)))
    here = sum(networks * flops[a] / rates[a] for a in spec.algorithms) / at_once
    return {
        "networks": f"at most {tuning} tuning trials and {replicates} replicates",
        "training episodes per network": f"at most {episodes}"
        + (
            f" per trial and {spec.final_epochs * spec.episodes_per_epoch} per replicate"
            if spec.replicate_scale != 1
            else ""
        ),
        "FLOPs per trial": ", ".join(f"{a} at most {f:.3g}" for a, f in flops.items())
        + (
            f" (its FLOP budget, or {measured}'s full episodes if fewer)"
            if spec.max_train_flops
            else f" ({measured}'s full episodes)"
        )
        + (f"; a replicate {spec.replicate_scale:.3g}x that" if spec.replicate_scale != 1 else ""),
        "FLOPs in all": f"at most {total:.3g}",
        "this machine's CPUs": (
            f"at most {_duration(here)} of training, {at_once} trial(s) at a time, at the rate one "
            f"outer step of {'each reference' if references else 'a sample of each space'} ran here ({', '.join(f'{a} {r:.3g} FLOP/s' for a, r in rates.items())}, "
            f"{max(1, int(spec.cpus_per_trial))} thread(s) each); validation, test and start-up come on top"
        ),
        "a GPU": "no GPU rate measured yet (run bash benchmarks/gpu_check.sh on one)",
    }


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.0f} h"


def _flops_per_second(config, threads: int) -> float:
    """FLOPs per second of this configuration's outer step here, with the threads of one trial, on
    random images of the episodes' shape."""
    episodes = synthetic_batch(config, torch.Generator().manual_seed(0))
    keep_heap_warm()  # as fit does: without it every step pays the kernel's page faults
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        progress = start_training(config, resolve_device("cpu"))
        last = config.train.epochs - 1
        outer_step(progress, episodes, config, last)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            outer_step(progress, episodes, config, last)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return TIMED_STEPS * progress.epoch_flops[-1] / seconds
