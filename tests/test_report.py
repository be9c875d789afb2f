"""hpo.report: the paired test, the summary table and the plot files, on synthetic outcomes and real optuna studies."""

import csv
import io
import math
import re

import matplotlib.image
import numpy as np
import optuna
import pytest

from hpo.report import (
    NO_WINNER, ROW_COLUMNS, AlgorithmOutcome, compare, plot_best_vs_best, plot_optuna_study, plot_validation_curves,
    summary_csv, summary_markdown,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BUDGET = {"trials per algorithm": 6, "epochs per trial": 4, "resources per trial": "1 CPU"}


def outcome(algorithm, episode_accs, repeats=3, **fields):
    episode_accs = np.asarray(episode_accs, dtype=float)
    values = dict(
        algorithm=algorithm,
        trial_id=f"{algorithm}_00001",
        val_acc=0.8,
        repeat_test_accs=[float(part.mean()) for part in np.array_split(episode_accs, repeats)],
        episode_accs=episode_accs,
        adapt_ms_per_task=1.5,
        parameters=112_000,
        train_seconds=120.0,
        study_seconds=700.0,
        trial_counts={"completed": 3, "early_stopped": 2, "failed": 1},
        hyperparameters={"inner_steps": 3, "inner_lr": 0.0123456},
    )
    values.update(fields)
    return AlgorithmOutcome(**values)


def clear_gap(seed=0, episodes=1800):
    """maml on discrete 5-way 5-query accuracies; hypermaml exactly 0.05 better per episode plus noise."""
    rng = np.random.default_rng(seed)
    maml = rng.choice(np.arange(26) / 25, size=episodes, p=None)
    hypermaml = maml + 0.05 + rng.normal(0.0, 0.02, size=episodes)
    return outcome("maml", maml), outcome("hypermaml", hypermaml)


def verdict_numbers(verdict):
    """(lead, CI low, CI high) in points from a verdict naming hypermaml the winner over 1800 episodes."""
    match = re.fullmatch(
        r"hypermaml beats maml by (\d+\.\d) points \(95% CI (\d+\.\d) to (\d+\.\d); "
        r"Wilcoxon p=\d(\.\d)?e-\d+, 1800 paired episodes\)",
        verdict,
    )
    assert match, verdict
    return tuple(float(number) for number in match.groups()[:3])


def assert_png_with_content(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).std() > 0.01


def test_clear_winner_is_found_with_the_true_gap():
    test = compare(list(clear_gap())).test

    assert test["winner"] == "hypermaml"
    assert test["mean_difference"] == pytest.approx(0.05, abs=0.002)
    assert test["ci95_low"] < 0.05 < test["ci95_high"]
    assert test["ci95_high"] - test["ci95_low"] < 0.01
    assert test["wilcoxon_p"] < 1e-100 and test["ttest_p"] < 1e-100
    assert test["n_episodes"] == 1800 and test["alpha"] == 0.05
    lead, low, high = verdict_numbers(test["verdict"])
    assert lead == pytest.approx(5.0, abs=0.15) and low <= 5.0 <= high


def test_winner_listed_first_is_reported_with_a_positive_lead():
    maml, hypermaml = clear_gap()
    test = compare([hypermaml, maml]).test

    assert test["baseline"] == "hypermaml" and test["challenger"] == "maml"
    assert test["mean_difference"] == pytest.approx(-0.05, abs=0.002)
    assert test["winner"] == "hypermaml"
    lead, low, high = verdict_numbers(test["verdict"])
    assert lead == pytest.approx(5.0, abs=0.15) and low <= 5.0 <= high


def test_identical_results_are_no_significant_difference_with_p_one():
    accs = np.random.default_rng(1).choice(np.arange(26) / 25, size=600)
    test = compare([outcome("maml", accs), outcome("hypermaml", accs.copy())]).test

    assert test["winner"] == NO_WINNER
    assert test["wilcoxon_p"] == 1.0 and test["ttest_p"] == 1.0
    assert test["mean_difference"] == 0.0 and test["ci95_low"] == 0.0 == test["ci95_high"]
    assert "identically" in test["verdict"] and test["verdict"].startswith(NO_WINNER)
    assert "zero" in test["note"]


def test_same_distribution_gives_no_significant_difference():
    rng = np.random.default_rng(2)
    levels = np.arange(26) / 25
    test = compare([outcome("maml", rng.choice(levels, 1800)), outcome("hypermaml", rng.choice(levels, 1800))]).test

    assert test["wilcoxon_p"] > 0.05
    assert test["winner"] == NO_WINNER
    assert test["ci95_low"] < 0 < test["ci95_high"]
    assert test["verdict"].startswith("no significant difference between maml and hypermaml: hypermaml - maml = ")


def test_paired_interval_matches_a_hand_computation():
    # differences 0.2, 0, 0.4, 0, 0: mean 0.12, sample variance 0.128 / 4 = 0.032, standard error sqrt(0.032 / 5) = 0.08
    a = [0.2, 0.4, 0.6, 0.8, 1.0]
    b = [0.4, 0.4, 1.0, 0.8, 1.0]
    test = compare([outcome("maml", a, repeats=1), outcome("hypermaml", b, repeats=1)]).test

    t_975_4_df = 2.7764451051977987  # Student t quantile, 4 degrees of freedom
    assert test["mean_difference"] == pytest.approx(0.12)
    assert test["ci95_low"] == pytest.approx(0.12 - t_975_4_df * 0.08)
    assert test["ci95_high"] == pytest.approx(0.12 + t_975_4_df * 0.08)
    # Only 2 nonzero differences: Wilcoxon cannot be significant.
    assert test["winner"] == NO_WINNER


def test_rows_hold_mean_ci_repeats_counts_and_hyperparameters():
    accs = [0.2, 0.4, 0.6, 0.8, 1.0, 0.6]
    comparison = compare([outcome("maml", accs, repeats=3, repeat_test_accs=[0.7, 0.9, 0.8]),
                          outcome("hypermaml", accs, repeats=1, trial_counts={"completed": 6})])
    maml, hypermaml = comparison.rows

    assert list(maml) == list(ROW_COLUMNS)
    assert maml["algorithm"] == "maml" and maml["trial_id"] == "maml_00001"
    assert maml["test_acc"] == pytest.approx(0.6)
    # sample std of accs: sqrt(0.4 / 5); CI half-width 1.96 * std / sqrt(6)
    assert maml["test_ci95"] == pytest.approx(1.96 * math.sqrt(0.08) / math.sqrt(6))
    assert maml["repeat_accs"] == "0.700 / 0.900 / 0.800"
    assert maml["repeat_std"] == pytest.approx(0.1)  # deviations -0.1, 0.1, 0: variance 0.02 / 2
    assert (maml["completed"], maml["early_stopped"], maml["failed"]) == (3, 2, 1)
    assert maml["hyperparameters"] == "inner_lr=0.01235, inner_steps=3"
    assert math.isnan(hypermaml["repeat_std"])
    assert (hypermaml["completed"], hypermaml["early_stopped"], hypermaml["failed"]) == (6, 0, 0)


def test_unequal_episode_counts_cannot_be_paired():
    with pytest.raises(ValueError, match="cannot pair episodes: maml has 600 test episodes, hypermaml has 1200"):
        compare([outcome("maml", np.full(600, 0.5)), outcome("hypermaml", np.full(1200, 0.5))])


def test_three_algorithms_get_rows_but_no_test():
    comparison = compare([outcome(name, np.full(10, 0.5)) for name in ("maml", "hypermaml", "protonet")])

    assert comparison.test is None
    assert [row["algorithm"] for row in comparison.rows] == ["maml", "hypermaml", "protonet"]
    assert "needs exactly 2 algorithms, got 3" in summary_markdown(comparison, BUDGET)


def test_markdown_has_budget_table_verdict_and_hyperparameters():
    comparison = compare(list(clear_gap()))
    markdown = summary_markdown(comparison, BUDGET)

    assert markdown.startswith("# ")
    assert "| algorithm | best trial | val acc | test acc ± 95% CI |" in markdown
    for item in ("- trials per algorithm: 6", "- epochs per trial: 4", "- resources per trial: 1 CPU"):
        assert item in markdown
    maml_row = next(line for line in markdown.splitlines() if line.startswith("| maml |"))
    acc, ci = 100 * comparison.rows[0]["test_acc"], 100 * comparison.rows[0]["test_ci95"]
    assert f"{acc:.2f} ± {ci:.2f}%" in maml_row
    assert any(line.startswith("| hypermaml |") for line in markdown.splitlines())
    assert comparison.test["verdict"] in markdown
    assert "### hypermaml (trial hypermaml_00001)" in markdown and "- inner_lr: 0.01235" in markdown


def test_csv_parses_back_to_the_rows():
    comparison = compare(list(clear_gap()))
    parsed = list(csv.DictReader(io.StringIO(summary_csv(comparison))))

    assert len(parsed) == 2
    assert list(parsed[0]) == list(ROW_COLUMNS)
    for row, expected in zip(parsed, comparison.rows):
        assert row["algorithm"] == expected["algorithm"]
        assert float(row["test_acc"]) == expected["test_acc"]
        assert float(row["test_ci95"]) == expected["test_ci95"]
        assert int(row["parameters"]) == 112_000 and int(row["failed"]) == 1
        assert row["hyperparameters"] == "inner_lr=0.01235, inner_steps=3"


def test_validation_curves_plot(tmp_path):
    curves = {
        "maml": [[0.5, 0.6, 0.65, 0.7], [0.45, 0.5], [0.55]],  # early-stopped trials are shorter
        "hypermaml": [[0.6, 0.7, 0.75, 0.78], [0.5, 0.62, 0.7, 0.72]],
    }
    path = plot_validation_curves(curves, tmp_path / "plots" / "validation_curves.png")

    assert path == tmp_path / "plots" / "validation_curves.png"
    assert_png_with_content(path)


def test_best_vs_best_plot(tmp_path):
    path = plot_best_vs_best(compare(list(clear_gap())), str(tmp_path / "best_vs_best.png"))

    assert_png_with_content(path)


def lr_steps_optimizer_study(trials, fixed_steps=False):
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        steps = trial.suggest_int("steps", 3, 3) if fixed_steps else trial.suggest_int("steps", 1, 5)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        return 0.5 + 2 * lr + 0.02 * steps + (0.05 if optimizer == "adam" else 0.0)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return study


def test_optuna_plots_are_written(tmp_path):
    paths, notes = plot_optuna_study(lr_steps_optimizer_study(10), tmp_path, "maml")

    assert paths == [tmp_path / "maml_param_importances.png", tmp_path / "maml_parallel_coordinate.png"]
    assert notes == []
    for path in paths:
        assert_png_with_content(path)


def test_optuna_plots_leave_out_a_parameter_that_never_varied(tmp_path):
    paths, notes = plot_optuna_study(lr_steps_optimizer_study(8, fixed_steps=True), tmp_path, "hypermaml")

    assert len(paths) == 2 and all(path.is_file() for path in paths)
    assert notes == ["plots for hypermaml leave out parameters not varied in every completed trial: steps"]


def test_optuna_plots_of_a_constant_objective_become_notes(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: 0.5 + 0 * trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=4)

    paths, notes = plot_optuna_study(study, tmp_path, "maml")

    assert paths == []
    assert notes == [
        "param importances for maml: all 4 completed trials have the same objective value",
        "parallel coordinate for maml: all 4 completed trials have the same objective value",
    ]


def test_optuna_plots_of_a_one_trial_study_become_notes(tmp_path):
    paths, notes = plot_optuna_study(lr_steps_optimizer_study(1), tmp_path, "maml")

    assert paths == []
    assert notes == [
        "param importances for maml: not enough completed trials (1)",
        "parallel coordinate for maml: not enough completed trials (1)",
    ]
    assert list(tmp_path.iterdir()) == []
