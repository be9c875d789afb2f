"""Run a study as four phases with plain data between them: tune -> replicate -> compare -> report.

- tune: one Ray Tune experiment per algorithm (Optuna searcher, ASHA), its published reference
  configuration first; -> TuneOutcome per algorithm.
- replicate: the top-k configurations of each algorithm (and its reference, unless clearly beaten)
  retrained from scratch with fresh seeds, as one Ray Tune experiment, each tested on the same
  fixed test episodes;
  -> ReplicateRecords; the finalist of each algorithm is the candidate with the best mean
  *validation* accuracy over its seeds.
- compare: statistics with the training seed as the unit (hpo.stats).
- report: summary.md / summary.csv / plots / diagnostics (hpo.report, hpo.plots, hpo.diagnostics).
MLflow (hpo.tracking) observes the phases: Tune callbacks during the experiments, and one call per
phase boundary from here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from hypermaml.data import default_cache_dir

from . import report
from .diagnostics import diagnose
from .progress import ProgressLines, duration, say
from .records import (COMPLETED, EARLY_STOPPED, FAILED, TIME_BUDGET, TIME_CAP, Finalist, ReplicateRecord,
                      TrialRecord, TuneOutcome, reference_gap)
from .spaces import FIXED_SETTINGS, SpaceFn, is_reference
from . import storage
from .spec import StudySpec
from .stats import compare_seeds
from .tracking import StudyTracker, trial_dirname, trial_id_of
from .trainable import TEST_EPISODES_FILE, replicate_trial, train_trial

METRIC, MODE = "best_val_acc", "max"
# Every epoch reports a checkpoint by design (exact retries); Tune's warning that this snapshots
# experiment state often is noise at our report rate (one per epoch, seconds apart).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
REPLICATES = "replicates"  # the replicate phase's experiment folder in the study folder
UNKNOWN_ORDER = 10**9  # the order of a trial with no Optuna record (not expected): after all others


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


# ---- the searcher and the scheduler ----------------------------------------------------------------

class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to a trial.

    Ray's OptunaSearch reports a trial that the scheduler stopped early as COMPLETE with its truncated
    value, so TPE learns that fast starters are best. Here such a trial is PRUNED (its per-epoch
    values stay as intermediate values, which is how TPE ranks pruned trials), and only trials that
    ran their whole budget (all their epochs, or as many as their training-time cap allowed) are
    COMPLETE.
    """

    def __init__(self, *args, full_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_epochs = full_epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The driver died after Optuna recorded this trial's end but before Tune's experiment
            # snapshot did: the resumed trial repeats epochs Optuna already has, and Optuna keeps them.
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and result.get("epoch", 0) < self.full_epochs and not result.get("capped"):
            result = {k: v for k, v in result.items() if k != self.metric}  # no value: Ray tells PRUNED
        super().on_trial_complete(trial_id, result, error)


class WarmupAwareASHA(ASHAScheduler):
    """ASHA that never judges a trial before the model it will be tested with is being trained.

    Validation always uses HyperMAML's pure hypernetwork, which a MAML warm-up has not trained yet:
    judged at a rung inside its warm-up or switch, every warm-up trial would be stopped. A result
    whose hypernetwork weight is below 1 is therefore not shown to ASHA; the trial is judged at the
    first rung it reaches afterwards, with the accuracy it has then.
    """

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("hn_weight", 1.0) < 1.0:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def optuna_sampler(searcher: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler (search algorithm) named by the study's `searcher`."""
    if searcher == "tpe":
        # Optuna's default of 10 random start-up trials would make a 12-trial study random search:
        # a third of the budget explores, the rest is guided.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 3)))
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if searcher == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def optuna_storage_url(spec: StudySpec) -> str:
    """SQLite beside the Ray results (optuna-dashboard opens it). With remote results (s3://...) it
    lives in a stable folder of the driver's machine (a Ray job's working directory is temporary):
    the cache folder's optuna/ ($HYPERMAML_CACHE or ~/.cache/hypermaml)."""
    if spec.is_remote:
        folder = (Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()) / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / (spec.name + '.db')}"
    Path(spec.study_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(spec.study_dir) / 'optuna.db'}"


# ---- the driver --------------------------------------------------------------------------------------

def run_study(spec: StudySpec, spaces: dict[str, SpaceFn], references: dict[str, tuple[dict, str]],
              verbose: bool = False) -> int:
    """Run the study. stdout tells the story in short lines (hpo.progress): where to look in MLflow, each
    trial event, and at the end the verdict, the summary's path and the MLflow link again; `verbose`
    adds Ray Tune's own status tables."""
    tracker = StudyTracker(spec)
    tracker.start_study()
    say(f"study {spec.name}: {' vs '.join(spec.algorithms)} on {spec.dataset} {spec.way}-way {spec.shot}-shot, "
        f"{spec.trials} trials x {spec.epochs} epochs per algorithm, then the top {spec.replicate_top}"
        f"{f' (+ reference if within {spec.reference_margin:g} points)' if references else ''} x {spec.replicate_seeds} fresh seeds")
    for line in tracker.where():
        say(line)
    # What a later run of this --name is checked against, and what --resume continues.
    storage.write_text(spec.spec_file, json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    # Ray Tune's output engine prints its experiment banner even when silent (verbose=0); the legacy
    # engine prints nothing then. --verbose keeps the current engine and its status tables.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # No address: a fresh local instance, never a cluster that `ray start` happened to leave on this
    # machine. In a Ray job, RAY_ADDRESS (hence --address) points at the job's cluster.
    ray.init(address=spec.address or "local", include_dashboard=False if not spec.address else None)
    interrupted = _interrupt_on_signals()
    try:
        outcomes = {a: tune_algorithm(spec, a, spaces[a], references.get(a), tracker, verbose) for a in spec.algorithms}
        replicates = replicate(spec, outcomes, tracker, verbose)
        finalists = choose_finalists(replicates)
        tracker.mark_finalists(finalists)
        say("final configurations (best mean val over seeds): " + ", ".join(
            f"{a} #{f.candidate_rank} ({100 * f.mean_val_acc:.1f}%)" for a, f in finalists.items()))
        comparison = compare(spec, outcomes, finalists)
        diagnostics = diagnose(outcomes, finalists, comparison, spec.grace_period, spec.epochs)
        summary = write_report(spec, outcomes, replicates, finalists, comparison, diagnostics, tracker)
        tracker.finish_study("FINISHED")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (a `ray job stop`): an interruption, not a failure
        tracker.finish_study("KILLED")
        say(f"interrupted: {spec.name} stopped; run the same command again (or --resume) to continue it")
        return 130
    except BaseException as error:
        tracker.finish_study("FAILED", error=f"{type(error).__name__}: {error}".splitlines()[0])
        raise
    finally:
        ray.shutdown()
        _restore_signals(interrupted)
    # The answer last: the diagnostics, the summary's bold opening lines (a time-budget warning, the
    # verdict), then where the rest is.
    opening = summary.split("\n## ")[0].splitlines()
    for line in [d.message for d in diagnostics] + [line.strip("*") for line in opening if line.startswith("**")]:
        say(line)
    say(f"Summary: {spec.study_dir}/summary.md")
    for line in tracker.where():
        say(line)
    return 0


def _interrupt_on_signals() -> dict:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the driver, whatever phase it is in, so the study
    ends as interrupted (KILLED in MLflow) and can be resumed. Ray Tune's own SIGINT handler would
    instead end the phase quietly and let the study go on with part of its trials."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers belong to the main thread; elsewhere the default behaviour stays
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# ---- phase 1: tune ---------------------------------------------------------------------------------

def tune_algorithm(spec: StudySpec, algorithm: str, space: SpaceFn, reference: tuple[dict, str] | None,
                   tracker: StudyTracker, verbose: bool = False) -> TuneOutcome:
    start = time.perf_counter()
    experiment = f"{spec.study_dir}/{algorithm}"
    trainable = tune.with_resources(train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    time_budget = spec.time_budget_s / len(spec.algorithms) if spec.time_budget_s else None
    callbacks = [tracker.trial_callback(algorithm, spec.epochs, reference),
                 ProgressLines("trial", spec.trials, spec.epochs, spec.scheduler, time_budget or 0.0,
                               reference[0] if reference else None)]
    say(f"tune {algorithm}: {spec.trials} trials of up to {spec.epochs} epochs, {spec.max_concurrent} at a time "
        f"({spec.searcher}, {spec.scheduler})")
    if tune.Tuner.can_restore(experiment):
        # Continue an interrupted study: finished trials stay, unfinished ones (RUNNING when the driver
        # died) resume from their checkpoints; trials that failed on their own stay failed.
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    else:
        searcher = StudySearch(
            space=partial(trial_space, space, spec.fixed_settings(algorithm), spec.episodes_per_epoch),
            metric=METRIC, mode=MODE, sampler=optuna_sampler(spec.searcher, spec.seed, spec.trials),
            study_name=f"{spec.name}-{algorithm}", storage=optuna.storages.RDBStorage(optuna_storage_url(spec)),
            points_to_evaluate=[reference[0]] if reference else None, full_epochs=spec.epochs,
        )
        scheduler = None
        if spec.scheduler == "asha":
            scheduler = WarmupAwareASHA(time_attr="training_iteration", max_t=spec.epochs,
                                        grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=spec.trials,
                max_concurrent_trials=spec.max_concurrent, reuse_actors=True, trial_dirname_creator=trial_dirname,
                time_budget_s=time_budget,
            ),
            run_config=_run_config(spec, algorithm, callbacks, verbose),
        )
    results = tuner.fit()
    tracker.reconcile(algorithm, results)
    wall = time.perf_counter() - start
    budget_end = time.time() - wall + time_budget if time_budget and wall >= 0.98 * time_budget else None
    proposals = _optuna_proposals(spec, algorithm)
    trials = sorted((_trial_record(spec, algorithm, r, reference, budget_end, proposals) for r in results),
                    key=lambda t: t.number)
    outcome = TuneOutcome(algorithm, trials, wall, spec.epochs * spec.episodes_per_epoch)
    tracker.note_best_trial(outcome)
    say(f"tune {algorithm} done in {duration(wall)}: {_tally(outcome)}")
    return outcome


def _tally(outcome: TuneOutcome) -> str:
    """How a tuning phase went: "2 ran all epochs, 2 stopped early; best val 75.4% (3ee199ea)"."""
    counts = {"ran all epochs": outcome.count(COMPLETED), "reached the training-time cap": outcome.count(TIME_CAP),
              "stopped early": outcome.count(EARLY_STOPPED),
              "cut by the time budget": outcome.count(TIME_BUDGET), "failed": outcome.count(FAILED)}
    text = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    scored = [t for t in outcome.trials if t.best_val_acc is not None]
    if scored:
        best = max(scored, key=lambda t: t.best_val_acc)
        text += f"; best val {100 * best.best_val_acc:.1f}% ({best.trial_id})"
    return text


def _run_config(spec: StudySpec, name: str, callbacks: list, verbose: bool) -> tune.RunConfig:
    return tune.RunConfig(
        name=name, storage_path=spec.study_dir, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1 if verbose else 0,  # 0: no status tables (hpo.progress prints the events)
    )


def _trial_record(spec: StudySpec, algorithm: str, result, reference, budget_end: float | None,
                  proposals: list[optuna.trial.FrozenTrial]) -> TrialRecord:
    trial_id = trial_id_of(result.path)
    tuned = _tuned(result.config)
    # Ray's trial ids carry no order; the Optuna trial with the same values gives it (and the ranges
    # its values were drawn from). Each Optuna trial is used once (pops), so duplicates pair in order.
    match = next((p for p in proposals if all(tuned.get(k) == v for k, v in p.params.items())), None)
    if match is not None:
        proposals.remove(match)
    frame = result.metrics_dataframe
    curve = [float(v) for v in frame["val_acc"]] if frame is not None and "val_acc" in frame else []
    metrics = result.metrics or {}
    if result.error is not None:
        status = FAILED
    elif len(curve) >= spec.epochs:
        status = COMPLETED
    elif metrics.get("capped"):
        status = TIME_CAP
    elif budget_end is not None and metrics.get("timestamp", 0) + 1.5 * metrics.get("epoch_s", 0) >= budget_end:
        status = TIME_BUDGET  # it was still running when the time budget ended the experiment
    else:
        status = EARLY_STOPPED
    return TrialRecord(
        algorithm=algorithm, trial_id=trial_id, number=match.number if match else UNKNOWN_ORDER,
        tuned=tuned, val_curve=curve,
        best_val_acc=float(max(curve)) if curve else None,
        train_seconds=float(frame["train_s"].sum()) if frame is not None and "train_s" in frame else 0.0,
        status=status, reference=reference[1] if reference and is_reference(tuned, reference[0]) else "",
        ranges={} if match is None else {
            name: (float(d.low), float(d.high), bool(d.log)) for name, d in match.distributions.items()
            if isinstance(d, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution))},
    )


def _optuna_proposals(spec: StudySpec, algorithm: str) -> list[optuna.trial.FrozenTrial]:
    """The Optuna trials of an algorithm's search, in the order they were proposed."""
    try:
        study = optuna.load_study(study_name=f"{spec.name}-{algorithm}", storage=optuna_storage_url(spec))
    except KeyError:
        return []
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _tuned(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a space chose (sampled or constant), not the ones the study fixes."""
    return {k: v for k, v in sorted(config.items()) if k not in FIXED_SETTINGS}


# ---- phase 2: replicate ------------------------------------------------------------------------------

def candidates(outcome: TuneOutcome, top: int, reference_margin: float) -> list[tuple[int, TrialRecord]]:
    """(rank, trial) of the top configurations by best validation accuracy (identical configurations
    counted once), plus the reference trial when it is not among them and is not clearly beaten: the
    finalist is then chosen between the tuned and the published configuration on fresh seeds, so
    tuning cannot end below the reference. `reference_margin` (points) is "clearly": a reference
    whose validation accuracy trails the top trial's, after the same epochs, by more than that is
    not retrained (a single seed's accuracy was seen to move by up to ~4 points between seeds)."""
    ranked, seen = [], []
    for trial in sorted((t for t in outcome.trials if t.best_val_acc is not None), key=lambda t: -t.best_val_acc):
        if trial.tuned not in seen:
            seen.append(trial.tuned)
            ranked.append(trial)
    chosen = [(rank, trial) for rank, trial in enumerate(ranked, start=1) if rank <= top]
    chosen += [(rank, trial) for rank, trial in enumerate(ranked, start=1)
               if rank > top and trial.reference and reference_gap(trial, ranked[0]) <= reference_margin]
    return chosen


def replicate(spec: StudySpec, outcomes: dict[str, TuneOutcome], tracker: StudyTracker,
              verbose: bool = False) -> list[ReplicateRecord]:
    """Retrain every candidate with each fresh seed at the full trial budget (the same epochs and
    training-time cap as its tuning trial), as one Tune experiment
    (parallel, retried and resumable like the tuning trials), each tested on the same episodes."""
    items = []
    test_seeds = [spec.seed + r for r in range(spec.test_repeats)]
    for seed in spec.replicate_seed_list():
        for algorithm, outcome in outcomes.items():
            for rank, trial in candidates(outcome, spec.replicate_top, spec.reference_margin):
                settings = {**spec.fixed_settings(algorithm), **trial.tuned, "seed": seed}
                settings["steps_per_epoch"] = max(1, spec.episodes_per_epoch // settings["meta_batch"])
                items.append({"algorithm": algorithm, "candidate_rank": rank, "source_trial": trial.trial_id,
                              "seed": seed, "tuned": trial.tuned, "settings": settings,
                              "test_episodes": spec.test_episodes, "test_seeds": test_seeds})
    if not items:
        raise RuntimeError(f"no tuning trial reported a validation accuracy; see {spec.study_dir}")
    start = time.perf_counter()
    say(f"replicate: {len(items)} runs ({len(items) // spec.replicate_seeds} configurations x {spec.replicate_seeds} "
        f"fresh seeds), {spec.epochs} epochs each, then the test")
    experiment = f"{spec.study_dir}/{REPLICATES}"
    trainable = tune.with_resources(replicate_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"replicate": tune.grid_search(items)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=_run_config(spec, REPLICATES, [tracker.replicate_callback(spec.epochs),
                                                      ProgressLines("replicate", len(items), spec.epochs)], verbose),
        )
    records = []
    results = tuner.fit()
    say(f"replicate done in {duration(time.perf_counter() - start)}")
    for result in results:
        item = result.config["replicate"]
        metrics = result.metrics or {}
        if result.error is not None or "test_acc" not in metrics:
            print(f"warning: replicate {item['algorithm']} rank {item['candidate_rank']} seed {item['seed']} failed; "
                  "it is left out of the comparison", file=sys.stderr, flush=True)
            continue
        frame = result.metrics_dataframe
        with result.checkpoint.as_directory() as stored:
            episode_accs = np.load(Path(stored) / TEST_EPISODES_FILE)
        records.append(ReplicateRecord(
            algorithm=item["algorithm"], trial_id=trial_id_of(result.path), candidate_rank=item["candidate_rank"],
            source_trial=item["source_trial"], seed=item["seed"], tuned=item["tuned"],
            val_curve=[float(v) for v in frame["val_acc"]], best_val_acc=float(metrics[METRIC]),
            test_acc=float(metrics["test_acc"]), test_ci95=float(metrics["test_ci95"]),
            adapt_ms_per_task=float(metrics["adapt_ms_per_task"]), parameters=int(metrics["parameters"]),
            train_seconds=float(frame["train_s"].sum()), episode_accs=episode_accs,
        ))
    return records


def choose_finalists(replicates: list[ReplicateRecord]) -> dict[str, Finalist]:
    """Each algorithm's candidate with the best mean validation accuracy over its fresh seeds. The
    test accuracies are never looked at here."""
    groups: dict[tuple[str, int], list[ReplicateRecord]] = {}
    for record in replicates:
        groups.setdefault((record.algorithm, record.candidate_rank), []).append(record)
    finalists: dict[str, Finalist] = {}
    for (algorithm, rank), records in sorted(groups.items()):
        records = sorted(records, key=lambda r: r.seed)
        candidate = Finalist(algorithm, rank, records[0].source_trial, records[0].tuned, records)
        if algorithm not in finalists or candidate.mean_val_acc > finalists[algorithm].mean_val_acc:
            finalists[algorithm] = candidate
    return finalists


# ---- phase 3: compare --------------------------------------------------------------------------------

def compare(spec: StudySpec, outcomes: dict[str, TuneOutcome], finalists: dict[str, Finalist]):
    """The seed-level comparison of the first two algorithms' finalists, or None if it cannot be made."""
    present = [a for a in spec.algorithms if a in finalists]
    if len(present) != 2 or any(len(finalists[a].replicates) < 2 for a in present):
        return None
    baseline, challenger = present
    return compare_seeds(baseline, finalists[baseline].episode_matrix(), challenger,
                         finalists[challenger].episode_matrix(), margin=spec.equivalence_margin,
                         budget=report.budget_clause(spec, outcomes), seed=spec.seed)


# ---- phase 4: report ---------------------------------------------------------------------------------

def write_report(spec: StudySpec, outcomes, replicates, finalists, comparison, diagnostics, tracker) -> str:
    out = Path(tempfile.mkdtemp(prefix="hpo-summary-"))
    try:
        files = report.write_files(spec, outcomes, replicates, finalists, comparison, diagnostics, out)
        notes, figures = [], {}
        storage = optuna_storage_url(spec)
        for algorithm in spec.algorithms:
            try:
                study = optuna.load_study(study_name=f"{spec.name}-{algorithm}", storage=storage)
            except KeyError:
                continue
            _, study_notes = report.plot_optuna_study(study, out / "plots", algorithm)
            figure, note = report.interactive_parallel_coordinate(study, algorithm)
            if figure is not None:
                figures[f"plots/{algorithm}_parallel_coordinate.html"] = figure
            notes += study_notes + ([note] if note else [])
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        tracker.log_summary(comparison, diagnostics, files, notes, figures)
        for name in ("summary.md", "summary.csv"):
            storage.write_text(f"{spec.study_dir}/{name}", (out / name).read_text())
        return (out / "summary.md").read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)
