"""Warnings about how far a study's answer can be trusted, from its records alone.

Each check looks for one known way a tuned comparison misleads: a search range that cut off the
optimum, a search decided by the first ASHA rung, a search still improving when it stopped, seeds
that disagree more than the algorithms do, a final configuration whose validation score its
test score does not bear out, and a final configuration that its training-time cap stopped before
its last epoch. A check that fires gives one `Diagnostic`, whose key the caller logs
as an MLflow tag and whose message is one line for the log and the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.formatting import compact
from hpo.records import Finalist, TrialEnd, TrialRecord, TuneOutcome
from hpo.stats import SeedComparison, t_half_width

# A tuned value within this fraction of its range's width from an end (in log space for log ranges)
# is "at the edge": the search pushed against the range and the optimum may lie beyond it. For an int
# range of 20 values or fewer, 5% of the width is under one step, so only the end values themselves
# are at the edge; no separate rule is needed for small int ranges.
EDGE_FRACTION = 0.05


@dataclass(frozen=True)
class Diagnostic:
    key: str  # MLflow tag name, "diagnostic.<check>[.<algorithm>]", unique within one diagnose() result
    message: str  # one line, starting with "warning: "


def diagnose(
    outcomes: dict[str, TuneOutcome],
    finalists: dict[str, Finalist],
    comparisons: dict[int, SeedComparison],
    grace_period: int,
    epochs: int,
) -> list[Diagnostic]:
    """Every check that fires, check by check in the order of the module docstring, and within a
    check by algorithm (and search) in the order of `outcomes` (tuning checks) or `finalists` (the
    others). `comparisons` holds each search's comparison of its two finalists (empty when there is
    nothing to compare). With several searches, each search is checked on its own and the keys end in
    ".search<k>"."""
    several = any(len(o.searches) > 1 for o in outcomes.values())
    searches = [(o.of_search(k), f".search{k}" if several else "") for o in outcomes.values() for k in o.searches]
    found: list[Diagnostic | None] = []
    found += [_boundary(f, outcomes.get(f.algorithm), _suffix(f, several)) for f in finalists.values()]
    found += [_first_rung(outcome, grace_period, suffix) for outcome, suffix in searches]
    found += [_late_best(outcome, suffix) for outcome, suffix in searches]
    found += [_seed_spread(c, f".search{k}" if several else "") for k, c in sorted(comparisons.items())]
    found += [_val_test_drop(f, _suffix(f, several)) for f in finalists.values()]
    found += [_time_capped(f, epochs, _suffix(f, several)) for f in finalists.values()]
    return [diagnostic for diagnostic in found if diagnostic is not None]


def _suffix(finalist: Finalist, several: bool) -> str:
    return f".search{finalist.search}" if several else ""


def _words(suffix: str) -> str:
    """ ".search2" -> " search 2", for messages."""
    return f" search {suffix.removeprefix('.search')}" if suffix else ""


def _boundary(finalist: Finalist, outcome: TuneOutcome | None, suffix: str = "") -> Diagnostic | None:
    """Tuned numeric values of the final configuration at an edge of the range they were drawn from.

    The ranges are those recorded on the finalist's source trial; without that trial (or outside its
    ranges: categorical and constant settings) there is no range to judge against.
    """
    source = _trial(outcome, finalist.source_trial)
    if source is None:
        return None
    edges = []
    for name, value in finalist.tuned.items():
        if name in source.ranges and _at_edge(value, *source.ranges[name]):
            low, high, _ = source.ranges[name]
            edges.append(f"{name}={compact(value)} is at the edge of its range [{compact(low)}, {compact(high)}]")
    if not edges:
        return None
    it = "it" if len(edges) == 1 else "them"
    return Diagnostic(
        key=f"diagnostic.boundary.{finalist.algorithm}{suffix}",
        message=f"warning: {finalist.name}'s final {', '.join(edges)}; the optimum may lie outside {it}",
    )


def _at_edge(value: Any, low: float, high: float, log: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False  # not a numeric value (a categorical choice that happens to share the name)
    if log:
        if min(value, low, high) <= 0:
            return False  # no log scale to measure on; optuna never draws such values
        value, low, high = math.log(value), math.log(low), math.log(high)
    width = high - low
    if width <= 0:
        return False  # a single-value range: nothing was searched, so there is no edge to push against
    return value - low <= EDGE_FRACTION * width or high - value <= EDGE_FRACTION * width


def _first_rung(outcome: TuneOutcome, grace_period: int, suffix: str = "") -> Diagnostic | None:
    """Half or more of the trials stopped by ASHA at its first rung: the search then ranked
    configurations mostly by how fast they learn in the first epochs, not by where they end up."""
    total = len(outcome.trials)
    stopped = sum(t.status == TrialEnd.EARLY_STOPPED and t.epochs_run <= grace_period for t in outcome.trials)
    if total == 0 or 2 * stopped < total:
        return None
    return Diagnostic(
        key=f"diagnostic.first_rung.{outcome.algorithm}{suffix}",
        message=(
            f"warning: {stopped} of {total} {outcome.algorithm}{_words(suffix)} trials were stopped at the first rung "
            f"(epoch ≤ {grace_period}); the search mostly compared early learning speed"
        ),
    )


def _late_best(outcome: TuneOutcome, suffix: str = "") -> Diagnostic | None:
    """The best trial came among the last 20% of proposals: trials with number ≥ 0.8·n, where n is
    the number of trials (numbers are 0-based; of 10 trials, numbers 8 and 9). A search still finding
    its best at the end would likely have improved with more trials.

    Ties go to the earliest trial: an equal score found late is no sign the search was improving.
    """
    in_order = sorted(outcome.trials, key=lambda t: t.number)
    scored = [(t, acc) for t in in_order if (acc := t.best_val_acc) is not None]
    if not scored:
        return None
    best, acc = max(scored, key=lambda pair: pair[1])  # max keeps the first of equal scores
    total = len(outcome.trials)
    if 5 * best.number < 4 * total:  # number < 0.8·n, in integers so that 0.8·n is exact
        return None
    return Diagnostic(
        key=f"diagnostic.late_best.{outcome.algorithm}{suffix}",
        message=(
            f"warning: {outcome.algorithm}{_words(suffix)}'s best tuning trial {best.trial_id} "
            f"({100 * acc:.2f}%) was proposed as number {best.number} of {total} (0-based), "
            f"in the last 20%; the search had not converged and more trials may find better"
        ),
    )


def _seed_spread(comparison: SeedComparison, suffix: str = "") -> Diagnostic | None:
    """Seed-to-seed standard deviation of either algorithm larger than the effect between them: the
    effect is then within what retraining with another seed changes, and a few seeds decide it."""
    spreads = [sd for sd in (comparison.baseline_seed_sd, comparison.challenger_seed_sd) if math.isfinite(sd)]
    effect = abs(comparison.verdict.effect)
    if not spreads or not max(spreads) > effect:  # written so that a nan effect never fires
        return None
    return Diagnostic(
        key=f"diagnostic.seed_spread{suffix}",
        message=(
            f"warning: {_words(suffix).strip() + ': ' if suffix else ''}the seed-to-seed sd ({comparison.baseline} {comparison.baseline_seed_sd:.2f}, "
            f"{comparison.challenger} {comparison.challenger_seed_sd:.2f} points) exceeds the effect "
            f"|{comparison.challenger} − {comparison.baseline}| = {effect:.2f} points; "
            "other seeds could change the answer"
        ),
    )


def _val_test_drop(finalist: Finalist, suffix: str = "") -> Diagnostic | None:
    """Mean validation accuracy over the fresh seeds above the mean test accuracy by more than the
    test mean's 95% CI half-width: the validation score, which chose this configuration, overstates it.

    drop = 100 · (mean best_val_acc − mean test_acc) over the replicates, in points.
    half-width = sqrt(seed² + episode²), the two independent sources of error in the test mean:
      seed    = t(0.975, S−1) · sd(test_acc over seeds) / sqrt(S)   (0 with one seed: no spread known)
      episode = t(0.975, E−1) · sd(seed-mean accuracy per episode) / sqrt(E)
    The episode term is computed on the per-episode accuracies averaged over seeds, not from the
    replicates' own test_ci95: every replicate is tested on the same E episodes, so their episode
    errors are shared and do not shrink by sqrt(S) when the seeds are averaged.
    """
    replicates = finalist.replicates
    if not replicates:
        return None
    tests = 100 * np.asarray([r.test_acc for r in replicates], dtype=float)
    drop = 100 * finalist.mean_val_acc - float(tests.mean())
    episodes = 100 * finalist.episode_matrix().mean(axis=0)
    half_width = math.hypot(t_half_width(tests, fewer_than_two=0.0), t_half_width(episodes, fewer_than_two=0.0))
    if not drop > half_width:
        return None
    return Diagnostic(
        key=f"diagnostic.val_test_drop.{finalist.algorithm}{suffix}",
        message=(
            f"warning: {finalist.name}'s final configuration drops {drop:.2f} points from validation "
            f"({100 * finalist.mean_val_acc:.2f}%) to test ({tests.mean():.2f}%), more than the "
            f"{half_width:.2f}-point 95% CI half-width of its test mean; its validation score overstates it"
        ),
    )


def _time_capped(finalist: Finalist, epochs: int, suffix: str = "") -> Diagnostic | None:
    """Replicates of the final configuration that ran fewer than the study's `epochs`: their
    training-time cap (--max-train-seconds) ended them (failed replicates are not in a Finalist). The
    comparison is then at equal compute, and this configuration was judged on fewer episodes than it
    would have had without the cap."""
    ran = sorted(len(r.val_curve) for r in finalist.replicates)
    if not ran or ran[0] >= epochs:
        return None
    span = str(ran[0]) if ran[0] == ran[-1] else f"{ran[0]}-{ran[-1]}"
    return Diagnostic(
        key=f"diagnostic.time_capped.{finalist.algorithm}{suffix}",
        message=(
            f"warning: {finalist.name}'s final configuration trained {span} of {epochs} epochs: its "
            "training-time cap ended it (equal compute); with more time per network it may do better"
        ),
    )


def _trial(outcome: TuneOutcome | None, trial_id: str) -> TrialRecord | None:
    if outcome is None:
        return None
    return next((t for t in outcome.trials if t.trial_id == trial_id), None)
