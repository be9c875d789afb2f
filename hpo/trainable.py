"""What runs on the Ray workers: a trial's training and a best checkpoint's test.

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
from hypermaml.training import load_data


def use_assigned_cpus() -> None:
    """Torch threads = the CPUs Ray gave this trial or task: no oversubscription."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: meta-train one configuration, report every epoch with a checkpoint."""
    run_config = from_flat(config)
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
            tune.report({**metrics, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(work))

        fit(run_config, report=report_epoch, checkpoint_dir=work, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@ray.remote
def evaluate_best(checkpoint: bytes, device: str, episodes: int, seeds: list[int]) -> dict[str, Any]:
    """Test a best checkpoint on each seed's fixed episodes. A Ray task with a trial's resources, so
    on a cluster it runs where the trials ran (a GPU worker), not on the CPU-only head."""
    use_assigned_cpus()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "best.pt"
        path.write_bytes(checkpoint)
        learner = load_learner(path, device=device)
    test_data = load_data(learner.run_config, ("test",))["test"]
    evals = [evaluate(learner, "test", episodes, seed=seed, data=test_data) for seed in seeds]
    return {
        "accuracies": [e.accuracy for e in evals],
        "episode_accs": np.concatenate([e.per_episode.numpy() for e in evals]),
        "ms_per_task": float(np.mean([e.ms_per_task for e in evals])),
        "parameters": sum(p.numel() for p in learner.parameters()),
    }
