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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
from ray import tune

from hypermaml.datasets import default_cache_dir
from hypermaml.fitting import BEST_VAL_ACC, TRAIN_EPISODES, TRAIN_S, VAL_ACC

from . import report, storage
from .diagnostics import diagnose
from .plots import expected_best_curves, interactive_parallel_coordinate, plot_optuna_study
from .progress import ProgressLines, duration, say
from .records import (
    NUMBER_KEY,
    PLACE_KEYS,
    SEARCH_KEY,
    Finalist,
    ReplicateRecord,
    StudyComparison,
    StudyResults,
    TrialEnd,
    TrialRecord,
    TuneOutcome,
    reference_gap,
    trial_end,
)
from .rounds import RoundHalving, RoundSearch
from .spaces import FIXED_SETTINGS, SpaceFn, is_reference
from .spec import StudySpec
from .stats import compare_search_finalists, compare_seeds
from .tracking import StudyTracker, trial_dirname, trial_id_of
from .trainable import TEST_EPISODES_FILE, replicate_trial, train_trial

METRIC, MODE = BEST_VAL_ACC, "max"
# Every epoch reports a checkpoint by design (exact retries); Tune's warning that this snapshots
# experiment state often is noise at our report rate (one per epoch, seconds apart).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
REPLICATES = "replicates"  # the replicate phase's experiment folder in the study folder
UNKNOWN_ORDER = 10**9  # the order of a trial with no Optuna record (not expected): after all others
Fit = Callable[[tune.Tuner], tune.ResultGrid]  # runs a Tuner: Interrupts.fit, or plain Tuner.fit
SEARCH_BLOCKS_FILE = "search_blocks.json"  # beside spec.json: the searches' blocks (search_blocks)


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


def optuna_study_name(spec: StudySpec, algorithm: str, search: int) -> str:
    """Search k's Optuna study; search 0 keeps the name a single-search study always had."""
    return f"{spec.name}-{algorithm}" + (f"-search{search}" if search else "")


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


def run_study(
    spec: StudySpec, spaces: dict[str, SpaceFn], references: dict[str, tuple[dict, str]], verbose: bool = False
) -> int:
    """Run the study. stdout tells the story in short lines (hpo.progress): where to look in MLflow, each
    trial event, and at the end the verdict, the summary's path and the MLflow link again; `verbose`
    adds Ray Tune's own status tables."""
    tracker = StudyTracker(spec)
    tracker.start_study()
    say(
        f"study {spec.name}: {' vs '.join(spec.algorithms)} on {spec.dataset} {spec.way}-way {spec.shot}-shot, "
        f"{spec.trials} trials x {spec.epochs} epochs per algorithm, then the top {spec.replicate_top}"
        f"{f' (+ reference if within {spec.reference_margin:g} points)' if references else ''} x {spec.replicate_seeds} fresh seeds"
        f"{f' x {spec.final_epochs} epochs' if spec.replicate_scale != 1 else ''}"
    )
    for line in tracker.where():
        say(line)
    # What a later run of this --name is checked against, and what --resume continues.
    storage.write_text(spec.spec_file, json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    # Ray Tune's output engine prints its experiment banner even when silent (verbose=0); the legacy
    # engine prints nothing then. --verbose keeps the current engine and its status tables.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # No address: a fresh local instance, never a cluster that `ray start` happened to leave on this
    # machine, whose trial workers run at the driver's priority: Ray's default (nice +15) lets any other
    # process on a researcher's laptop take their CPU, and a study beside a busy editor or build would
    # crawl. In a Ray job, RAY_ADDRESS (hence --address) points at the job's cluster, configured there.
    if spec.address:
        ray.init(address=spec.address)
    else:
        ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0})
    with Interrupts() as interrupts:
        try:
            blocks = search_blocks(spec)
            outcomes = {
                a: tune_algorithm(spec, a, spaces[a], references.get(a), tracker, blocks, interrupts.fit, verbose)
                for a in spec.algorithms
            }
            replicates = replicate(spec, outcomes, tracker, blocks, interrupts.fit, verbose)
            finalists = choose_finalists(replicates, spec.searches)
            tracker.mark_finalists(finalists)
            say(
                "final configurations (best mean val over seeds): "
                + ", ".join(f"{a} #{f.candidate_rank} ({100 * f.mean_val_acc:.1f}%)" for a, f in finalists.items())
            )
            comparison = compare(spec, outcomes, finalists)
            diagnostics = diagnose(
                outcomes, finalists, comparison.per_search if comparison else {}, spec.grace_period, spec.epochs
            )
            summary = write_report(
                spec, StudyResults(outcomes, replicates, finalists, comparison, diagnostics), tracker
            )
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
    # The answer last: the diagnostics, the summary's bold opening lines (a time-budget warning, the
    # verdict), then where the rest is.
    opening = summary.split("\n## ")[0].splitlines()
    for line in [d.message for d in diagnostics] + [line.strip("*") for line in opening if line.startswith("**")]:
        say(line)
    say(f"Summary: {spec.study_dir}/summary.md")
    for line in tracker.where():
        say(line)
    return 0


class Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the driver, whatever phase it is in, so the study
    ends as interrupted (KILLED in MLflow) and can be resumed. Ray Tune's own SIGINT handler would
    instead end the phase quietly and let the study go on with part of its trials.

    Inside a Tuner.fit run through `fit`, the first such signal stops Tune its own way first (its
    SIGUSR1 handler): Tune then writes its experiment state to the storage one last time, and `fit`
    raises KeyboardInterrupt when Tune returns. Raised in the middle of Tune's loop, the resume would
    restore Tune's last periodic snapshot instead, without the trials started since (their runs
    deleted as orphans, their Optuna trials RUNNING forever, their budget spent again). A second
    signal raises at once. Used as a context manager around the study (handlers belong to the main
    thread; elsewhere the default behaviour stays)."""

    def __init__(self):
        self._previous: dict = {}
        self._tune_stop = None  # the SIGUSR1 handler before the fit under way: Tune's is any other one
        self._fitting = False
        self._received: str | None = None  # the signal the fit under way got

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        stop_tune = signal.getsignal(signal.SIGUSR1)
        if self._fitting and not self._received and callable(stop_tune) and stop_tune is not self._tune_stop:
            self._received = signal.Signals(signum).name
            stop_tune(signum, frame)  # installed by this fit's tune.run: ends its loop after a last snapshot
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def fit(self, tuner: tune.Tuner) -> tune.ResultGrid:
        """tuner.fit(), raising KeyboardInterrupt after it if it was interrupted."""
        self._tune_stop, self._fitting, self._received = signal.getsignal(signal.SIGUSR1), True, None
        try:
            results = tuner.fit()
        finally:
            self._fitting = False
        if self._received:
            raise KeyboardInterrupt(self._received)
        return results


# ---- phase 1: tune ---------------------------------------------------------------------------------


def search_blocks(spec: StudySpec) -> list[tuple[int, int]]:
    """The study's searches in the blocks they were started in: [(0, K)] for a new study, and one more
    block for each `--resume --searches K2` that grew it. Each block is its own Tune experiments, so a
    grown study runs only its new searches. Recorded beside the spec."""
    path = f"{spec.study_dir}/{SEARCH_BLOCKS_FILE}"
    text = storage.read_text(path)
    blocks = [tuple(b) for b in json.loads(text)] if text else []
    end = blocks[-1][1] if blocks else 0
    if spec.searches > end:
        blocks.append((end, spec.searches))
        storage.write_text(path, json.dumps(blocks))
    return blocks


def _experiment_name(phase: str, block: tuple[int, int]) -> str:
    """The first block's experiments keep the names a single-search study always had."""
    return phase if block[0] == 0 else f"{phase}-searches-{block[0]}-{block[1] - 1}"


def tune_algorithm(
    spec: StudySpec,
    algorithm: str,
    space: SpaceFn,
    reference: tuple[dict, str] | None,
    tracker: StudyTracker,
    blocks: list[tuple[int, int]],
    fit: Fit = tune.Tuner.fit,
    verbose: bool = False,
) -> TuneOutcome:
    """Every search of an algorithm, block by block; one Tune experiment per block runs its searches
    side by side, as the resources allow."""
    start = time.perf_counter()
    trials: list[TrialRecord] = []
    for block in blocks:
        trials += _tune_block(spec, algorithm, space, reference, tracker, block, fit, verbose)
    wall = time.perf_counter() - start
    outcome = TuneOutcome(
        algorithm, sorted(trials, key=lambda t: (t.search, t.number)), wall, spec.epochs * spec.episodes_per_epoch
    )
    tracker.note_best_trial(outcome)
    say(f"tune {algorithm} done in {duration(wall)}: {_tally(outcome)}")
    return outcome


def _tune_block(
    spec: StudySpec,
    algorithm: str,
    space: SpaceFn,
    reference: tuple[dict, str] | None,
    tracker: StudyTracker,
    block: tuple[int, int],
    fit: Fit,
    verbose: bool,
) -> list[TrialRecord]:
    searches = range(*block)
    experiment = f"{spec.study_dir}/{_experiment_name(algorithm, block)}"
    trainable = tune.with_resources(train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    time_budget = spec.time_budget_s / len(spec.algorithms) if spec.time_budget_s else None
    total = len(searches) * spec.trials
    callbacks = [
        tracker.trial_callback(algorithm, spec.epochs, reference),
        ProgressLines(
            "trial", total, spec.epochs, spec.scheduler, time_budget or 0.0, reference[0] if reference else None
        ),
    ]
    which = (
        (f"search {block[0]}" if len(searches) == 1 else f"searches {block[0]}-{block[1] - 1}")
        if spec.searches > 1
        else ""
    )
    say(
        f"tune {algorithm}{f' {which}' if which else ''}: {total} trial{'s' if total != 1 else ''}"
        f"{f' ({len(searches)} searches x {spec.trials})' if len(searches) > 1 else ''} of up to {spec.epochs} epochs, "
        f"{spec.max_concurrent} at a time ({spec.searcher} in rounds of {spec.search_batch}, {spec.scheduler})"
    )
    if tune.Tuner.can_restore(experiment):
        # Continue an interrupted study: finished trials stay, unfinished ones (RUNNING when the driver
        # died) resume from their checkpoints; trials that failed on their own stay failed.
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    else:
        optuna_storage = optuna.storages.RDBStorage(optuna_storage_url(spec))
        studies = [
            optuna.create_study(
                study_name=optuna_study_name(spec, algorithm, k),
                storage=optuna_storage,
                sampler=optuna_sampler(spec.searcher, spec.search_seed(k), spec.trials),
                direction="maximize",
                load_if_exists=True,
            )
            for k in searches
        ]
        searcher = RoundSearch(
            studies,
            [partial(trial_space, space, spec.fixed_settings(algorithm, k), spec.episodes_per_epoch) for k in searches],
            trials=spec.trials,
            batch=spec.search_batch,
            metric=METRIC,
            mode=MODE,
            full_epochs=spec.epochs,
            first_points=[[reference[0]] if reference else [] for _ in studies],
            first_search=block[0],
        )
        scheduler = None
        if spec.scheduler == "asha":
            scheduler = RoundHalving(
                max_t=spec.epochs,
                grace_period=spec.grace_period,
                reduction_factor=spec.reduction_factor,
                metric=METRIC,
                mode=MODE,
            )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=total,
                max_concurrent_trials=spec.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
                time_budget_s=time_budget,
            ),
            run_config=_run_config(spec, _experiment_name(algorithm, block), callbacks, verbose),
        )
    results = fit(tuner)
    tracker.reconcile(algorithm, results, searches)
    proposals = {k: _optuna_trials(spec, algorithm, k) for k in searches}
    return [_trial_record(spec, algorithm, r, reference, proposals) for r in results]


def _tally(outcome: TuneOutcome) -> str:
    """How a tuning phase went: "2 ran all epochs, 2 stopped early; best val 75.4% (3ee199ea)"."""
    counts = {
        "ran all epochs": outcome.count(TrialEnd.COMPLETED),
        "reached the training-time cap": outcome.count(TrialEnd.TIME_CAP),
        "stopped early": outcome.count(TrialEnd.EARLY_STOPPED),
        "cut by the time budget": outcome.count(TrialEnd.TIME_BUDGET),
        "failed": outcome.count(TrialEnd.FAILED),
    }
    text = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    scored = [t for t in outcome.trials if t.best_val_acc is not None]
    if scored:
        best = max(scored, key=lambda t: t.best_val_acc)
        text += f"; best val {100 * best.best_val_acc:.1f}% ({best.trial_id})"
    return text


def _run_config(spec: StudySpec, name: str, callbacks: list, verbose: bool) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=spec.study_dir,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1 if verbose else 0,  # 0: no status tables (hpo.progress prints the events)
    )


def _trial_record(
    spec: StudySpec,
    algorithm: str,
    result,
    reference,
    proposals: dict[int, dict[int, optuna.trial.FrozenTrial]],
) -> TrialRecord:
    trial_id = trial_id_of(result.path)
    tuned = _tuned(result.config)
    # Its Optuna trial: the order it was proposed in, and the ranges its values were drawn from.
    match = proposals.get(result.config.get(SEARCH_KEY, 0), {}).get(result.config.get(NUMBER_KEY))
    frame = result.metrics_dataframe
    curve = [float(v) for v in frame[VAL_ACC]] if frame is not None and VAL_ACC in frame else []
    # Tune's time budget stops the trials still running without a word to the searcher (TrialEnd.TIME_BUDGET):
    # theirs are the Optuna trials left RUNNING by an experiment that was not interrupted.
    running = match is not None and match.state == optuna.trial.TrialState.RUNNING
    status = trial_end(result.metrics, spec.epochs, failed=result.error is not None, running=running)
    episodes = frame[TRAIN_EPISODES] if frame is not None and TRAIN_EPISODES in frame else []
    return TrialRecord(
        search=int(result.config.get(SEARCH_KEY, 0)),
        train_episodes=int(episodes.iloc[-1]) if len(episodes) else 0,
        algorithm=algorithm,
        trial_id=trial_id,
        number=match.number if match else UNKNOWN_ORDER,
        tuned=tuned,
        val_curve=curve,
        best_val_acc=float(max(curve)) if curve else None,
        train_seconds=float(frame[TRAIN_S].sum()) if frame is not None and TRAIN_S in frame else 0.0,
        status=status,
        reference=reference[1] if reference and is_reference(tuned, reference[0]) else "",
        ranges={}
        if match is None
        else {
            name: (float(d.low), float(d.high), bool(d.log))
            for name, d in match.distributions.items()
            if isinstance(d, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution))
        },
    )


def _optuna_trials(spec: StudySpec, algorithm: str, search: int) -> dict[int, optuna.trial.FrozenTrial]:
    """Number -> Optuna trial of one search of an algorithm."""
    try:
        study = optuna.load_study(
            study_name=optuna_study_name(spec, algorithm, search), storage=optuna_storage_url(spec)
        )
    except KeyError:
        return {}
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def _tuned(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a space chose (sampled or constant), not the ones the study fixes."""
    return {k: v for k, v in sorted(config.items()) if k not in FIXED_SETTINGS and k not in PLACE_KEYS}


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
    chosen += [
        (rank, trial)
        for rank, trial in enumerate(ranked, start=1)
        if rank > top and trial.reference and reference_gap(trial, ranked[0]) <= reference_margin
    ]
    return chosen


def replicate(
    spec: StudySpec,
    outcomes: dict[str, TuneOutcome],
    tracker: StudyTracker,
    blocks: list[tuple[int, int]],
    fit: Fit = tune.Tuner.fit,
    verbose: bool = False,
) -> list[ReplicateRecord]:
    """Retrain every search's candidates with that search's fresh seeds for the replicates' epochs (a
    trial's, unless --replicate-epochs; the limits per epoch a trial's), one Tune experiment per block of
    searches (parallel, retried and resumable like the tuning trials), each tested on the study's test
    episodes."""
    records: list[ReplicateRecord] = []
    for block in blocks:
        records += _replicate_block(spec, outcomes, tracker, block, fit, verbose)
    return records


def _replicate_block(
    spec: StudySpec,
    outcomes: dict[str, TuneOutcome],
    tracker: StudyTracker,
    block: tuple[int, int],
    fit: Fit,
    verbose: bool,
) -> list[ReplicateRecord]:
    items = []
    test_seeds = [spec.seed + r for r in range(spec.test_repeats)]  # the same test episodes for every search
    for search in range(*block):
        for seed in spec.replicate_seed_list(search):
            for algorithm, outcome in outcomes.items():
                for rank, trial in candidates(outcome.of_search(search), spec.replicate_top, spec.reference_margin):
                    settings = {
                        **spec.fixed_settings(algorithm, search),
                        **trial.tuned,
                        **spec.replicate_limits(),
                        "seed": seed,
                    }
                    settings["steps_per_epoch"] = max(1, spec.episodes_per_epoch // settings["meta_batch"])
                    items.append(
                        {
                            "algorithm": algorithm,
                            "search": search,
                            "candidate_rank": rank,
                            "source_trial": trial.trial_id,
                            "seed": seed,
                            "tuned": trial.tuned,
                            "settings": settings,
                            "test_episodes": spec.test_episodes,
                            "test_seeds": test_seeds,
                        }
                    )
    if not items:
        raise RuntimeError(f"no tuning trial reported a validation accuracy; see {spec.study_dir}")
    start = time.perf_counter()
    configurations = len(items) // spec.replicate_seeds
    say(
        f"replicate: {len(items)} runs ({configurations} configurations x {spec.replicate_seeds} fresh seeds), "
        f"{spec.final_epochs} epochs each, then the test"
    )
    name = _experiment_name(REPLICATES, block)
    experiment = f"{spec.study_dir}/{name}"
    trainable = tune.with_resources(replicate_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"replicate": tune.grid_search(items)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent, reuse_actors=True, trial_dirname_creator=trial_dirname
            ),
            run_config=_run_config(
                spec,
                name,
                [
                    tracker.replicate_callback(spec.final_epochs),
                    ProgressLines("replicate", len(items), spec.final_epochs),
                ],
                verbose,
            ),
        )
    records = []
    results = fit(tuner)
    say(f"replicate done in {duration(time.perf_counter() - start)}")
    for result in results:
        item = result.config["replicate"]
        metrics = result.metrics or {}
        if result.error is not None or "test_acc" not in metrics:
            print(
                f"warning: replicate {item['algorithm']} rank {item['candidate_rank']} seed {item['seed']} failed; "
                "it is left out of the comparison",
                file=sys.stderr,
                flush=True,
            )
            continue
        frame = result.metrics_dataframe
        with result.checkpoint.as_directory() as stored:
            episode_accs = np.load(Path(stored) / TEST_EPISODES_FILE)
        records.append(
            ReplicateRecord(
                algorithm=item["algorithm"],
                trial_id=trial_id_of(result.path),
                candidate_rank=item["candidate_rank"],
                source_trial=item["source_trial"],
                seed=item["seed"],
                tuned=item["tuned"],
                val_curve=[float(v) for v in frame[VAL_ACC]],
                best_val_acc=float(metrics[METRIC]),
                test_acc=float(metrics["test_acc"]),
                test_ci95=float(metrics["test_ci95"]),
                adapt_ms_per_task=float(metrics["adapt_ms_per_task"]),
                parameters=int(metrics["parameters"]),
                train_seconds=float(frame[TRAIN_S].sum()),
                episode_accs=episode_accs,
                search=int(item["search"]),
                train_episodes=int(metrics.get(TRAIN_EPISODES, 0)),
            )
        )
    return records


def choose_finalists(replicates: list[ReplicateRecord], searches: int = 1) -> dict[str, Finalist]:
    """Each search's final configuration of each algorithm: its candidate with the best mean validation
    accuracy over its fresh seeds (the test accuracies are never looked at here). Keyed by the name
    reports use: the algorithm, and "<algorithm> search <k>" when the study has several searches."""
    groups: dict[tuple[str, int, int], list[ReplicateRecord]] = {}
    for record in replicates:
        groups.setdefault((record.algorithm, record.search, record.candidate_rank), []).append(record)
    finalists: dict[str, Finalist] = {}
    for (algorithm, search, rank), records in sorted(groups.items()):
        records = sorted(records, key=lambda r: r.seed)
        label = algorithm if searches == 1 else f"{algorithm} search {search}"
        candidate = Finalist(algorithm, rank, records[0].source_trial, records[0].tuned, records, search, label)
        if label not in finalists or candidate.mean_val_acc > finalists[label].mean_val_acc:
            finalists[label] = candidate
    return finalists


def by_algorithm(finalists: dict[str, Finalist], algorithm: str) -> list[Finalist]:
    """An algorithm's finalists, one per search, in search order."""
    return sorted((f for f in finalists.values() if f.algorithm == algorithm), key=lambda f: f.search)


# ---- phase 3: compare --------------------------------------------------------------------------------


def compare(
    spec: StudySpec, outcomes: dict[str, TuneOutcome], finalists: dict[str, Finalist]
) -> StudyComparison | None:
    """The first two algorithms' finalists compared with the search as the unit, and search by search;
    None if it cannot be made (an algorithm without a finalist of 2 or more fresh seeds)."""
    groups = {a: [f for f in by_algorithm(finalists, a) if len(f.replicates) >= 2] for a in spec.algorithms}
    present = [a for a in spec.algorithms if groups[a]]
    if len(present) != 2:
        return None
    baseline, challenger = present
    headline = compare_search_finalists(
        baseline,
        [f.episode_matrix() for f in groups[baseline]],
        challenger,
        [f.episode_matrix() for f in groups[challenger]],
        margin=spec.equivalence_margin,
        budget=report.budget_clause(spec, outcomes),
    )
    per_search = {}
    for b in groups[baseline]:
        c = next((f for f in groups[challenger] if f.search == b.search), None)
        if c is not None:
            per_search[b.search] = compare_seeds(
                baseline,
                b.episode_matrix(),
                challenger,
                c.episode_matrix(),
                margin=spec.equivalence_margin,
                seed=spec.search_seed(b.search),
                unit="config",
            )
    return StudyComparison(headline, per_search)


# ---- phase 4: report ---------------------------------------------------------------------------------


def write_report(spec: StudySpec, results: StudyResults, tracker: StudyTracker) -> str:
    out = Path(tempfile.mkdtemp(prefix="hpo-summary-"))
    try:
        expected = expected_best_curves(results.outcomes)  # once: the plot, summary.md and MLflow
        files = report.write_files(spec, results, out, expected)
        notes, figures = [], {}
        optuna_storage = optuna_storage_url(spec)  # not `storage`: that is the module the summary is written with
        for algorithm in spec.algorithms:
            try:
                study = optuna.load_study(study_name=optuna_study_name(spec, algorithm, 0), storage=optuna_storage)
            except KeyError:
                continue
            _, study_notes = plot_optuna_study(study, out / "plots", algorithm)
            figure, note = interactive_parallel_coordinate(study, algorithm)
            if figure is not None:
                figures[f"plots/{algorithm}_parallel_coordinate.html"] = figure
            notes += study_notes + ([note] if note else [])
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        tracker.log_summary(results.comparison, results.diagnostics, files, notes, figures, expected)
        for name in ("summary.md", "summary.csv"):
            storage.write_text(f"{spec.study_dir}/{name}", (out / name).read_text())
        return (out / "summary.md").read_text()
    finally:
        shutil.rmtree(out, ignore_errors=True)
