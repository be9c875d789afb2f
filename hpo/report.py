"""The study's report: summary.md (the answer first), summary.csv (one row per replicate) and plots.

Knows nothing about Ray or MLflow: it turns the phases' records into strings and files, and the
caller logs them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .formatting import compact, format_p, p_equals
from .plots import expected_best_curves, plot_anytime, plot_expected_best, plot_seed_results, plot_validation_curves
from .records import (
    Finalist,
    ReplicateRecord,
    StudyComparison,
    StudyResults,
    TrialEnd,
    TuneOutcome,
    compared_epochs,
    reference_gap,
)
from .spec import StudySpec
from .stats import ExpectedBest

CSV_COLUMNS = (
    "algorithm",
    "search",
    "candidate_rank",
    "source_trial",
    "final",
    "seed",
    "best_val_acc",
    "test_acc",
    "test_ci95",
    "adapt_ms_per_task",
    "parameters",
    "train_seconds",
    "hyperparameters",
)


def budget_clause(spec: StudySpec, outcomes: dict[str, TuneOutcome]) -> str:
    """The equal budget as it ran, for the verdict sentence (which says itself what its CI covers)."""
    trials = "/".join(str(len(o.trials)) for o in outcomes.values())
    searches = f"{spec.searches} searches, " if spec.searches > 1 else ""
    cap = f" and {spec.max_train_flops:.3g} FLOPs" if spec.max_train_flops else ""
    cap += f" and {spec.max_train_seconds:g} s of training" if spec.max_train_seconds else ""
    replicated = (
        f"replicates at {spec.replicate_scale:.3g}x that budget ({spec.final_epochs} epochs)"
        if spec.replicate_scale != 1
        else "replicates at that full budget"
    )
    return (
        f"{searches}{trials} tuning trials ({' vs '.join(outcomes)}) of up to {spec.epochs * spec.episodes_per_epoch} "
        f"training episodes{cap} each, {replicated}, {spec.dataset} {spec.way}-way {spec.shot}-shot; "
        f"study seed {spec.seed}"
    )


def write_files(
    spec: StudySpec, results: StudyResults, out: Path, expected: dict[str, ExpectedBest] | None = None
) -> list[Path]:
    """summary.md, summary.csv, spec.json and plots/ in `out`; returns them (summary.md first).
    `expected`: the expected-best curves (plots.expected_best_curves), computed here when not given."""
    outcomes, finalists, comparison = results.outcomes, results.finalists, results.comparison
    expected = expected_best_curves(outcomes) if expected is None else expected
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    curves = {a: [t.val_curve for t in o.trials if t.val_curve] for a, o in outcomes.items()}
    plot_validation_curves(curves, plots / "validation_curves.png")
    plot_anytime(outcomes, plots / "anytime.png")
    plot_expected_best(expected, plots / "expected_best.png")
    if finalists:
        plot_seed_results(finalists, comparison.headline if comparison else None, plots / "seed_results.png")
    files = [out / "summary.md", out / "summary.csv", out / "spec.json"]
    files[0].write_text(summary_markdown(spec, results, expected))
    files[1].write_text(summary_csv(results.replicates, finalists))
    files[2].write_text(json.dumps(spec.to_dict(), indent=2))
    return files + [plots]


def summary_markdown(spec: StudySpec, results: StudyResults, expected: dict[str, ExpectedBest] | None = None) -> str:
    """The report a reader opens first: verdict, what the budget really was, warnings, per-seed table."""
    outcomes, replicates, finalists = results.outcomes, results.replicates, results.finalists
    comparison, diagnostics = results.comparison, results.diagnostics
    names = " vs ".join(outcomes)
    lines = [f"# {names}: tuned with equal budgets, compared over fresh training seeds", ""]
    cut = [a for a, o in outcomes.items() if o.count(TrialEnd.TIME_BUDGET)]
    if cut:  # an unequal budget must be the first thing a reader sees
        lines += [
            f"**warning: the time budget cut {', '.join(cut)} short: "
            + "; ".join(
                f"{o.count(TrialEnd.TIME_BUDGET)} {a} trial(s) stopped by it" for a, o in outcomes.items() if a in cut
            )
            + ". The budgets below are what ran.**",
            "",
        ]
    if comparison is not None:
        lines += [f"**{comparison.headline.verdict.sentence}**", ""]
    else:
        lines += ["**No verdict: it needs two algorithms with at least 2 successful replicates each.**", ""]
    lines += [d.message for d in diagnostics]
    lines += ["", "## Budget that ran", "", "| | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    rows = {
        "tuning trials run": lambda o: f"{len(o.trials)} of {spec.searches * spec.trials}",
        "completed / training-time cap / early-stopped / time budget / failed": lambda o: " / ".join(
            str(o.count(end)) for end in TrialEnd
        ),
        "training episodes per full trial": lambda o: str(o.episodes_per_trial),
        "tuning compute (trial-seconds)": lambda o: f"{o.trial_seconds:.0f}",
        "tuning wall time (s)": lambda o: f"{o.wall_seconds:.0f}",
        "replicates (candidates x seeds)": lambda o: _replicate_shape(replicates, o.algorithm),
        "replicate compute (trial-seconds)": lambda o: (
            f"{sum(r.train_seconds for r in replicates if r.algorithm == o.algorithm):.0f}"
        ),
    }
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(o) for o in outcomes.values()) + " |")
    lines += ["", "Planned: " + "; ".join(f"{k}: {v}" for k, v in spec.budget().items()), ""]

    if comparison is not None:
        lines += _comparison_lines(spec, comparison)
    lines += _expected_best_lines(expected_best_curves(outcomes) if expected is None else expected)
    lines += [
        "## Final configurations, per seed",
        "",
        "| algorithm | candidate | seed | best val acc | test acc ± 95% CI (episodes) | adapt ms/task | parameters | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algorithm, finalist in finalists.items():
        for r in finalist.replicates:
            lines.append(
                f"| {algorithm} | rank {finalist.candidate_rank} (trial {finalist.source_trial}) | {r.seed} | "
                f"{100 * r.best_val_acc:.2f}% | {100 * r.test_acc:.2f} ± {100 * r.test_ci95:.2f}% | "
                f"{r.adapt_ms_per_task:.1f} | {r.parameters:,} | {r.train_seconds:.0f} |"
            )
        accs = [100 * r.test_acc for r in finalist.replicates]
        spread = f" (sd {np.std(accs, ddof=1):.2f} over seeds)" if len(accs) > 1 else ""
        lines.append(
            f"| {algorithm} | **mean** | | {100 * finalist.mean_val_acc:.2f}% | **{np.mean(accs):.2f}%**{spread} | | | |"
        )
    lines += [
        "",
        "## Candidates (mean over fresh seeds; the validation mean chose the final one)",
        "",
        "| algorithm | rank | tuning trial | reference | mean val acc | mean test acc | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (algorithm, search, rank), group in sorted(_groups(replicates).items()):
        trial = next((t for t in outcomes[algorithm].trials if t.trial_id == group[0].source_trial), None)
        chosen = " (final)" if _is_final(finalists, group[0]) else ""
        name = algorithm if spec.searches == 1 else f"{algorithm} search {search}"
        lines.append(
            f"| {name} | {rank}{chosen} | {group[0].source_trial} | {'yes' if trial and trial.reference else ''} | "
            f"{100 * np.mean([r.best_val_acc for r in group]):.2f}% | {100 * np.mean([r.test_acc for r in group]):.2f}% | "
            f"{len(group)} |"
        )
    lines += _unretrained_references(spec, outcomes, replicates)
    lines += ["", "## Final hyperparameters", ""]
    for algorithm, finalist in finalists.items():
        lines += [
            f"### {algorithm} (tuning trial {finalist.source_trial}, candidate rank {finalist.candidate_rank})",
            "",
        ]
        lines += [f"- {name}: {compact(value)}" for name, value in sorted(finalist.tuned.items())] or ["- (none tuned)"]
        lines.append("")
    return "\n".join(lines)


def _expected_best_lines(curves: dict[str, ExpectedBest]) -> list[str]:
    """The expected best validation accuracy after n trials (Dodge et al. 2019) at n = 1, 2, 4, ..., N: would
    the comparison change at a smaller or larger tuning budget?"""
    if not curves:
        return []
    count = max(len(c.n) for c in curves.values())
    ns = sorted({n for n in (2**i for i in range(count.bit_length())) if n <= count} | {count})
    lines = [
        "## Expected best validation accuracy after n tuning trials (pooled over searches; ± sd)",
        "",
        "| n | " + " | ".join(curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for n in ns:
        cells = [f"{c.mean[n - 1]:.2f}% ± {c.sd[n - 1]:.2f}" if n <= len(c.n) else "" for c in curves.values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def _comparison_lines(spec: StudySpec, comparison: StudyComparison) -> list[str]:
    """The comparison section: the headline at its unit, then each search's own (secondary) comparison."""
    h = comparison.headline
    lines = []
    if h.verdict.unit == "search":
        spread = "; ".join(
            f"{name}: search means {', '.join(f'{m:.2f}' for m in means)}%, sd {sd:.2f} points"
            for name, means, sd in (
                (h.baseline, h.baseline_search_means, h.baseline_search_sd),
                (h.challenger, h.challenger_search_means, h.challenger_search_sd),
            )
        )
        lines += [
            "## Comparison (the search is the unit)",
            "",
            f"- effect {h.challenger} − {h.baseline}, mean over searches of each search finalist's mean test accuracy: "
            f"{h.verdict.effect:+.2f} points, 95% CI {h.verdict.ci_low:+.2f} to {h.verdict.ci_high:+.2f} "
            f"(Welch t over search means, df {h.df:.1f}, plus the shared test episodes; p={format_p(h.p_value)})",
            f"- {spread}",
            f"- equivalence margin: ±{h.verdict.margin:g} points; verdict: `{h.verdict.kind}`"
            + (
                f"; about {h.searches_needed} searches per algorithm would be needed to decide"
                if h.searches_needed
                else ""
            ),
            f"- given the configurations found (seeds and episodes only, not the search): 95% CI "
            f"{h.config_ci_low:+.2f} to {h.config_ci_high:+.2f}",
            "",
        ]
    single = comparison.per_search.get(min(comparison.per_search)) if len(comparison.per_search) == 1 else None
    if single is not None:
        c = single
        lines += [
            "## Comparison (about these configurations: one search per algorithm)",
            "",
            f"- effect {c.challenger} − {c.baseline}: {c.verdict.effect:+.2f} points, 95% CI "
            f"{c.verdict.ci_low:+.2f} to {c.verdict.ci_high:+.2f} (Welch t, df {c.df:.1f}, p={format_p(c.p_value)}); "
            "seed and episode variance both included",
            f"- P({c.challenger} > {c.baseline}) for a random pair of training seeds: {c.p_improvement:.2f} "
            f"({c.p_improvement_pairs[0]:g} of {c.p_improvement_pairs[1]} pairs, ties counting half; "
            f"Mann–Whitney {p_equals(c.p_improvement_p)})",
            f"- equivalence margin: ±{c.verdict.margin:g} points; verdict: `{c.verdict.kind}`"
            + (f"; about {c.seeds_needed} seeds per algorithm would be needed to decide" if c.seeds_needed else ""),
            f"- secondary, {_episode_line(c)}",
            "- what the CI does not cover: the search. Another search can find other configurations; a claim about "
            f"the algorithms needs several: `--searches 3` or more, or grow this study with "
            f"`--resume --name {spec.name} --searches 3` (only the new searches run).",
            "",
        ]
    elif comparison.per_search:
        lines += [
            "## Each search's finalists (secondary: about that search's configurations)",
            "",
            f"| search | {h.baseline} | {h.challenger} | {h.challenger} − {h.baseline} | 95% CI | P({h.challenger} > "
            f"{h.baseline}) | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for search, c in sorted(comparison.per_search.items()):
            lines.append(
                f"| {search} | {c.baseline_mean:.2f}% | {c.challenger_mean:.2f}% | {c.verdict.effect:+.2f} | "
                f"{c.verdict.ci_low:+.2f} to {c.verdict.ci_high:+.2f} | {c.p_improvement_pairs[0]:g} of "
                f"{c.p_improvement_pairs[1]} pairs ({p_equals(c.p_improvement_p)}) | `{c.verdict.kind}` |"
            )
        lines.append("")
    return lines


def summary_csv(replicates: list[ReplicateRecord], finalists: dict[str, Finalist]) -> str:
    """One row per replicate, header CSV_COLUMNS; `final` marks the finalists' replicates."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in replicates:
        final = _is_final(finalists, r)
        writer.writerow(
            {
                "algorithm": r.algorithm,
                "search": r.search,
                "candidate_rank": r.candidate_rank,
                "source_trial": r.source_trial,
                "final": final,
                "seed": r.seed,
                "best_val_acc": r.best_val_acc,
                "test_acc": r.test_acc,
                "test_ci95": r.test_ci95,
                "adapt_ms_per_task": r.adapt_ms_per_task,
                "parameters": r.parameters,
                "train_seconds": r.train_seconds,
                "hyperparameters": ", ".join(f"{k}={compact(v)}" for k, v in sorted(r.tuned.items())),
            }
        )
    return buffer.getvalue()


def _episode_line(c) -> str:
    from .stats import episode_line

    return episode_line(c)


def _is_final(finalists: dict[str, Finalist], r: ReplicateRecord) -> bool:
    """Whether this replicate retrains its search's final configuration."""
    return any(
        f.algorithm == r.algorithm and f.search == r.search and f.candidate_rank == r.candidate_rank
        for f in finalists.values()
    )


def _groups(replicates: list[ReplicateRecord]) -> dict[tuple[str, int, int], list[ReplicateRecord]]:
    groups: dict[tuple[str, int, int], list[ReplicateRecord]] = {}
    for r in replicates:
        groups.setdefault((r.algorithm, r.search, r.candidate_rank), []).append(r)
    return groups


def _unretrained_references(
    spec: StudySpec, outcomes: dict[str, TuneOutcome], replicates: list[ReplicateRecord]
) -> list[str]:
    """A line for each published reference that was not retrained, and why (it was clearly beaten)."""
    retrained = {r.source_trial for r in replicates}
    lines = []
    for algorithm, whole in outcomes.items():
        for search in whole.searches:
            scored = [t for t in whole.of_search(search).trials if t.best_val_acc is not None]
            name = algorithm if spec.searches == 1 else f"{algorithm} search {search}"
            lines += [
                _unretrained(spec, name, reference, max(scored, key=lambda t: t.best_val_acc))
                for reference in scored
                if reference.reference and reference.trial_id not in retrained
            ]
    return lines


def _unretrained(spec: StudySpec, name: str, reference, best) -> str:
    return (
        f"\n{name}'s published reference (trial {reference.trial_id}) was not retrained: after "
        f"{compared_epochs(reference, best)} epoch(s) its validation accuracy trailed the top trial's by "
        f"{reference_gap(reference, best):.1f} points, more than the {spec.reference_margin:g}-point "
        "`--reference-margin`."
    )


def _replicate_shape(replicates: list[ReplicateRecord], algorithm: str) -> str:
    mine = [r for r in replicates if r.algorithm == algorithm]
    candidates = len({(r.search, r.candidate_rank) for r in mine})
    seeds = len(mine) // candidates if candidates else 0
    return f"{candidates} x {seeds} ({len(mine)} runs)"
