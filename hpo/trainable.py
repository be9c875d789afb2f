"""What runs on the Ray workers: a tuning trial, and a replicate (a fresh-seed retraining, then its test).

Kept apart from the driver's modules on purpose: a worker imports the module of the function it
runs, and this one needs only Ray, torch and hypermaml, not MLflow, Optuna, scipy or matplotlib
(several seconds of imports per worker on a small CPU, paid again by every Tuner's first trial).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from hypermaml import evaluate, fit, from_flat, load_learner
from hypermaml.fitting import BEST, CAPPED, EPOCH, load_data

from .records import PLACE_KEYS

TEST_EPISODES_FILE = "test_episode_accs.npy"


def use_assigned_cpus() -> None:
    """Torch threads = the CPUs Ray gave this trial or task: no oversubscription."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: meta-train one configuration, report every epoch with a checkpoint."""
    _train_and_report(config, test=None)


def replicate_trial(config: dict[str, Any]) -> None:
    """Tune function trainable of the replicate phase: retrain a candidate from scratch with a fresh
    seed, reporting every epoch like a tuning trial; the last epoch's report (the last of its epochs, or
    the one its training-time cap ended it after) also carries the test of
    its best-validation weights on the study's fixed test episodes (test_acc, test_ci95,
    adapt_ms_per_task, parameters), and its checkpoint holds the per-episode accuracies."""
    replicate = config["replicate"]
    _train_and_report(replicate["settings"], test=(replicate["test_episodes"], replicate["test_seeds"]))


def _train_and_report(settings: dict[str, Any], test: tuple[int, list[int]] | None) -> None:
    run_config = from_flat({k: v for k, v in settings.items() if k not in PLACE_KEYS})
    use_assigned_cpus()
    work = Path(tempfile.mkdtemp(prefix="hpo-trial-"))
    try:
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry after a failure, or a restored study
            with checkpoint.as_directory() as stored:
                for item in Path(stored).iterdir():
                    shutil.copy2(item, work / item.name)
            resume_from = work / "last.pt"

        node_id = ray.get_runtime_context().get_node_id()  # nodes of one machine share an IP; ids differ

        def report_epoch(metrics: dict[str, float]) -> None:
            metrics = {**metrics, "node_id": node_id}
            if test is not None and (metrics[EPOCH] == run_config.train.epochs or metrics[CAPPED]):
                metrics.update(_test_best(work, run_config.train.device, *test))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work))

        fit(run_config, report=report_epoch, checkpoint_dir=work, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _test_best(work: Path, device: str, episodes: int, seeds: list[int]) -> dict[str, float]:
    """Test the best-validation weights (best.pt, just written by fit) on each seed's fixed episodes;
    the per-episode accuracies go into the checkpoint folder for the driver's statistics."""
    learner = load_learner(work / BEST, device=device)
    test_data = load_data(learner.run_config, ("test",))["test"]
    evals = [evaluate(learner, "test", episodes, seed=seed, data=test_data) for seed in seeds]
    per_episode = np.concatenate([e.per_episode.numpy() for e in evals])
    np.save(work / TEST_EPISODES_FILE, per_episode)
    return {
        "test_acc": float(per_episode.mean()),
        "test_ci95": float(1.96 * per_episode.std(ddof=1) / np.sqrt(per_episode.size)),
        "adapt_ms_per_task": float(np.mean([e.ms_per_task for e in evals])),
        "parameters": float(sum(p.numel() for p in learner.parameters())),
    }
