"""The study's report: summary.md (the answer first), summary.csv (one row per replicate) and plots.

Knows nothing about Ray or MLflow: it turns the phases' records into strings and files, and the
caller logs them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import optuna
from matplotlib.figure import Figure

from .diagnostics import Diagnostic
from .plots import plot_anytime, plot_seed_results, plot_validation_curves
from .records import COMPLETED, EARLY_STOPPED, FAILED, TIME_BUDGET, TIME_CAP, Finalist, ReplicateRecord, TuneOutcome, compared_epochs, reference_gap
from .spec import StudySpec

if TYPE_CHECKING:
    import plotly.graph_objects as go

CSV_COLUMNS = (
    "algorithm", "candidate_rank", "source_trial", "final", "seed", "best_val_acc", "test_acc", "test_ci95",
    "adapt_ms_per_task", "parameters", "train_seconds", "hyperparameters",
)
DPI = 120


def budget_clause(spec: StudySpec, outcomes: dict[str, TuneOutcome]) -> str:
    """The equal budget as it ran, and what the claim is conditional on, for the verdict sentence.

    The verdict's CI covers training seeds and test episodes, not the search: another `--seed` can
    find other configurations, and on the default budget that moved the effect by more than one
    study's CI (README, "The default study, twice"). The sentence says so itself, as the tag does."""
    trials = "/".join(str(len(o.trials)) for o in outcomes.values())
    cap = f" and {spec.max_train_seconds:g} s of training" if spec.max_train_seconds else ""
    return (f"{trials} tuning trials ({' vs '.join(outcomes)}) of up to {spec.epochs * spec.episodes_per_epoch} "
            f"training episodes{cap} each, replicates at that full budget, {spec.dataset} {spec.way}-way {spec.shot}-shot; "
            f"conditional on the configurations this search found (searcher seed {spec.seed})")


def write_files(spec: StudySpec, outcomes: dict[str, TuneOutcome], replicates: list[ReplicateRecord],
                finalists: dict[str, Finalist], comparison, diagnostics: list[Diagnostic], out: Path) -> list[Path]:
    """summary.md, summary.csv, spec.json and plots/ in `out`; returns them (summary.md first)."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    curves = {a: [t.val_curve for t in o.trials if t.val_curve] for a, o in outcomes.items()}
    plot_validation_curves(curves, plots / "validation_curves.png")
    plot_anytime(outcomes, plots / "anytime.png")
    if finalists:
        plot_seed_results(finalists, comparison, plots / "seed_results.png")
    files = [out / "summary.md", out / "summary.csv", out / "spec.json"]
    files[0].write_text(summary_markdown(spec, outcomes, replicates, finalists, comparison, diagnostics))
    files[1].write_text(summary_csv(replicates, finalists))
    files[2].write_text(json.dumps(spec.to_dict(), indent=2))
    return files + [plots]


def summary_markdown(spec: StudySpec, outcomes: dict[str, TuneOutcome], replicates: list[ReplicateRecord],
                     finalists: dict[str, Finalist], comparison, diagnostics: list[Diagnostic]) -> str:
    """The report a reader opens first: verdict, what the budget really was, warnings, per-seed table."""
    names = " vs ".join(outcomes)
    lines = [f"# {names}: tuned with equal budgets, compared over fresh training seeds", ""]
    cut = [a for a, o in outcomes.items() if o.count(TIME_BUDGET)]
    if cut:  # an unequal budget must be the first thing a reader sees
        lines += [f"**warning: the time budget cut {', '.join(cut)} short: "
                  + "; ".join(f"{o.count(TIME_BUDGET)} {a} trial(s) stopped by it" for a, o in outcomes.items() if a in cut)
                  + ". The budgets below are what ran.**", ""]
    if comparison is not None:
        lines += [f"**{comparison.sentence}**", ""]
    else:
        lines += ["**No verdict: it needs two algorithms with at least 2 successful replicates each.**", ""]
    lines += [d.message for d in diagnostics]
    lines += ["", "## Budget that ran", "",
              "| | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    rows = {
        "tuning trials run": lambda o: f"{len(o.trials)} of {spec.trials}",
        "completed / training-time cap / early-stopped / time budget / failed": lambda o: " / ".join(
            str(o.count(s)) for s in (COMPLETED, TIME_CAP, EARLY_STOPPED, TIME_BUDGET, FAILED)),
        "training episodes per full trial": lambda o: str(o.episodes_per_trial),
        "tuning compute (trial-seconds)": lambda o: f"{o.trial_seconds:.0f}",
        "tuning wall time (s)": lambda o: f"{o.wall_seconds:.0f}",
        "replicates (candidates x seeds)": lambda o: _replicate_shape(replicates, o.algorithm),
        "replicate compute (trial-seconds)": lambda o: f"{sum(r.train_seconds for r in replicates if r.algorithm == o.algorithm):.0f}",
    }
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(o) for o in outcomes.values()) + " |")
    lines += ["", "Planned: " + "; ".join(f"{k}: {v}" for k, v in spec.budget().items()), ""]

    if comparison is not None:
        c = comparison
        lines += [
            "## Comparison (the training seed is the unit)", "",
            f"- effect {c.challenger} − {c.baseline}: {c.effect:+.2f} points, 95% CI {c.ci_low:+.2f} to {c.ci_high:+.2f} "
            f"(Welch t, df {c.df:.1f}, p={_format_p(c.p_value)}); seed and episode variance both included",
            f"- P({c.challenger} > {c.baseline}) for a random pair of training seeds: {c.p_improvement:.2f} "
            f"(95% CI {c.p_improvement_low:.2f} to {c.p_improvement_high:.2f})",
            f"- equivalence margin: ±{c.margin:g} points; verdict: `{c.kind}`"
            + (f"; about {c.seeds_needed} seeds per algorithm would be needed to decide" if c.seeds_needed else ""),
            f"- secondary, {_episode_line(c)}",
            f"- what the CI does not cover: the search. It is conditional on the configurations this search found "
            f"(searcher seed {spec.seed}); a rerun with another `--seed` can find others (README: \"The default "
            "study, twice\"). A claim about the algorithms, not these configurations, needs several `--seed`s "
            f"(each under its own `--name`), compared by `python -m hpo.across {spec.name} NAME2 ...`.",
            "",
        ]
    lines += ["## Final configurations, per seed", "",
              "| algorithm | candidate | seed | best val acc | test acc ± 95% CI (episodes) | adapt ms/task | parameters | train s |",
              "|---|---|---|---|---|---|---|---|"]
    for algorithm, finalist in finalists.items():
        for r in finalist.replicates:
            lines.append(f"| {algorithm} | rank {finalist.candidate_rank} (trial {finalist.source_trial}) | {r.seed} | "
                         f"{100 * r.best_val_acc:.2f}% | {100 * r.test_acc:.2f} ± {100 * r.test_ci95:.2f}% | "
                         f"{r.adapt_ms_per_task:.1f} | {r.parameters:,} | {r.train_seconds:.0f} |")
        accs = [100 * r.test_acc for r in finalist.replicates]
        spread = f" (sd {np.std(accs, ddof=1):.2f} over seeds)" if len(accs) > 1 else ""
        lines.append(f"| {algorithm} | **mean** | | {100 * finalist.mean_val_acc:.2f}% | **{np.mean(accs):.2f}%**{spread} | | | |")
    lines += ["", "## Candidates (mean over fresh seeds; the validation mean chose the final one)", "",
              "| algorithm | rank | tuning trial | reference | mean val acc | mean test acc | seeds |", "|---|---|---|---|---|---|---|"]
    for (algorithm, rank), group in sorted(_groups(replicates).items()):
        trial = next((t for t in outcomes[algorithm].trials if t.trial_id == group[0].source_trial), None)
        chosen = " (final)" if finalists.get(algorithm) and finalists[algorithm].candidate_rank == rank else ""
        lines.append(f"| {algorithm} | {rank}{chosen} | {group[0].source_trial} | {'yes' if trial and trial.reference else ''} | "
                     f"{100 * np.mean([r.best_val_acc for r in group]):.2f}% | {100 * np.mean([r.test_acc for r in group]):.2f}% | "
                     f"{len(group)} |")
    lines += _unretrained_references(spec, outcomes, replicates)
    lines += ["", "## Final hyperparameters", ""]
    for algorithm, finalist in finalists.items():
        lines += [f"### {algorithm} (tuning trial {finalist.source_trial}, candidate rank {finalist.candidate_rank})", ""]
        lines += [f"- {name}: {_compact(value)}" for name, value in sorted(finalist.tuned.items())] or ["- (none tuned)"]
        lines.append("")
    return "\n".join(lines)


def summary_csv(replicates: list[ReplicateRecord], finalists: dict[str, Finalist]) -> str:
    """One row per replicate, header CSV_COLUMNS; `final` marks the finalists' replicates."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in replicates:
        final = r.algorithm in finalists and finalists[r.algorithm].candidate_rank == r.candidate_rank
        writer.writerow({
            "algorithm": r.algorithm, "candidate_rank": r.candidate_rank, "source_trial": r.source_trial,
            "final": final, "seed": r.seed, "best_val_acc": r.best_val_acc, "test_acc": r.test_acc,
            "test_ci95": r.test_ci95, "adapt_ms_per_task": r.adapt_ms_per_task, "parameters": r.parameters,
            "train_seconds": r.train_seconds,
            "hyperparameters": ", ".join(f"{k}={_compact(v)}" for k, v in sorted(r.tuned.items())),
        })
    return buffer.getvalue()


def _episode_line(c) -> str:
    from .stats import episode_line
    return episode_line(c)


def _groups(replicates: list[ReplicateRecord]) -> dict[tuple[str, int], list[ReplicateRecord]]:
    groups: dict[tuple[str, int], list[ReplicateRecord]] = {}
    for r in replicates:
        groups.setdefault((r.algorithm, r.candidate_rank), []).append(r)
    return groups


def _unretrained_references(spec: StudySpec, outcomes: dict[str, TuneOutcome],
                             replicates: list[ReplicateRecord]) -> list[str]:
    """A line for each published reference that was not retrained, and why (it was clearly beaten)."""
    retrained = {r.source_trial for r in replicates}
    lines = []
    for algorithm, outcome in outcomes.items():
        scored = [t for t in outcome.trials if t.best_val_acc is not None]
        for reference in (t for t in scored if t.reference and t.trial_id not in retrained):
            best = max(scored, key=lambda t: t.best_val_acc)
            lines.append(f"\n{algorithm}'s published reference (trial {reference.trial_id}) was not retrained: after "
                         f"{compared_epochs(reference, best)} epoch(s) its validation accuracy trailed the top trial's by "
                         f"{reference_gap(reference, best):.1f} points, more than the {spec.reference_margin:g}-point "
                         "`--reference-margin`.")
    return lines


def _replicate_shape(replicates: list[ReplicateRecord], algorithm: str) -> str:
    mine = [r for r in replicates if r.algorithm == algorithm]
    return f"{len({r.candidate_rank for r in mine})} x {len({r.seed for r in mine})} ({len(mine)} runs)"


OPTUNA_PLOTS = {"param importances": "param_importances", "parallel coordinate": "parallel_coordinate"}


def optuna_plot(study: optuna.Study, name: str, params: list[str]):
    """One of Optuna's matplotlib plots (a key of OPTUNA_PLOTS) of `params`: its Axes."""
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental and warns on every call; that warning says
        # nothing about this study.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "param importances":  # seeded so the same study always gives the same importances
            return optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params)
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
            axes.figure.savefig(path, dpi=DPI, bbox_inches="tight")
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
        study, params=varied, target=lambda trial: 100 * trial.value, target_name="best val acc (%)")
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
        name for name in names
        if all(name in trial.params for trial in completed) and len({trial.params[name] for trial in completed}) > 1
    ]
    return varied, [name for name in names if name not in varied]


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
