"""Run a study: one Ray Tune experiment per algorithm, then the test-set head-to-head."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from . import report
from .spaces import FIXED_SETTINGS, SpaceFn
from .spec import StudySpec
from .tracking import StudyTracker, trial_dirname, trial_id_of
from .trainable import evaluate_best, train_trial

METRIC, MODE = "best_val_acc", "max"
# Every epoch reports a checkpoint by design (exact retries); Tune's warning that this snapshots
# experiment state often is noise at our report rate (one per epoch, seconds apart).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
DONE_MARKER = "done.json"


# ---- the search space a trial samples from ---------------------------------------------------------

def trial_space(space: SpaceFn, fixed: dict[str, Any], episodes_per_epoch: int, trial: optuna.Trial) -> dict[str, Any]:
    """The define-by-run function Tune's OptunaSearch calls: the algorithm's space, plus the study's
    fixed settings returned as constants, plus steps_per_epoch derived from the sampled meta-batch."""
    constants = space(trial) or {}
    # OptunaSearch merges {**sampled, **returned}: a study default returned here would silently
    # replace the value the space sampled (e.g. meta_batch), so only unsampled defaults are returned.
    defaults = {k: v for k, v in fixed.items() if k not in trial.params and k not in constants}
    settings = {**defaults, **constants}
    meta_batch = trial.params["meta_batch"] if "meta_batch" in trial.params else settings["meta_batch"]
    return {**settings, "steps_per_epoch": max(1, episodes_per_epoch // meta_batch)}


# ---- the driver --------------------------------------------------------------------------------------

def make_sampler(searcher: str, seed: int) -> optuna.samplers.BaseSampler:
    if searcher == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if searcher == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def optuna_storage_url(spec: StudySpec) -> str:
    """SQLite beside the Ray results (optuna-dashboard opens it). With remote results (s3://...) it
    lives in a stable folder of the driver's machine (a Ray job's working directory is temporary)."""
    if "://" in spec.storage_path:
        folder = Path.home() / ".cache" / "hypermaml-hpo" / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / (spec.name + '.db')}"
    Path(spec.study_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(spec.study_dir) / 'optuna.db'}"


def _tuner(spec: StudySpec, algorithm: str, space: SpaceFn, tracker: StudyTracker) -> tune.Tuner:
    trainable = tune.with_resources(train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    experiment = f"{spec.study_dir}/{algorithm}"
    callbacks = [tracker.trial_callback(algorithm, spec.epochs)]
    if tune.Tuner.can_restore(experiment):
        # Continue an interrupted study: finished trials stay, unfinished ones (RUNNING when the driver
        # died) resume from their checkpoints; trials that failed on their own stay failed.
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    storage = optuna.storages.RDBStorage(optuna_storage_url(spec))
    searcher = OptunaSearch(
        space=_bind(space, spec.fixed_settings(algorithm), spec.episodes_per_epoch),
        metric=METRIC, mode=MODE, sampler=make_sampler(spec.searcher, spec.seed),
        study_name=f"{spec.name}-{algorithm}", storage=storage,
    )
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs, grace_period=spec.grace_period,
                                  reduction_factor=spec.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent, reuse_actors=True, trial_dirname_creator=trial_dirname,
            time_budget_s=spec.time_budget_s / len(spec.algorithms) if spec.time_budget_s else None,
        ),
        run_config=tune.RunConfig(
            name=algorithm, storage_path=spec.study_dir, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )


def _bind(space: SpaceFn, fixed: dict[str, Any], episodes_per_epoch: int):
    return partial(trial_space, space, fixed, episodes_per_epoch)


@dataclass
class AlgorithmRun:
    algorithm: str
    results: tune.ResultGrid
    seconds: float


def run_study(spec: StudySpec, spaces: dict[str, SpaceFn]) -> report.Comparison:
    tracker = StudyTracker(spec)
    tracker.start_study()
    # No address: a fresh local instance, never a cluster that `ray start` happened to leave on this
    # machine. In a Ray job, RAY_ADDRESS (hence --address) points at the job's cluster.
    ray.init(address=spec.address or "local", include_dashboard=False if not spec.address else None)
    try:
        runs = []
        for algorithm in spec.algorithms:
            start = time.perf_counter()
            tuner = _tuner(spec, algorithm, spaces[algorithm], tracker)
            results = tuner.fit()
            tracker.reconcile(algorithm, results)
            runs.append(AlgorithmRun(algorithm, results, time.perf_counter() - start))
        test_start = time.perf_counter()
        comparison, curves, best_checkpoints = head_to_head(spec, runs)
        timing = {"tuning_seconds": {r.algorithm: r.seconds for r in runs}, "head_to_head_seconds": time.perf_counter() - test_start}
        out = Path(tempfile.mkdtemp(prefix="hpo-summary-"))
        try:
            (out / "timing.json").write_text(json.dumps(timing, indent=2))
            files, notes = _write_summary(spec, comparison, curves, out)
            files.append(out / "timing.json")
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            tracker.log_summary(comparison, files, best_checkpoints, notes)
            table = (out / "summary.md").read_text()
            if "://" not in spec.storage_path:  # a local folder; a URI (s3://, gs://, file://...) is not a Path
                shutil.copy2(out / "summary.md", Path(spec.study_dir) / "summary.md")
                shutil.copy2(out / "summary.csv", Path(spec.study_dir) / "summary.csv")
                shutil.copy2(out / "timing.json", Path(spec.study_dir) / "timing.json")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        tracker.finish_study("FINISHED")
        print(table)
        return comparison
    except BaseException:
        tracker.finish_study("FAILED")
        raise
    finally:
        ray.shutdown()


def head_to_head(spec: StudySpec, runs: list[AlgorithmRun]):
    """Best trial of each algorithm (by best validation accuracy) on the same test episodes, R repeats.
    The algorithms are tested concurrently, each with a trial's resources."""
    curves, best_checkpoints, pending = {}, {}, []
    test_task = evaluate_best.options(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial)
    seeds = [spec.seed + r for r in range(spec.test_repeats)]
    for run in runs:
        finished = [r for r in run.results if r.error is None and r.metrics and METRIC in r.metrics]
        if not finished:
            raise RuntimeError(f"no trial of {run.algorithm} reported a validation accuracy; see {spec.study_dir}")
        curves[run.algorithm] = [list(r.metrics_dataframe["val_acc"]) for r in finished if r.metrics_dataframe is not None]
        best = max(finished, key=lambda r: r.metrics[METRIC])
        with best.checkpoint.as_directory() as stored:
            best_path = Path(tempfile.mkdtemp(prefix="hpo-best-")) / f"{run.algorithm}_best.pt"
            shutil.copy2(Path(stored) / "best.pt", best_path)
        best_checkpoints[run.algorithm] = best_path
        future = test_task.remote(best_path.read_bytes(), spec.device, spec.test_episodes, seeds)
        pending.append((run, finished, best, future))

    def train_seconds(result) -> float:
        return float(result.metrics_dataframe["train_s"].sum()) if result.metrics_dataframe is not None else 0.0

    outcomes = []
    for run, finished, best, future in pending:
        tested = ray.get(future)
        outcomes.append(report.AlgorithmOutcome(
            algorithm=run.algorithm,
            trial_id=trial_id_of(best.path),
            val_acc=float(best.metrics[METRIC]),
            repeat_test_accs=tested["accuracies"],
            episode_accs=tested["episode_accs"],
            adapt_ms_per_task=tested["ms_per_task"],
            parameters=tested["parameters"],
            train_seconds=train_seconds(best),
            study_seconds=sum(train_seconds(r) for r in finished),
            trial_counts=_trial_counts(run.results, spec.epochs),
            hyperparameters=_tuned(best.config),
        ))
    return report.compare(outcomes), curves, best_checkpoints


def _tuned(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a space chose (sampled or constant), not the ones the study fixes."""
    return {k: v for k, v in sorted(config.items()) if k not in FIXED_SETTINGS}


def _trial_counts(results: tune.ResultGrid, epochs: int) -> dict[str, int]:
    counts = {"completed": 0, "early_stopped": 0, "failed": 0}
    for r in results:
        if r.error is not None:
            counts["failed"] += 1
        elif r.metrics and r.metrics.get("epoch", 0) < epochs:
            counts["early_stopped"] += 1
        else:
            counts["completed"] += 1
    return counts


def _write_summary(spec: StudySpec, comparison: report.Comparison, curves, out: Path):
    files = {
        "summary.md": out / "summary.md",
        "summary.csv": out / "summary.csv",
        "spec.json": out / "spec.json",
    }
    files["summary.md"].write_text(report.summary_markdown(comparison, spec.budget()))
    files["summary.csv"].write_text(report.summary_csv(comparison))
    files["spec.json"].write_text(json.dumps(spec.to_dict(), indent=2))
    plots = out / "plots"
    plots.mkdir()
    report.plot_validation_curves(curves, plots / "validation_curves.png")
    report.plot_best_vs_best(comparison, plots / "best_vs_best.png")
    notes = []
    storage = optuna.storages.RDBStorage(optuna_storage_url(spec))
    for algorithm in spec.algorithms:
        study = optuna.load_study(study_name=f"{spec.name}-{algorithm}", storage=storage)
        _, study_notes = report.plot_optuna_study(study, plots, algorithm)
        notes += study_notes
    return [files["summary.md"], files["summary.csv"], files["spec.json"], plots], notes

