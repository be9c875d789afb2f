"""Plain data passed between the study's phases: tune -> replicate -> compare -> report.

Nothing here knows Ray, Optuna or MLflow: the runner turns their results into these records, and
the statistics, diagnostics, plots and tracking read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from hypermaml.fitting import CAPPED, EPOCH


class TrialEnd(StrEnum):
    """How a tuning trial ended; its value is what MLflow tags and the summary show. In the order the
    summary's budget table counts them."""

    COMPLETED = "completed"  # it ran all its epochs
    # Its own training-time cap (--max-train-seconds) ended it before its last epoch: its full compute budget.
    TIME_CAP = "time_cap"
    EARLY_STOPPED = "early_stopped"  # the scheduler (ASHA) stopped it
    # The study's time budget cut it: Tune's time_budget_s stops the trials still running without telling
    # anyone which (no on_trial_complete, no searcher call), so this one end is known only afterwards,
    # as "still running when the experiment ended" (trial_end's `running`).
    TIME_BUDGET = "time_budget"
    FAILED = "failed"

    @property
    def full_budget(self) -> bool:
        """Whether it ran its whole budget: all its epochs, or all its training time."""
        return self in (TrialEnd.COMPLETED, TrialEnd.TIME_CAP)


def trial_end(
    last_result: Mapping[str, Any] | None, epochs: int, *, failed: bool = False, running: bool = False
) -> TrialEnd:
    """How a trial of `epochs` epochs ended, from its last reported epoch metrics; `failed`: it raised,
    `running`: it was still running when the experiment ended (the time budget's stop)."""
    result = last_result or {}
    if failed:
        return TrialEnd.FAILED
    if result.get(EPOCH, 0) >= epochs:
        return TrialEnd.COMPLETED
    if result.get(CAPPED):
        return TrialEnd.TIME_CAP
    return TrialEnd.TIME_BUDGET if running else TrialEnd.EARLY_STOPPED


# Keys a tuning trial's config carries to say where it belongs: its search, its number in that search's
# Optuna study and its round (hpo.rounds). Bookkeeping, not settings: the trainable drops them.
SEARCH_KEY, NUMBER_KEY, ROUND_KEY = "hpo_search", "hpo_number", "hpo_round"
PLACE_KEYS = (SEARCH_KEY, NUMBER_KEY, ROUND_KEY)


@dataclass(frozen=True)
class TrialRecord:
    """One tuning trial."""

    algorithm: str
    trial_id: str
    number: int  # 0-based order in which the searcher proposed it
    tuned: dict[str, Any]  # the values its search space chose
    val_curve: list[float]  # validation accuracy (0..1) after each epoch it ran
    best_val_acc: float | None  # None when it failed before its first epoch
    train_seconds: float  # summed meta-training time of its epochs (its compute)
    status: TrialEnd
    reference: str = ""  # the source of the published configuration, when this trial is it
    # numeric param -> (low, high, log) of the distribution it was drawn from (for boundary checks)
    ranges: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    search: int = 0  # which of the study's independent searches proposed it
    train_episodes: int = 0  # training episodes it ran (all epochs it reported)

    @property
    def epochs_run(self) -> int:
        return len(self.val_curve)


@dataclass(frozen=True)
class TuneOutcome:
    """The tuning phase of one algorithm."""

    algorithm: str
    trials: list[TrialRecord]  # in proposal order
    wall_seconds: float
    episodes_per_trial: int  # training episodes a trial gets when it runs all its epochs

    @property
    def trial_seconds(self) -> float:
        return sum(t.train_seconds for t in self.trials)

    @property
    def searches(self) -> list[int]:
        return sorted({t.search for t in self.trials})

    def of_search(self, search: int) -> TuneOutcome:
        """The same phase, restricted to one search's trials."""
        return TuneOutcome(
            self.algorithm, [t for t in self.trials if t.search == search], self.wall_seconds, self.episodes_per_trial
        )

    def count(self, status: TrialEnd) -> int:
        return sum(t.status == status for t in self.trials)


@dataclass(frozen=True)
class ReplicateRecord:
    """One fresh-seed retraining of a candidate configuration, tested on the study's test episodes."""

    algorithm: str
    trial_id: str  # its own Ray trial id (the replicate phase is a Tune experiment too)
    candidate_rank: int  # 1 = the best tuning trial by validation accuracy
    source_trial: str  # the tuning trial whose configuration this retrains
    seed: int  # its training seed (never the tuning seed)
    tuned: dict[str, Any]
    val_curve: list[float]
    best_val_acc: float
    test_acc: float
    test_ci95: float  # over its test episodes, conditional on this trained network
    adapt_ms_per_task: float
    parameters: int
    train_seconds: float
    episode_accs: np.ndarray  # [E] per-episode test accuracy, the same episodes for every replicate
    search: int = 0  # the search whose candidate it retrains
    train_episodes: int = 0


@dataclass(frozen=True)
class Finalist:
    """An algorithm's final configuration: the candidate with the best mean validation accuracy over
    its fresh seeds (the test split never chooses)."""

    algorithm: str
    candidate_rank: int
    source_trial: str
    tuned: dict[str, Any]
    replicates: list[ReplicateRecord]  # its fresh seeds, in seed order
    search: int = 0  # the search that found it
    label: str = ""  # how reports name it: the algorithm, with the search when a study has several

    @property
    def name(self) -> str:
        return self.label or self.algorithm

    @property
    def mean_test_acc(self) -> float:
        return float(np.mean([r.test_acc for r in self.replicates]))

    @property
    def mean_val_acc(self) -> float:
        return float(np.mean([r.best_val_acc for r in self.replicates]))

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.replicates]

    def episode_matrix(self) -> np.ndarray:
        """[seeds, episodes] test accuracies."""
        return np.stack([r.episode_accs for r in self.replicates])


def compared_epochs(reference: TrialRecord, best: TrialRecord) -> int:
    """The epochs both ran: an early-stopped reference is compared at its last epoch, not with a full run."""
    return min(reference.epochs_run, best.epochs_run)


def reference_gap(reference: TrialRecord, best: TrialRecord) -> float:
    """Points by which the best trial's validation accuracy leads the reference's after `compared_epochs`."""
    epochs = compared_epochs(reference, best)
    return 100 * (max(best.val_curve[:epochs]) - max(reference.val_curve[:epochs]))


@dataclass(frozen=True)
class StudyComparison:
    """The head-to-head: the headline over searches (hpo.stats.SearchFinalistComparison: the search is the
    unit, or the configurations when an algorithm has one search), and each search's own comparison of
    its two finalists over their fresh seeds (hpo.stats.SeedComparison, kinds "config_..."), secondary."""

    headline: Any
    per_search: dict[int, Any]  # search -> its configuration-level comparison


@dataclass(frozen=True)
class StudyResults:
    """What the phases produced, as the report reads it."""

    outcomes: dict[str, TuneOutcome]  # algorithm -> its tuning phase
    replicates: list[ReplicateRecord]
    finalists: dict[str, Finalist]
    comparison: StudyComparison | None  # None when there is nothing to compare
    diagnostics: list[Any]  # hpo.diagnostics.Diagnostic, in the order they are shown
