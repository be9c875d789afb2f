"""hpo.plots: the anytime curve's values, and that each saved plot draws exactly the records' numbers."""

import math
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import ErrorbarContainer

from hpo.plots import anytime_curve, plot_anytime, plot_seed_results
from hpo.records import Finalist, ReplicateRecord, TrialEnd, TrialRecord, TuneOutcome

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (3 seeds)


def trial(algorithm, number, acc, seconds, status=TrialEnd.COMPLETED, reference=""):
    return TrialRecord(
        algorithm=algorithm,
        trial_id=f"{algorithm}_{number:05d}",
        number=number,
        tuned={"inner_lr": 0.1},
        val_curve=[] if acc is None else [acc],
        best_val_acc=acc,
        train_seconds=seconds,
        status=status,
        reference=reference,
    )


def outcome(algorithm, trials):
    return TuneOutcome(algorithm=algorithm, trials=trials, wall_seconds=100.0, episodes_per_trial=1000)


def replicate(algorithm, seed, test_acc, rank=1):
    return ReplicateRecord(
        algorithm=algorithm,
        trial_id=f"{algorithm}_seed{seed}",
        candidate_rank=rank,
        source_trial=f"{algorithm}_00001",
        seed=seed,
        tuned={},
        val_curve=[0.7],
        best_val_acc=0.7,
        test_acc=test_acc,
        test_ci95=0.01,
        adapt_ms_per_task=1.0,
        parameters=1000,
        train_seconds=10.0,
        episode_accs=np.full(4, test_acc),
    )


def finalist(algorithm, seeds_and_accs, rank=1):
    replicates = [replicate(algorithm, seed, acc, rank) for seed, acc in seeds_and_accs]
    return Finalist(
        algorithm=algorithm, candidate_rank=rank, source_trial=f"{algorithm}_00001", tuned={}, replicates=replicates
    )


def maml_outcome():
    """Listed out of proposal order; the first proposal fails before any accuracy, a later one fails too.

    In proposal order (seconds, accuracy): #0 (5, failed), #1 (10, 0.5), #2 (20, 0.25), #3 (7, failed),
    #4 (8, 0.625).
    """
    return outcome(
        "maml",
        [
            trial("maml", 2, 0.25, 20.0, TrialEnd.EARLY_STOPPED),
            trial("maml", 0, None, 5.0, TrialEnd.FAILED),
            trial("maml", 4, 0.625, 8.0),
            trial("maml", 3, None, 7.0, TrialEnd.FAILED),
            trial("maml", 1, 0.5, 10.0, reference="Finn et al. 2017"),
        ],
    )


# Hand-computed from maml_outcome: the failed first proposal adds 5 s but no point; the later
# failure adds 7 s and carries the best (50); the running max ignores the worse 0.25.
MAML_X = [15.0, 35.0, 42.0, 50.0]
MAML_Y = [50.0, 50.0, 50.0, 62.5]


def assert_png_with_content(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).std() > 0.01


def test_anytime_curve_orders_by_proposal_carries_the_best_over_failures_and_skips_points_before_any():
    x, y = anytime_curve(maml_outcome())

    assert x.tolist() == MAML_X
    assert y.tolist() == MAML_Y


def test_anytime_curve_of_only_failed_trials_is_empty():
    x, y = anytime_curve(
        outcome("maml", [trial("maml", 0, None, 3.0, TrialEnd.FAILED), trial("maml", 1, None, 4.0, TrialEnd.FAILED)])
    )

    assert x.shape == (0,) and y.shape == (0,)


def test_plot_anytime_draws_each_curve_as_a_post_step_and_marks_the_reference(tmp_path):
    hypermaml = outcome("hypermaml", [trial("hypermaml", 0, 0.75, 30.0), trial("hypermaml", 1, 0.875, 12.0)])
    path = tmp_path / "plots" / "anytime.png"

    figure = plot_anytime({"maml": maml_outcome(), "hypermaml": hypermaml}, path)

    assert_png_with_content(path)
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.lines}
    assert set(lines) == {"maml (5 trials)", "hypermaml (2 trials)"}
    assert list(lines["maml (5 trials)"].get_xdata()) == MAML_X
    assert list(lines["maml (5 trials)"].get_ydata()) == MAML_Y
    assert list(lines["hypermaml (2 trials)"].get_xdata()) == [30.0, 42.0]
    assert list(lines["hypermaml (2 trials)"].get_ydata()) == [75.0, 87.5]
    assert all(line.get_drawstyle() == "steps-post" and line.get_marker() == "o" for line in lines.values())
    # The reference is maml's proposal #1: it ends after 5 + 10 s of compute, at its own 50%.
    (reference,) = [c for c in axes.collections if isinstance(c, PathCollection)]
    assert reference.get_offsets().tolist() == [[15.0, 50.0]]
    assert reference.get_label() == "maml reference (Finn et al. 2017)"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["maml (5 trials)", "maml reference (Finn et al. 2017)", "hypermaml (2 trials)"]
    assert axes.get_xlabel() == "cumulative trial compute (trial-seconds)"
    assert axes.get_ylabel() == "best validation accuracy so far (%)"


def test_plot_anytime_marks_no_reference_that_failed_and_draws_an_all_failed_algorithm_empty(tmp_path):
    failed_reference = outcome(
        "maml", [trial("maml", 0, None, 5.0, TrialEnd.FAILED, reference="paper"), trial("maml", 1, 0.5, 5.0)]
    )
    all_failed = outcome("hypermaml", [trial("hypermaml", 0, None, 5.0, TrialEnd.FAILED)])

    figure = plot_anytime({"maml": failed_reference, "hypermaml": all_failed}, tmp_path / "anytime.png")

    axes = figure.axes[0]
    assert not [c for c in axes.collections if isinstance(c, PathCollection)]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.lines}
    assert curves == {"maml (2 trials)": ([10.0], [50.0]), "hypermaml (1 trials)": ([], [])}


def test_plot_seed_results_draws_every_seed_and_the_t_interval_of_the_mean_over_seeds(tmp_path):
    finalists = {
        "maml": finalist("maml", [(11, 0.5), (12, 0.55), (13, 0.6)], rank=1),
        "hypermaml": finalist("hypermaml", [(11, 0.625), (12, 0.75)], rank=2),
    }
    comparison = SimpleNamespace(
        baseline="maml",
        challenger="hypermaml",
        verdict=SimpleNamespace(effect=1.24, ci_low=-0.51, ci_high=2.94),
        baseline_seed_sd=5.0,
        challenger_seed_sd=8.8,
    )
    path = tmp_path / "seeds.png"

    figure = plot_seed_results(finalists, comparison, path)

    assert_png_with_content(path)
    axes = figure.axes[0]
    dots = [c for c in axes.collections if isinstance(c, PathCollection)]
    assert len(dots) == 2
    # Every seed at its own accuracy in points, spread evenly around its algorithm's position.
    np.testing.assert_allclose(dots[0].get_offsets(), [[-0.08, 50.0], [0.0, 55.0], [0.08, 60.0]], atol=1e-12)
    np.testing.assert_allclose(dots[1].get_offsets(), [[0.92, 62.5], [1.08, 75.0]], atol=1e-12)
    assert [text.get_text() for text in axes.texts] == ["11", "12", "13", "11", "12"]

    bars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    means = [(list(bar.lines[0].get_xdata()), list(bar.lines[0].get_ydata())) for bar in bars]
    np.testing.assert_allclose(means, [([0.25], [55.0]), ([1.25], [68.75])])
    # maml: sd 5 over 3 seeds; hypermaml: sd 12.5/sqrt(2) over 2 seeds (t = 12.706).
    maml_half = T_975_DF2 * 5.0 / math.sqrt(3)
    hypermaml_half = 12.706204736174698 * (12.5 / math.sqrt(2)) / math.sqrt(2)
    segments = [bar.lines[2][0].get_segments()[0] for bar in bars]
    assert all(isinstance(bar.lines[2][0], LineCollection) for bar in bars)
    np.testing.assert_allclose(segments[0], [[0.25, 55.0 - maml_half], [0.25, 55.0 + maml_half]])
    np.testing.assert_allclose(segments[1], [[1.25, 68.75 - hypermaml_half], [1.25, 68.75 + hypermaml_half]])

    assert [label.get_text() for label in axes.get_xticklabels()] == ["maml\nrank 1", "hypermaml\nrank 2"]
    assert axes.get_ylabel() == "test accuracy (%)"
    assert axes.get_title().splitlines()[1] == "hypermaml − maml = +1.2 points (95% CI −0.5 to +2.9)"


def test_plot_seed_results_with_one_seed_and_no_comparison_draws_the_mean_without_a_bar(tmp_path):
    figure = plot_seed_results({"maml": finalist("maml", [(7, 0.5)], rank=3)}, None, tmp_path / "seeds.png")

    axes = figure.axes[0]
    (bar,) = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    assert not bar.has_yerr
    assert list(bar.lines[0].get_ydata()) == [50.0]
    (dots,) = [c for c in axes.collections if isinstance(c, PathCollection)]
    assert dots.get_offsets().tolist() == [[0.0, 50.0]]
    assert axes.get_title() == "Test accuracy of each final configuration over fresh seeds"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["maml\nrank 3"]


@pytest.mark.parametrize("effect, expected", [(-0.04, "−0.0"), (0.0, "+0.0"), (12.34, "+12.3")])
def test_seed_title_signs_the_effect(tmp_path, effect, expected):
    comparison = SimpleNamespace(
        baseline="a", challenger="b", verdict=SimpleNamespace(effect=effect, ci_low=-1.0, ci_high=1.0)
    )
    finalists = {"a": finalist("a", [(1, 0.5), (2, 0.6)]), "b": finalist("b", [(1, 0.5), (2, 0.6)])}

    figure = plot_seed_results(finalists, comparison, tmp_path / "seeds.png")

    assert figure.axes[0].get_title().splitlines()[1] == f"b − a = {expected} points (95% CI −1.0 to +1.0)"
