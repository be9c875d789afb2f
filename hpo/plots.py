"""Every plot of a study: how fast each search found good configurations, how the final
configurations scored over their fresh seeds, and Optuna's own plots of each tuning study.

Ours draw on `matplotlib.figure.Figure` with the Agg canvas that `savefig` picks, never pyplot, so no
GUI backend or global figure state is touched (a study driver may run off the main thread). Each plot
is saved and its Figure returned, so callers and tests can read back exactly what was drawn. Optuna's
draw through pyplot (plot_optuna_study).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hpo.formatting import signed
from hpo.records import Finalist, TrialRecord, TuneOutcome
from hpo.stats import ExpectedBest, SearchFinalistComparison, SeedComparison, expected_best, t_half_width

if TYPE_CHECKING:
    import plotly.graph_objects as go

DPI = 120  # every report image, ours and Optuna's
# Horizontal spread of the seed dots around their algorithm's position, and where the mean sits:
# beside the dots, not on them, so the CI bar stays readable.
SEED_SPREAD = 0.08
MEAN_OFFSET = 0.25


def anytime_curve(outcome: TuneOutcome) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative trial compute in seconds, best validation accuracy so far in points) after each trial.

    Trials are taken in proposal order (`number`), whatever order the list holds. A failed trial
    (no accuracy) still spends its compute: its point carries the previous best. Trials before the
    first accuracy have no best yet, so they add compute but no point.
    """
    xs: list[float] = []
    ys: list[float] = []
    compute = 0.0
    best: float | None = None
    for trial in _in_proposal_order(outcome):
        compute += trial.train_seconds
        if trial.best_val_acc is not None:
            best = trial.best_val_acc if best is None else max(best, trial.best_val_acc)
        if best is not None:
            xs.append(compute)
            ys.append(100 * best)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_anytime(outcomes: dict[str, TuneOutcome], path: str | Path) -> Figure:
    """Best validation accuracy so far against cumulative trial compute, every algorithm on one axis.

    Compute, not trial count, is on x: the algorithms' trials differ in cost, and a fair search
    comparison asks what each found for the same compute. The reference trial (the published
    configuration), if any, is marked with a star at its own accuracy.
    """
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for index, (algorithm, outcome) in enumerate(outcomes.items()):
        color = f"C{index}"
        x, y = anytime_curve(outcome)
        axes.step(
            x,
            y,
            where="post",
            color=color,
            marker="o",
            markersize=3.5,
            label=f"{algorithm} ({len(outcome.trials)} trials)",
        )
        reference = _reference_point(outcome)
        if reference is not None:
            source, compute, acc = reference
            axes.scatter(
                [compute],
                [100 * acc],
                marker="*",
                s=160,
                color=color,
                edgecolors="black",
                linewidths=0.8,
                zorder=3,
                label=f"{algorithm} reference ({source})",
            )
    axes.set_title("Best validation accuracy found vs tuning compute")
    axes.set_xlabel("cumulative trial compute (trial-seconds)")
    axes.set_ylabel("best validation accuracy so far (%)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    _save(figure, path)
    return figure


def expected_best_curves(outcomes: dict[str, TuneOutcome]) -> dict[str, ExpectedBest]:
    """Each algorithm's expected best validation accuracy (points) after n = 1..N tuning trials, from the
    best validation accuracies of all its searches' trials pooled (trials without one left out)."""
    return {
        a: expected_best([100 * t.best_val_acc for t in o.trials if t.best_val_acc is not None])
        for a, o in outcomes.items()
        if any(t.best_val_acc is not None for t in o.trials)
    }


def plot_expected_best(curves: dict[str, ExpectedBest], path: str | Path) -> Figure:
    """Expected best validation accuracy against the number of tuning trials, with its ±1 sd band
    (Dodge et al. 2019): whether the comparison would change at a smaller or larger tuning budget."""
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for index, (algorithm, curve) in enumerate(curves.items()):
        axes.plot(
            curve.n,
            curve.mean,
            color=f"C{index}",
            marker="o",
            markersize=3,
            label=f"{algorithm} ({len(curve.n)} trials)",
        )
        axes.fill_between(curve.n, curve.low, curve.high, color=f"C{index}", alpha=0.2)
    axes.set_title("Expected best validation accuracy after n tuning trials (pooled over the searches)")
    axes.set_xlabel("tuning trials n")
    axes.set_ylabel("expected best validation accuracy (%)")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="lower right")
    _save(figure, path)
    return figure


def plot_seed_results(
    finalists: dict[str, Finalist],
    comparison: SeedComparison | SearchFinalistComparison | None,
    path: str | Path,
) -> Figure:
    """Test accuracy of each final configuration on every fresh seed (dots, labelled with the seed)
    and the mean over seeds with its 95% t interval over seeds.

    The interval is over seeds, mean ± t(0.975, S-1) · sd / sqrt(S): the question is how well the
    configuration trains, and the seed is what varies between trainings. With one seed there is no
    spread, so only the mean is drawn. The title states the seed-level effect when `comparison` is given.
    """
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    positions = np.arange(len(finalists))
    for position, finalist in zip(positions, finalists.values()):
        accs = 100 * np.asarray([r.test_acc for r in finalist.replicates], dtype=float)
        # Evenly spread, not random: the same records always give the same figure.
        spread = np.linspace(-SEED_SPREAD, SEED_SPREAD, accs.size) if accs.size > 1 else np.zeros(accs.size)
        first = position == 0  # one legend entry per kind of mark
        axes.scatter(position + spread, accs, color="C1", s=22, zorder=3, label="fresh seeds" if first else None)
        for x, acc, seed in zip(position + spread, accs, finalist.seeds):
            axes.annotate(
                str(seed), (x, acc), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center", color="0.35"
            )
        half_width = t_half_width(accs)
        axes.errorbar(
            [position + MEAN_OFFSET],
            [float(accs.mean())],
            yerr=None if math.isnan(half_width) else [half_width],
            fmt="o",
            markersize=8,
            capsize=8,
            color="C0",
            label="mean over seeds ± 95% CI" if first else None,
        )
    axes.set_xticks(
        positions, [f"{algorithm}\nrank {finalist.candidate_rank}" for algorithm, finalist in finalists.items()]
    )
    axes.set_xlim(-0.6, len(finalists) - 0.4)
    axes.set_ylabel("test accuracy (%)")
    title = "Test accuracy of each final configuration over fresh seeds"
    if comparison is not None:
        title += (
            f"\n{comparison.challenger} − {comparison.baseline} = {_title_signed(comparison.verdict.effect)} points "
            f"(95% CI {_title_signed(comparison.verdict.ci_low)} to {_title_signed(comparison.verdict.ci_high)})"
        )
    axes.set_title(title, fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize=9)
    _save(figure, path)
    return figure


def _in_proposal_order(outcome: TuneOutcome) -> list[TrialRecord]:
    return sorted(outcome.trials, key=lambda trial: trial.number)


def _reference_point(outcome: TuneOutcome) -> tuple[str, float, float] | None:
    """(its source, cumulative compute at its end, its accuracy 0..1) of the reference trial, or None
    if there is none or it failed (no accuracy to mark)."""
    compute = 0.0
    for trial in _in_proposal_order(outcome):
        compute += trial.train_seconds
        if trial.reference and trial.best_val_acc is not None:
            return trial.reference, compute, trial.best_val_acc
    return None


def _title_signed(points: float) -> str:
    """ "+1.2" / "−0.5" / "−0.0": one decimal, a negative effect keeps its minus."""
    return signed(points, decimals=1, keep_sign=True)


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_validation_curves(curves: dict[str, list[list[float]]], path: str | Path) -> Figure:
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
            axes.plot(
                epochs,
                100 * np.asarray(accs, dtype=float),
                color=f"C{index}",
                linewidth=0.9,
                alpha=0.7,
                marker="o",
                markersize=2.5,
                label=label,
            )
    axes.set_title("Validation accuracy of all trials")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    _save(figure, path)
    return figure


# ---- Optuna's plots of a tuning study ----------------------------------------------------------------

OPTUNA_PLOTS = {"param importances": "param_importances", "parallel coordinate": "parallel_coordinate"}


def optuna_plot(study: optuna.Study, name: str, params: list[str]):
    """One of Optuna's matplotlib plots (a key of OPTUNA_PLOTS) of `params`: its Axes."""
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental and warns on every call; that warning says
        # nothing about this study.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "param importances":  # seeded so the same study always gives the same importances
            return optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params
            )
        return optuna.visualization.matplotlib.plot_parallel_coordinate(study, params=params)


def plot_optuna_study(study: optuna.Study, out_dir: str | Path, prefix: str) -> tuple[list[Path], list[str]]:
    """Write `<prefix>_param_importances.png` and `<prefix>_parallel_coordinate.png` with optuna's plots.

    Returns (written paths, notes): a plot that cannot be made meaningfully (too few completed trials,
    no parameter that varied, a constant objective, or optuna refusing) is skipped with a note saying
    why, for the caller to log; parameters that never varied are left out of both plots, also noted.
    Switches matplotlib to the Agg backend (see below).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reason, varied, fixed = _plottable(study)
    if reason:
        return [], [f"{name} for {prefix}: {reason}" for name in OPTUNA_PLOTS]

    # Optuna draws through pyplot; a file-only report must not open GUI windows (GUI backends also
    # fail off the main thread, where a study driver may run).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes = []
    if fixed:
        notes.append(f"plots for {prefix} leave out parameters not varied in every completed trial: {', '.join(fixed)}")
    written = []
    for name, file_stem in OPTUNA_PLOTS.items():
        try:
            axes = optuna_plot(study, name, varied)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} for {prefix}: optuna could not plot it ({error})")
            continue
        path = out_dir / f"{prefix}_{file_stem}.png"
        try:
            _save(axes.figure, path)
        finally:
            plt.close(axes.figure)
        written.append(path)
    return written, notes


def interactive_parallel_coordinate(study: optuna.Study, algorithm: str) -> tuple[go.Figure | None, str | None]:
    """Optuna's parallel-coordinate plot of a tuning study as an interactive Plotly figure, the
    objective in points: (figure, None), or (None, a note saying why it cannot be drawn)."""
    reason, varied, _ = _plottable(study)
    if reason:
        return None, f"interactive parallel coordinate for {algorithm}: {reason}"
    figure = optuna.visualization.plot_parallel_coordinate(
        study, params=varied, target=lambda trial: 100 * trial.value, target_name="best val acc (%)"
    )
    figure.update_layout(title=f"{algorithm}: completed tuning trials (ASHA-stopped ones are left out)")
    return figure, None


def _plottable(study: optuna.Study) -> tuple[str, list[str], list[str]]:
    """(why the study cannot be plotted or "", params varied in every completed trial, the other params)."""
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
    return reason, varied, fixed


def _varied_params(completed: list[optuna.trial.FrozenTrial]) -> tuple[list[str], list[str]]:
    """(params set in every completed trial with more than one value, all other params), both sorted."""
    names = sorted({name for trial in completed for name in trial.params})
    varied = [
        name
        for name in names
        if all(name in trial.params for trial in completed) and len({trial.params[name] for trial in completed}) > 1
    ]
    return varied, [name for name in names if name not in varied]
