"""hpo.diagnostics: each check fires just past its threshold, with the right key and numbers, and not just before it."""

import dataclasses
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from hpo.diagnostics import Diagnostic, diagnose
from hpo.records import Finalist, ReplicateRecord, TrialEnd, TrialRecord, TuneOutcome

GRACE, EPOCHS = 1, 3
T_975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (3 seeds)
T_975_DF3 = 3.182446305284263  # ... with 3 degrees of freedom (4 episodes)
RANGES = {
    "outer_lr": (1e-4, 1e-2, True),
    "inner_steps": (1, 5, False),  # a small int range: only its ends are edges
    "hn_hidden": (16, 512, False),  # 497 values: the 5% rule
    "dropout": (0.0, 0.5, False),
}
MIDDLE = {"outer_lr": 1e-3, "inner_steps": 3, "hn_hidden": 256, "dropout": 0.25, "aggregation": "mean"}
# Every seed tests on the same 4 episodes; each replicate's per-episode accuracies deviate from its
# test accuracy by these (fractions), so the seed-mean accuracy per episode has sd 2/sqrt(3) points.
EPISODE_DEVIATIONS = np.array([-0.01, -0.01, 0.01, 0.01])


def trial(algorithm, number, acc, status=TrialEnd.COMPLETED, epochs=EPOCHS):
    return TrialRecord(
        algorithm=algorithm,
        trial_id=f"{algorithm}_{number:05d}",
        number=number,
        tuned=dict(MIDDLE),
        val_curve=[acc] * epochs,
        best_val_acc=acc,
        train_seconds=10.0,
        status=status,
        ranges=dict(RANGES),
    )


def outcome(algorithm, trials):
    return TuneOutcome(algorithm=algorithm, trials=trials, wall_seconds=100.0, episodes_per_trial=1000)


def healthy_outcome(algorithm, n=10):
    """The best trial (#0, 0.6) comes first, every later one scores 0.5, and all run every epoch."""
    return outcome(algorithm, [trial(algorithm, number, 0.6 if number == 0 else 0.5) for number in range(n)])


def replicate(algorithm, seed, val_acc, test_acc, epochs=EPOCHS):
    return ReplicateRecord(
        algorithm=algorithm,
        trial_id=f"{algorithm}_seed{seed}",
        candidate_rank=1,
        source_trial=f"{algorithm}_00000",
        seed=seed,
        tuned=dict(MIDDLE),
        val_curve=[val_acc] * epochs,
        best_val_acc=val_acc,
        test_acc=test_acc,
        # Large per-replicate CIs: the drop check must not use them (see test_val_test_drop_...).
        test_ci95=0.05,
        adapt_ms_per_task=1.0,
        parameters=1000,
        train_seconds=10.0,
        episode_accs=test_acc + EPISODE_DEVIATIONS,
    )


def finalist(algorithm, tuned=None, val_acc=0.52, test_accs=(0.50, 0.52, 0.54), source="00000"):
    replicates = [replicate(algorithm, seed, val_acc, acc) for seed, acc in enumerate(test_accs, start=100)]
    return Finalist(
        algorithm=algorithm,
        candidate_rank=1,
        source_trial=f"{algorithm}_{source}",
        tuned=dict(MIDDLE) if tuned is None else tuned,
        replicates=replicates,
    )


def comparison(effect=3.0, baseline_sd=1.0, challenger_sd=1.0):
    return SimpleNamespace(
        baseline="maml",
        challenger="hypermaml",
        verdict=SimpleNamespace(effect=effect, ci_low=effect - 1, ci_high=effect + 1),
        baseline_seed_sd=baseline_sd,
        challenger_seed_sd=challenger_sd,
    )


HEALTHY_COMPARISON = comparison()


def study(outcomes=None, finalists=None, compared=HEALTHY_COMPARISON):
    """diagnose() on a healthy two-algorithm study, with the given parts replaced."""
    outcomes = {"maml": healthy_outcome("maml"), "hypermaml": healthy_outcome("hypermaml"), **(outcomes or {})}
    finalists = {"maml": finalist("maml"), "hypermaml": finalist("hypermaml"), **(finalists or {})}
    return diagnose(outcomes, finalists, {} if compared is None else {0: compared}, GRACE, EPOCHS)


def only(diagnostics):
    assert len(diagnostics) == 1, diagnostics
    assert diagnostics[0].message.startswith("warning: ") and "\n" not in diagnostics[0].message
    return diagnostics[0]


def test_a_healthy_study_has_no_diagnostics():
    assert study() == []
    assert study(compared=None) == []


# --- 1. boundary ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("outer_lr", 0.0080),  # log width ln(100): 5% of it is a factor 1.259, so the top edge starts at 0.00794
        ("outer_lr", 1.25e-4),  # ... and the bottom edge ends at 1.259e-4
        ("inner_steps", 5),
        ("inner_steps", 1),
        ("hn_hidden", 490),  # 5% of 496 is 24.8: 512 - 490 = 22
        ("dropout", 0.48),  # 5% of 0.5 is 0.025: 0.5 - 0.48 = 0.02
    ],
)
def test_boundary_fires_for_a_value_just_inside_the_edge(name, value):
    diagnostic = only(study(finalists={"maml": finalist("maml", {**MIDDLE, name: value})}))

    low, high, _ = RANGES[name]
    assert diagnostic.key == "diagnostic.boundary.maml"
    assert diagnostic.message == (
        f"warning: maml's final {name}={value:.4g} is at the edge of its range "
        f"[{low:.4g}, {high:.4g}]; the optimum may lie outside it"
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("outer_lr", 0.0078),
        ("outer_lr", 1.27e-4),
        ("inner_steps", 4),  # 5% of its width is under one step: only the end values are edges
        ("inner_steps", 2),
        ("hn_hidden", 480),  # 512 - 480 = 32 > 24.8
        ("dropout", 0.47),  # 0.5 - 0.47 = 0.03 > 0.025
    ],
)
def test_boundary_is_quiet_for_a_value_just_outside_the_edge(name, value):
    assert study(finalists={"maml": finalist("maml", {**MIDDLE, name: value})}) == []


def test_boundary_names_every_edge_value_in_one_diagnostic_per_algorithm():
    tuned = {**MIDDLE, "outer_lr": 0.0098, "inner_steps": 1}

    diagnostic = only(study(finalists={"hypermaml": finalist("hypermaml", tuned)}))

    assert diagnostic.key == "diagnostic.boundary.hypermaml"
    assert diagnostic.message == (
        "warning: hypermaml's final outer_lr=0.0098 is at the edge of its range [0.0001, 0.01], "
        "inner_steps=1 is at the edge of its range [1, 5]; the optimum may lie outside them"
    )


def test_boundary_reads_the_ranges_of_the_finalists_source_trial():
    # Trial #3 drew outer_lr from a wider range, in which 0.0098 is well inside.
    trials = healthy_outcome("maml").trials
    trials[3] = dataclasses.replace(trials[3], ranges={**RANGES, "outer_lr": (1e-4, 1.0, True)})
    edge = {**MIDDLE, "outer_lr": 0.0098}

    assert (
        study(outcomes={"maml": outcome("maml", trials)}, finalists={"maml": finalist("maml", edge, source="00003")})
        == []
    )
    assert (
        only(
            study(
                outcomes={"maml": outcome("maml", trials)}, finalists={"maml": finalist("maml", edge, source="00004")}
            )
        ).key
        == "diagnostic.boundary.maml"
    )


def test_boundary_ignores_values_without_a_range_and_finalists_without_their_source_trial():
    assert study(finalists={"maml": finalist("maml", {**MIDDLE, "aggregation": 1e-4, "unranged": 0.0})}) == []
    assert study(finalists={"maml": finalist("maml", {**MIDDLE, "outer_lr": 0.01}, source="99999")}) == []


# --- 2. first rung ------------------------------------------------------------------------------------


def stopped_early(algorithm, stopped_at):
    """A healthy outcome whose trials #1.. are early-stopped after the given numbers of epochs."""
    trials = healthy_outcome(algorithm).trials
    for number, epochs in enumerate(stopped_at, start=1):
        trials[number] = trial(algorithm, number, 0.5, TrialEnd.EARLY_STOPPED, epochs=epochs)
    return outcome(algorithm, trials)


def test_first_rung_fires_when_half_the_trials_stopped_at_the_grace_period():
    diagnostic = only(study(outcomes={"hypermaml": stopped_early("hypermaml", [1, 1, 1, 1, 1])}))

    assert diagnostic.key == "diagnostic.first_rung.hypermaml"
    assert diagnostic.message == (
        "warning: 5 of 10 hypermaml trials were stopped at the first rung (epoch ≤ 1); "
        "the search mostly compared early learning speed"
    )


def test_first_rung_is_quiet_below_half_and_for_trials_stopped_at_later_rungs():
    assert study(outcomes={"hypermaml": stopped_early("hypermaml", [1, 1, 1, 1])}) == []
    assert study(outcomes={"hypermaml": stopped_early("hypermaml", [1, 1, 1, 1, 2])}) == []


# --- 3. late best -------------------------------------------------------------------------------------


def best_at(algorithm, number, acc=0.7):
    trials = healthy_outcome(algorithm).trials
    trials[number] = trial(algorithm, number, acc)
    return outcome(algorithm, trials)


def test_late_best_fires_for_a_best_trial_in_the_last_20_percent():
    diagnostic = only(study(outcomes={"maml": best_at("maml", 8)}))

    assert diagnostic.key == "diagnostic.late_best.maml"
    assert "best tuning trial maml_00008 (70.00%) was proposed as number 8 of 10 (0-based)" in diagnostic.message
    assert "not converged" in diagnostic.message


def test_late_best_is_quiet_just_before_the_last_20_percent_and_for_a_late_tie():
    assert study(outcomes={"maml": best_at("maml", 7)}) == []
    assert study(outcomes={"maml": best_at("maml", 9, acc=0.6)}) == []  # ties #0, which came first


def test_late_best_orders_by_proposal_number_not_list_order():
    reversed_trials = list(reversed(best_at("maml", 8).trials))

    assert only(study(outcomes={"maml": outcome("maml", reversed_trials)})).key == "diagnostic.late_best.maml"


# --- 4. seed spread -----------------------------------------------------------------------------------


@pytest.mark.parametrize("effect", [1.0, -1.0])
def test_seed_spread_fires_when_a_seed_sd_exceeds_the_effect(effect):
    diagnostic = only(study(compared=comparison(effect=effect, baseline_sd=1.01, challenger_sd=0.5)))

    assert diagnostic.key == "diagnostic.seed_spread"
    assert diagnostic.message == (
        "warning: the seed-to-seed sd (maml 1.01, hypermaml 0.50 points) exceeds the effect "
        "|hypermaml − maml| = 1.00 points; other seeds could change the answer"
    )


def test_seed_spread_is_quiet_when_both_sds_are_within_the_effect_or_unknown():
    assert study(compared=comparison(effect=-1.0, baseline_sd=0.99, challenger_sd=0.99)) == []
    assert study(compared=comparison(effect=1.0, baseline_sd=math.nan, challenger_sd=math.nan)) == []


# --- 5. validation -> test drop ------------------------------------------------------------------------

# Test accuracies 50, 52, 54 points: seed term t(2) * 2 / sqrt(3); the seed-mean per-episode accuracies
# 51, 51, 53, 53: episode term t(3) * (2 / sqrt(3)) / sqrt(4).
HALF_WIDTH = math.hypot(T_975_DF2 * 2 / math.sqrt(3), T_975_DF3 * (2 / math.sqrt(3)) / 2)


def test_val_test_drop_fires_just_past_the_half_width_of_the_test_mean():
    val_acc = (52 + HALF_WIDTH + 0.01) / 100

    diagnostic = only(study(finalists={"hypermaml": finalist("hypermaml", val_acc=val_acc)}))

    assert diagnostic.key == "diagnostic.val_test_drop.hypermaml"
    numbers = re.fullmatch(
        r"warning: hypermaml's final configuration drops (\d+\.\d\d) points from validation \((\d+\.\d\d)%\) to test "
        r"\((\d+\.\d\d)%\), more than the (\d+\.\d\d)-point 95% CI half-width of its test mean; "
        r"its validation score overstates it",
        diagnostic.message,
    )
    assert numbers, diagnostic.message
    drop, val, test, half = (float(number) for number in numbers.groups())
    assert drop == round(HALF_WIDTH + 0.01, 2) and half == round(HALF_WIDTH, 2) == 5.30
    assert val == round(100 * val_acc, 2) and test == 52.0


def test_val_test_drop_is_quiet_just_inside_the_half_width():
    # Summing the replicates' own test_ci95 (5 points each, as if their episodes were independent)
    # would give a wider half-width than this one; the shared episodes are counted once instead.
    assert study(finalists={"hypermaml": finalist("hypermaml", val_acc=(52 + HALF_WIDTH - 0.01) / 100)}) == []
    assert study(finalists={"hypermaml": finalist("hypermaml", val_acc=0.40)}) == []  # test above validation


def test_val_test_drop_with_one_seed_uses_the_episode_term_alone():
    episode_half = T_975_DF3 * (2 / math.sqrt(3)) / 2

    assert study(finalists={"maml": finalist("maml", val_acc=(50 + episode_half - 0.01) / 100, test_accs=(0.5,))}) == []
    fired = only(
        study(finalists={"maml": finalist("maml", val_acc=(50 + episode_half + 0.01) / 100, test_accs=(0.5,))})
    )
    assert fired.key == "diagnostic.val_test_drop.maml"
    assert f"the {episode_half:.2f}-point 95% CI" in fired.message


# --- 6. time-capped finalist --------------------------------------------------------------------------


def capped_finalist(algorithm, epochs_per_seed):
    replicates = [
        replicate(algorithm, seed, 0.52, 0.52, epochs=epochs) for seed, epochs in enumerate(epochs_per_seed, 100)
    ]
    return dataclasses.replace(finalist(algorithm), replicates=replicates)


@pytest.mark.parametrize("epochs_per_seed, span", [((1, 1, 1), "1"), ((2, 3, 2), "2-3")])
def test_time_capped_fires_when_a_final_replicate_ran_fewer_than_the_epochs(epochs_per_seed, span):
    diagnostic = only(study(finalists={"maml": capped_finalist("maml", epochs_per_seed)}))
    assert diagnostic.key == "diagnostic.time_capped.maml"
    assert diagnostic.message == (
        f"warning: maml's final configuration trained {span} of 3 epochs: its training-time "
        "cap ended it (equal compute); with more time per network it may do better"
    )


def test_time_capped_is_quiet_when_every_final_replicate_ran_all_epochs():
    assert study(finalists={"maml": capped_finalist("maml", (3, 3, 3))}) == []


# --- all together -------------------------------------------------------------------------------------


def test_diagnostics_come_check_by_check_then_algorithm_by_algorithm_with_unique_keys():
    edge = {**MIDDLE, "outer_lr": 0.01}
    diagnostics = study(
        outcomes={"maml": stopped_early("maml", [1] * 6), "hypermaml": best_at("hypermaml", 9)},
        finalists={"maml": finalist("maml", edge, val_acc=0.7), "hypermaml": finalist("hypermaml", edge)},
        compared=comparison(effect=0.5),
    )

    assert all(isinstance(diagnostic, Diagnostic) for diagnostic in diagnostics)
    assert [diagnostic.key for diagnostic in diagnostics] == [
        "diagnostic.boundary.maml",
        "diagnostic.boundary.hypermaml",
        "diagnostic.first_rung.maml",
        "diagnostic.late_best.hypermaml",
        "diagnostic.seed_spread",
        "diagnostic.val_test_drop.maml",
    ]
