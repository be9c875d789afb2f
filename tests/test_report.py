"""hpo.report: the summary (verdict first, the budget that ran, per-seed table), its CSV and the plots,
on hand-made records and real optuna studies."""

import csv
import dataclasses
import io

import matplotlib.image
import matplotlib.pyplot
import numpy as np
import optuna
import pytest
from matplotlib.collections import LineCollection

from hpo.diagnostics import Diagnostic
from hpo.plots import optuna_plot, plot_optuna_study, plot_validation_curves
from hpo.records import Finalist, ReplicateRecord, StudyComparison, StudyResults, TrialEnd, TrialRecord, TuneOutcome
from hpo.report import CSV_COLUMNS, budget_clause, summary_csv, summary_markdown
from hpo.spec import StudySpec
from hpo.stats import compare_search_finalists, compare_seeds

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def replicate(algorithm, rank, seed, val, accs, trial="t"):
    accs = np.asarray(accs, dtype=float)
    return ReplicateRecord(
        algorithm=algorithm,
        trial_id=f"r_{algorithm}_{rank}_{seed}",
        candidate_rank=rank,
        source_trial=f"{algorithm}_{trial}",
        seed=seed,
        tuned={"outer_lr": 0.001},
        val_curve=[val],
        best_val_acc=val,
        test_acc=float(accs.mean()),
        test_ci95=0.01,
        adapt_ms_per_task=2.0,
        parameters=1000,
        train_seconds=10.0,
        episode_accs=accs,
    )


def study_records(time_budget_cut=False, maml_capped=False):
    rng = np.random.default_rng(0)
    outcomes, replicates = {}, []
    for algorithm, level in (("maml", 0.80), ("hypermaml", 0.85)):
        trials = [
            TrialRecord(
                algorithm,
                f"{algorithm}_t",
                0,
                {"outer_lr": 0.001},
                [0.7, 0.8],
                0.8,
                30.0,
                TrialEnd.COMPLETED,
                reference="paper",
            ),
            TrialRecord(
                algorithm,
                f"{algorithm}_u",
                1,
                {"outer_lr": 0.01},
                [0.5],
                0.5,
                10.0,
                TrialEnd.TIME_BUDGET
                if time_budget_cut and algorithm == "hypermaml"
                else TrialEnd.TIME_CAP
                if maml_capped and algorithm == "maml"
                else TrialEnd.EARLY_STOPPED,
            ),
        ]
        outcomes[algorithm] = TuneOutcome(algorithm, trials, 50.0, 1000)
        for seed in (1000, 1001, 1002):
            replicates.append(replicate(algorithm, 1, seed, 0.8, np.clip(level + rng.normal(0, 0.05, 40), 0, 1)))
            replicates.append(
                replicate(algorithm, 2, seed, 0.7, np.clip(level - 0.1 + rng.normal(0, 0.05, 40), 0, 1), trial="u")
            )
    finalists = {
        a: Finalist(
            a, 1, f"{a}_t", {"outer_lr": 0.001}, [r for r in replicates if r.algorithm == a and r.candidate_rank == 1]
        )
        for a in outcomes
    }
    matrices = {a: finalists[a].episode_matrix() for a in finalists}
    comparison = StudyComparison(
        compare_search_finalists("maml", [matrices["maml"]], "hypermaml", [matrices["hypermaml"]]),
        {0: compare_seeds("maml", matrices["maml"], "hypermaml", matrices["hypermaml"], unit="config")},
    )
    return outcomes, replicates, finalists, comparison


def test_summary_opens_with_the_verdict_and_states_the_budget_that_ran():
    outcomes, replicates, finalists, comparison = study_records()
    diagnostics = [Diagnostic("diagnostic.seed_spread", "warning: the seeds disagree")]
    text = summary_markdown(StudySpec(trials=2), StudyResults(outcomes, replicates, finalists, comparison, diagnostics))
    lines = text.splitlines()
    assert lines[2] == f"**{comparison.headline.verdict.sentence}**" and comparison.headline.verdict.kind.startswith(
        "config_"
    )
    assert lines[4] == "warning: the seeds disagree"
    assert "| tuning trials run | 2 of 2 | 2 of 2 |" in lines
    two_searches = summary_markdown(
        StudySpec(trials=1, searches=2), StudyResults(outcomes, replicates, finalists, comparison, [])
    )
    assert "| tuning trials run | 2 of 2 | 2 of 2 |" in two_searches.splitlines()  # every search's trials planned
    assert (
        "| completed / training-time cap / early-stopped / time budget / failed | 1 / 0 / 1 / 0 / 0 | 1 / 0 / 1 / 0 / 0 |"
        in lines
    )
    assert "| tuning compute (trial-seconds) | 40 | 40 |" in lines
    assert "| replicates (candidates x seeds) | 2 x 3 (6 runs) | 2 x 3 (6 runs) |" in lines
    assert f"effect hypermaml − maml: {comparison.headline.verdict.effect:+.2f} points" in text
    section = lines.index("## Comparison (about these configurations: one search per algorithm)")
    assert lines[section + 6] == (
        "- what the CI does not cover: the search. Another search can find other configurations; a claim about the "
        "algorithms needs several: `--searches 3` or more, or grow this study with `--resume --name hypermaml-vs-maml "
        "--searches 3` (only the new searches run)."
    )
    # one per-seed row per final replicate, with its own numbers
    for r in finalists["hypermaml"].replicates:
        assert (
            f"| hypermaml | rank 1 (trial hypermaml_t) | {r.seed} | 80.00% | {100 * r.test_acc:.2f} ± 1.00% |" in text
        )
    assert "| hypermaml | 1 (final) | hypermaml_t | yes |" in text


def test_the_summary_counts_trials_ended_by_their_training_time_cap_and_states_the_cap():
    outcomes, replicates, finalists, comparison = study_records(maml_capped=True)
    spec = StudySpec(trials=2, epochs=5, episodes_per_epoch=480, max_train_seconds=170)
    lines = summary_markdown(spec, StudyResults(outcomes, replicates, finalists, comparison, [])).splitlines()
    assert (
        "| completed / training-time cap / early-stopped / time budget / failed | 1 / 1 / 0 / 0 / 0 | 1 / 0 / 1 / 0 / 0 |"
        in lines
    )
    assert budget_clause(spec, outcomes) == (
        "2/2 tuning trials (maml vs hypermaml) of up to 2400 training episodes and "
        "170 s of training each, replicates at that full budget, omniglot 5-way 1-shot; "
        "study seed 0"
    )
    flops = dataclasses.replace(spec, max_train_seconds=0.0, max_train_flops=1.05e13, searches=3)
    assert budget_clause(flops, outcomes) == (
        "3 searches, 2/2 tuning trials (maml vs hypermaml) of up to 2400 training "
        "episodes and 1.05e+13 FLOPs each, replicates at that full budget, omniglot "
        "5-way 1-shot; study seed 0"
    )
    longer = dataclasses.replace(flops, replicate_epochs=10)
    assert budget_clause(longer, outcomes) == (
        "3 searches, 2/2 tuning trials (maml vs hypermaml) of up to 2400 training "
        "episodes and 1.05e+13 FLOPs each, replicates at 2x that budget (10 epochs), omniglot "
        "5-way 1-shot; study seed 0"
    )
    assert longer.replicate_limits() == {"epochs": 10, "max_train_flops": 2.1e13, "max_train_seconds": 0.0}
    assert "replicates: top 1 configurations x 3 fresh seeds, 10 epochs each (2x a trial's episodes and limits)" in (
        summary_markdown(longer, StudyResults(outcomes, replicates, finalists, comparison, []))
    )
    assert (
        "training time per network: at most 170 s (an epoch that would pass it does not start; one that reaches it stops there)"
        in "\n".join(lines)
    )


def test_a_time_budget_cut_is_the_first_thing_the_summary_says():
    outcomes, replicates, finalists, comparison = study_records(time_budget_cut=True)
    text = summary_markdown(StudySpec(trials=2), StudyResults(outcomes, replicates, finalists, comparison, []))
    assert text.splitlines()[2].startswith("**warning: the time budget cut hypermaml short: 1 hypermaml trial(s)")


def test_the_summary_says_why_a_reference_was_not_retrained():
    outcomes, replicates, finalists, comparison = study_records()
    # maml's reference (trial maml_t, 80% after 2 epochs) was left out; the top trial led it by 12.5 points.
    top = TrialRecord("maml", "maml_w", 2, {"outer_lr": 0.003}, [0.75, 0.925], 0.925, 30.0, TrialEnd.COMPLETED)
    outcomes["maml"] = TuneOutcome("maml", [*outcomes["maml"].trials, top], 50.0, 1000)
    kept = [r for r in replicates if r.source_trial != "maml_t"]
    text = summary_markdown(StudySpec(trials=3), StudyResults(outcomes, kept, finalists, comparison, []))
    assert (
        "maml's published reference (trial maml_t) was not retrained: after 2 epoch(s) its validation accuracy "
        "trailed the top trial's by 12.5 points, more than the 10-point `--reference-margin`."
    ) in text
    assert "hypermaml's published reference" not in text  # retrained: its replicates are there


def test_csv_has_one_row_per_replicate_with_the_final_ones_marked():
    _, replicates, finalists, _ = study_records()
    rows = list(csv.DictReader(io.StringIO(summary_csv(replicates, finalists))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(replicates) == 12
    for row, record in zip(rows, replicates):
        assert (row["algorithm"], int(row["seed"]), float(row["test_acc"])) == (
            record.algorithm,
            record.seed,
            record.test_acc,
        )
        assert row["final"] == str(record.candidate_rank == 1)


def test_validation_curves_plot_draws_every_trial(tmp_path):
    curves = {
        "maml": [[0.5, 0.6, 0.65, 0.7], [0.45, 0.5], [0.55]],  # early-stopped trials are shorter
        "hypermaml": [[0.6, 0.7, 0.75, 0.78], [0.5, 0.62, 0.7, 0.72]],
    }
    figure = plot_validation_curves(curves, tmp_path / "plots" / "validation_curves.png")
    assert (tmp_path / "plots" / "validation_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    lines = figure.axes[0].get_lines()
    drawn = [(list(line.get_xdata()), [round(y, 9) for y in line.get_ydata()]) for line in lines]
    expected = [
        (list(range(1, len(c) + 1)), [round(100 * v, 9) for v in c]) for trials in curves.values() for c in trials
    ]
    assert drawn == expected


def assert_png_with_content(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).std() > 0.01


def lr_steps_optimizer_study(trials, fixed_steps=False):
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        steps = trial.suggest_int("steps", 3, 3) if fixed_steps else trial.suggest_int("steps", 1, 5)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        return 0.5 + 2 * lr + 0.02 * steps + (0.05 if optimizer == "adam" else 0.0)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return study


def test_optuna_plots_draw_the_studys_importances_and_one_line_per_completed_trial(tmp_path):
    study = lr_steps_optimizer_study(10)
    paths, notes = plot_optuna_study(study, tmp_path, "maml")
    assert paths == [tmp_path / "maml_param_importances.png", tmp_path / "maml_parallel_coordinate.png"]
    assert notes == []
    for path in paths:
        assert_png_with_content(path)

    # What those files draw, drawn again the same way: the bars are the study's fANOVA importances...
    params = ["lr", "optimizer", "steps"]
    importances = optuna_plot(study, "param importances", params)
    drawn = {
        label.get_text(): bar.get_width() for label, bar in zip(importances.get_yticklabels(), importances.patches)
    }
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params
    )
    assert drawn == pytest.approx(expected) and set(drawn) == set(params)
    matplotlib.pyplot.close("all")
    # ...and the parallel coordinates hold one line per trial, starting at its objective value.
    parallel = optuna_plot(study, "parallel coordinate", params)
    (lines,) = [c for c in parallel.collections if isinstance(c, LineCollection)]
    assert sorted(segment[0][1] for segment in lines.get_segments()) == pytest.approx(
        sorted(t.value for t in study.trials)
    )
    assert all(len(segment) == 1 + len(params) for segment in lines.get_segments())
    matplotlib.pyplot.close("all")


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
