"""The final head-to-head of the tuned algorithms: paired significance test, summary table, plots.

Knows nothing about Ray or MLflow: it turns numbers into strings and files, and the caller logs them.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

NO_WINNER = "no significant difference"
ROW_COLUMNS = (
    "algorithm", "trial_id", "val_acc", "test_acc", "test_ci95", "repeat_accs", "repeat_std",
    "adapt_ms_per_task", "parameters", "train_seconds", "study_seconds",
    "completed", "early_stopped", "failed", "hyperparameters",
)
TRIAL_STATES = ("completed", "early_stopped", "failed")
# Per-episode accuracies are fractions of a few query images, so their differences carry float noise
# (0.8 - 0.6 != 1.0 - 0.8). Rounding lets equal differences tie in Wilcoxon's ranks and exact zeros
# count as zeros, while changing no real difference.
DIFFERENCE_DECIMALS = 12
DPI = 120


@dataclass(frozen=True)
class AlgorithmOutcome:
    algorithm: str  # "maml" | "hypermaml" (any string)
    trial_id: str  # best trial
    val_acc: float  # its best validation accuracy (0..1)
    repeat_test_accs: list[float]  # mean test accuracy of each repeat (0..1)
    episode_accs: np.ndarray  # float [R*600] per-episode test accuracies, all repeats; paired across algorithms
    adapt_ms_per_task: float
    parameters: int
    train_seconds: float  # meta-training time of the best trial
    study_seconds: float  # summed training time of all this algorithm's trials
    trial_counts: dict[str, int]  # e.g. {"completed": 3, "early_stopped": 2, "failed": 1}
    hyperparameters: dict[str, Any]  # the best trial's tuned values


@dataclass(frozen=True)
class Comparison:
    outcomes: list[AlgorithmOutcome]  # in the given order
    rows: list[dict[str, Any]]  # one table row per algorithm, keys ROW_COLUMNS
    test: dict[str, Any] | None  # the two-algorithm significance test (None if != 2 outcomes)


def compare(outcomes: list[AlgorithmOutcome], alpha: float = 0.05) -> Comparison:
    """One table row per algorithm and, for exactly two algorithms, the paired test of the second minus the first.

    Paired: both algorithms were evaluated on the same episodes in the same order, so the per-episode
    difference removes how hard each episode is, which dominates the spread of accuracies; unpaired
    tests would drown the algorithm effect in episode difficulty.

    Wilcoxon signed-rank is the primary test (it decides the winner): per-episode accuracies are
    bounded and discrete (multiples of 1 / query images), so their differences are not normal.
    The paired t-test and its confidence interval are reported beside it because a mean difference
    with a CI in accuracy points is what a reader wants; with hundreds of episodes it is robust.
    """
    rows = [_row(outcome) for outcome in outcomes]
    test = _paired_test(outcomes[0], outcomes[1], alpha) if len(outcomes) == 2 else None
    return Comparison(outcomes=list(outcomes), rows=rows, test=test)


def _paired_test(baseline: AlgorithmOutcome, challenger: AlgorithmOutcome, alpha: float = 0.05) -> dict[str, Any]:
    """Compare two algorithms episode by episode, challenger - baseline (why so: see `compare`)."""
    a = _episode_accs(baseline)
    b = _episode_accs(challenger)
    if a.size != b.size:
        raise ValueError(f"cannot pair episodes: {baseline.algorithm} has {a.size} test episodes, "
                         f"{challenger.algorithm} has {b.size}")
    n = a.size
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 episodes, got {n}")
    differences = np.round(b - a, DIFFERENCE_DECIMALS)
    mean_difference = float(differences.mean())
    half_width = float(stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    all_zero = not differences.any()
    constant = bool(np.all(differences == differences[0]))

    note = ""
    if all_zero:
        # Wilcoxon drops zero differences and has nothing left; identical results are no evidence of a difference.
        wilcoxon_statistic, wilcoxon_p = 0.0, 1.0
        ttest_statistic, ttest_p = 0.0, 1.0
        note = "all paired differences are zero: Wilcoxon p set to 1.0"
    else:
        wilcoxon = stats.wilcoxon(differences, alternative="two-sided")
        wilcoxon_statistic, wilcoxon_p = float(wilcoxon.statistic), float(wilcoxon.pvalue)
        if constant:
            # Zero variance leaves the t statistic undefined (scipy would warn and return nan anyway).
            ttest_statistic, ttest_p = math.nan, math.nan
            note = "all paired differences are equal: t-test undefined (zero variance)"
        else:
            ttest = stats.ttest_rel(b, a)
            ttest_statistic, ttest_p = float(ttest.statistic), float(ttest.pvalue)

    if wilcoxon_p < alpha and mean_difference != 0:
        winner = challenger.algorithm if mean_difference > 0 else baseline.algorithm
    else:
        winner = NO_WINNER
    test = {
        "baseline": baseline.algorithm,
        "challenger": challenger.algorithm,
        "n_episodes": n,
        "mean_difference": mean_difference,
        "ci95_low": mean_difference - half_width,
        "ci95_high": mean_difference + half_width,
        "wilcoxon_statistic": wilcoxon_statistic,
        "wilcoxon_p": wilcoxon_p,
        "ttest_statistic": ttest_statistic,
        "ttest_p": ttest_p,
        "alpha": alpha,
        "winner": winner,
        "note": note,
    }
    test["verdict"] = _verdict(test, identical=all_zero)
    return test


def summary_markdown(comparison: Comparison, budget: dict[str, Any]) -> str:
    """The report a reader opens first: budget, table, verdict, best hyperparameters."""
    algorithms = " vs ".join(outcome.algorithm for outcome in comparison.outcomes)
    lines = [f"# Tuned best-vs-best comparison: {algorithms}", ""]
    if comparison.test is not None:  # the answer first: it is what a collapsed view shows
        lines += [f"**{comparison.test['verdict']}**", ""]
    lines += ["## Budget", ""]
    lines += [f"- {name}: {value}" for name, value in budget.items()] or ["- (not given)"]

    lines += ["", "## Test results of each algorithm's best trial", ""]
    header = (
        "algorithm", "best trial", "val acc", "test acc ± 95% CI", "repeat means", "repeat std",
        "adapt ms/task", "parameters", "train s", "study s", "trials completed / early stopped / failed",
    )
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for outcome, row in zip(comparison.outcomes, comparison.rows):
        cells = (
            row["algorithm"],
            row["trial_id"],
            f"{100 * row['val_acc']:.2f}%",
            f"{100 * row['test_acc']:.2f} ± {100 * row['test_ci95']:.2f}%",
            " / ".join(f"{100 * acc:.2f}" for acc in outcome.repeat_test_accs),
            "n/a" if math.isnan(row["repeat_std"]) else f"{100 * row['repeat_std']:.2f} points",
            f"{row['adapt_ms_per_task']:.2f}",
            f"{row['parameters']:,}",
            f"{row['train_seconds']:.0f}",
            f"{row['study_seconds']:.0f}",
            f"{row['completed']} / {row['early_stopped']} / {row['failed']}",
        )
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")

    lines += ["", "## Significance test", ""]
    test = comparison.test
    if test is None:
        lines.append(f"No paired test: it needs exactly 2 algorithms, got {len(comparison.outcomes)}.")
    else:
        lines += [
            f"**{test['verdict']}**",
            "",
            f"- difference per paired episode: {test['challenger']} - {test['baseline']}",
            f"- mean difference: {_points(test['mean_difference'])} points "
            f"(95% CI {_points(test['ci95_low'])} to {_points(test['ci95_high'])}, paired t interval)",
            f"- Wilcoxon signed-rank p (two-sided, primary): {_format_p(test['wilcoxon_p'])}",
            f"- paired t-test p: {_format_p(test['ttest_p'])}",
            f"- paired episodes: {test['n_episodes']}; alpha: {test['alpha']}",
            f"- winner: {test['winner']}",
        ]
        if test["note"]:
            lines.append(f"- note: {test['note']}")
        lines += [
            "",
            "Both algorithms were evaluated on the same episodes, so the tests are paired. Wilcoxon decides "
            "because per-episode accuracies are bounded and discrete, not normal.",
        ]

    lines += ["", "## Best hyperparameters", ""]
    for outcome in comparison.outcomes:
        lines.append(f"### {outcome.algorithm} (trial {outcome.trial_id})")
        lines.append("")
        lines += [f"- {name}: {_compact(value)}" for name, value in sorted(outcome.hyperparameters.items())]
        lines += ["- (none tuned)"] if not outcome.hyperparameters else []
        lines.append("")
    return "\n".join(lines)


def summary_csv(comparison: Comparison) -> str:
    """The table rows as CSV, header = ROW_COLUMNS."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparison.rows)
    return buffer.getvalue()


def plot_validation_curves(curves: dict[str, list[list[float]]], path: str | Path) -> Path:
    """Validation accuracy per epoch of every trial, one thin line each, colored by algorithm.

    `curves` maps algorithm -> one list of per-epoch accuracies (0..1) per trial.
    """
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for index, (algorithm, trials) in enumerate(curves.items()):
        plotted = [accs for accs in trials if len(accs) > 0]
        for number, accs in enumerate(plotted):
            epochs = np.arange(1, len(accs) + 1)
            # Only the first line of each algorithm is labelled: one legend entry per algorithm.
            label = f"{algorithm} ({len(plotted)} trials)" if number == 0 else None
            # Small markers keep one-epoch trials (stopped at once) visible.
            axes.plot(epochs, 100 * np.asarray(accs, dtype=float), color=f"C{index}", linewidth=0.9,
                      alpha=0.7, marker="o", markersize=2.5, label=label)
    axes.set_title("Validation accuracy of all trials")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    return _save(figure, path)


def plot_best_vs_best(comparison: Comparison, path: str | Path) -> Path:
    """Test accuracy ± 95% CI of each algorithm's best trial, with the mean of each repeat as dots."""
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    positions = np.arange(len(comparison.rows))
    means = [100 * row["test_acc"] for row in comparison.rows]
    errors = [100 * row["test_ci95"] for row in comparison.rows]
    axes.errorbar(positions, means, yerr=errors, fmt="o", markersize=8, capsize=8, color="C0",
                  label="all episodes: mean ± 95% CI")
    for position, outcome in zip(positions, comparison.outcomes):
        repeats = 100 * np.asarray(outcome.repeat_test_accs, dtype=float)
        # Beside the mean, not on it, so the CI bar stays readable.
        label = "repeat means" if position == 0 else None
        axes.scatter(np.full(repeats.size, position + 0.15), repeats, color="C1", s=18, zorder=3, label=label)
    axes.set_xticks(positions, [row["algorithm"] for row in comparison.rows])
    axes.set_xlim(-0.6, len(positions) - 0.4)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Test accuracy of each algorithm's best trial\n{_test_headline(comparison.test)}", fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    return _save(figure, path)


def plot_optuna_study(study: optuna.Study, out_dir: str | Path, prefix: str) -> tuple[list[Path], list[str]]:
    """Write `<prefix>_param_importances.png` and `<prefix>_parallel_coordinate.png` with optuna's plots.

    Returns (written paths, notes): a plot that cannot be made meaningfully (too few completed trials,
    no parameter that varied, a constant objective, or optuna refusing) is skipped with a note saying
    why, for the caller to log; parameters that never varied are left out of both plots, also noted.
    Switches matplotlib to the Agg backend (see below).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "param importances": (
            # Seeded so the same study always gives the same importances.
            lambda params: optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params),
            out_dir / f"{prefix}_param_importances.png",
        ),
        "parallel coordinate": (
            lambda params: optuna.visualization.matplotlib.plot_parallel_coordinate(study, params=params),
            out_dir / f"{prefix}_parallel_coordinate.png",
        ),
    }

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    reason = ""
    if len(study.directions) != 1:
        reason = "multi-objective study, plots need one objective"
    elif len(completed) < 2:
        reason = f"not enough completed trials ({len(completed)})"
    elif len({trial.value for trial in completed}) == 1:
        reason = f"all {len(completed)} completed trials have the same objective value"
    varied, fixed = _varied_params(completed)
    if not reason and not varied:
        reason = f"no parameter varied across the {len(completed)} completed trials"
    if reason:
        return [], [f"{name} for {prefix}: {reason}" for name in plots]

    # Optuna draws through pyplot; a file-only report must not open GUI windows (GUI backends also
    # fail off the main thread, where a study driver may run).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes = []
    if fixed:
        notes.append(f"plots for {prefix} leave out parameters not varied in every completed trial: {', '.join(fixed)}")
    written = []
    for name, (draw, path) in plots.items():
        try:
            with warnings.catch_warnings():
                # Optuna marks its matplotlib plots experimental and warns on every call; that warning
                # says nothing about this study.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(varied)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} for {prefix}: optuna could not plot it ({error})")
            continue
        figure = axes.figure
        try:
            figure.savefig(path, dpi=DPI, bbox_inches="tight")
        finally:
            plt.close(figure)
        written.append(path)
    return written, notes


def _row(outcome: AlgorithmOutcome) -> dict[str, Any]:
    accs = _episode_accs(outcome)
    repeats = np.asarray(outcome.repeat_test_accs, dtype=float)
    row = {
        "algorithm": outcome.algorithm,
        "trial_id": outcome.trial_id,
        "val_acc": float(outcome.val_acc),
        "test_acc": float(accs.mean()),
        # Computed only where defined: numpy warns on std(ddof=1) of fewer than 2 values.
        "test_ci95": float(1.96 * accs.std(ddof=1) / math.sqrt(accs.size)) if accs.size > 1 else math.nan,
        "repeat_accs": " / ".join(f"{acc:.3f}" for acc in repeats),
        "repeat_std": float(repeats.std(ddof=1)) if repeats.size > 1 else math.nan,
        "adapt_ms_per_task": float(outcome.adapt_ms_per_task),
        "parameters": int(outcome.parameters),
        "train_seconds": float(outcome.train_seconds),
        "study_seconds": float(outcome.study_seconds),
        "hyperparameters": ", ".join(
            f"{name}={_compact(value)}" for name, value in sorted(outcome.hyperparameters.items())
        ),
    }
    row.update({state: int(outcome.trial_counts.get(state, 0)) for state in TRIAL_STATES})
    return {column: row[column] for column in ROW_COLUMNS}


def _episode_accs(outcome: AlgorithmOutcome) -> np.ndarray:
    accs = np.asarray(outcome.episode_accs, dtype=float).ravel()
    if accs.size == 0:
        raise ValueError(f"{outcome.algorithm} has no test episodes")
    if not np.all(np.isfinite(accs)):
        raise ValueError(f"{outcome.algorithm} has non-finite episode accuracies")
    return accs


def _varied_params(completed: list[optuna.trial.FrozenTrial]) -> tuple[list[str], list[str]]:
    """(params set in every completed trial with more than one value, all other params), both sorted."""
    names = sorted({name for trial in completed for name in trial.params})
    varied = [
        name for name in names
        if all(name in trial.params for trial in completed) and len({trial.params[name] for trial in completed}) > 1
    ]
    return varied, [name for name in names if name not in varied]


def _verdict(test: dict[str, Any], identical: bool) -> str:
    n = test["n_episodes"]
    baseline, challenger = test["baseline"], test["challenger"]
    evidence = f"Wilcoxon {_p_equals(test['wilcoxon_p'])}, {n} paired episodes"
    if identical:
        return (f"no significant difference: {baseline} and {challenger} score identically on all {n} paired episodes "
                "(Wilcoxon p=1.0 by convention)")
    low, mean, high = test["ci95_low"], test["mean_difference"], test["ci95_high"]
    if test["winner"] == NO_WINNER:
        return (
            f"no significant difference between {baseline} and {challenger}: {challenger} - {baseline} = "
            f"{_points(mean)} points (95% CI {_points(low)} to {_points(high)}; {evidence})"
        )
    loser = baseline if test["winner"] == challenger else challenger
    if test["winner"] == baseline:  # state the lead of the winner as a positive number
        low, mean, high = -high, -mean, -low
    return (f"{test['winner']} beats {loser} by {100 * mean:.1f} points "
            f"(95% CI {100 * low:.1f} to {100 * high:.1f}; {evidence})")


def _test_headline(test: dict[str, Any] | None) -> str:
    if test is None:
        return "no paired test (needs exactly 2 algorithms)"
    what = NO_WINNER if test["winner"] == NO_WINNER else f"{test['winner']} is better"
    return f"{what}: Wilcoxon {_p_equals(test['wilcoxon_p'])}, {test['n_episodes']} paired episodes"


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    if p == 0:  # below the smallest double: say so rather than print an impossible p=0
        return "<1e-300"
    return f"{p:.2g}"


def _p_equals(p: float) -> str:
    """"p=0.027", or "p<1e-300" where the p-value underflowed to zero."""
    text = _format_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def _points(fraction: float) -> str:
    """A difference of accuracies (fractions) in percentage points with its sign."""
    return f"{100 * fraction:+.2f}"


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path
