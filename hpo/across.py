"""`python -m hpo.across NAME NAME ...`: the head-to-head over several finished studies of one
procedure, each study (its search, its fresh-seed replicates, its test) as the unit.

One study's CI covers training seeds and test episodes given the configurations its search found;
a rerun with another `--seed` can find other ones, and on a small budget that moves the effect by
more than the CI (docs/results.md, "The default study"). Reruns of the whole procedure differ only in
the searcher seed, so their effects are a sample of what the procedure gives, and a t interval over
them (`hpo.stats.compare_searches`) is the CI of a claim about the algorithms at that budget.

It reads the studies from MLflow, as `python -m hpo.search` wrote them: the `study` run (the spec as
params, the effect as `effect_points`) and the final configurations' replicate runs (`hpo.final`,
`test_acc`). Studies that differ in anything but their name, seed and where they ran are not reruns
of one procedure, and are refused, as are two studies with the same seed.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from hypermaml.cli import Parser

from .formatting import signed
from .provenance import COMMIT_TAG, DIRTY_TAG, UNKNOWN
from .spec import RELOCATABLE, sqlite_path
from .stats import SearchComparison, compare_searches
from .tracking import ROLE_TAG, STUDY_TAG

# Settings that say where or under which name a study ran, not what it did: they may differ between
# reruns. Every other spec field must be equal (the preset only supplied values, which are compared).
NOT_THE_PROCEDURE = RELOCATABLE | {"name", "seed", "preset", "storage_path", "max_failures"}


class AcrossError(Exception):
    """Input that cannot give a comparison: one line for the user, exit 2."""


def build_parser() -> Parser:
    parser = Parser(prog="python -m hpo.across", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help="finished studies (their --name), at least two")
    parser.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{Path.cwd() / 'mlflow.db'}",
        help="the MLflow store the studies logged to (default sqlite:///./mlflow.db)",
    )
    return parser


@dataclass(frozen=True)
class FinishedStudy:
    """What the comparison needs of one finished study, as its MLflow runs hold it."""

    name: str
    seed: int  # the searcher's and tuning trials' seed
    commit: str
    dirty: str  # "true" when it ran with uncommitted changes to tracked files, "false", or "unknown"
    params: dict[str, str]  # the study's spec, as logged
    algorithms: tuple[str, ...]
    effect: float  # challenger - baseline, points
    verdict: str
    accuracies: dict[str, list[float]]  # algorithm -> its final configuration's per-seed test accuracies (points)

    def final_mean(self, algorithm: str) -> float:
        values = self.accuracies.get(algorithm)
        return sum(values) / len(values) if values else float("nan")


def read_study(client, name: str) -> FinishedStudy:
    """The study's spec, effect, commit and each algorithm's final per-seed test accuracies (points)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise AcrossError(f"no study named {name!r} in this MLflow store")
    ids = [experiment.experiment_id]
    studies = client.search_runs(ids, f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'study'")
    run = studies[0] if studies else None
    if run is None or "verdict.kind" not in run.data.tags or "effect_points" not in run.data.metrics:
        raise AcrossError(f"study {name!r} has no verdict: it has not finished, or had too few replicates to compare")
    finals = client.search_runs(
        ids,
        f"tags.`{STUDY_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'replicate' and tags.`hpo.final` = 'true'",
        max_results=10000,
    )
    accuracies: dict[str, list[float]] = {}
    for replicate in finals:
        if "test_acc" in replicate.data.metrics:
            accuracies.setdefault(replicate.data.tags["algorithm"], []).append(replicate.data.metrics["test_acc"])
    params = run.data.params
    return FinishedStudy(
        name,
        int(params["seed"]),
        run.data.tags.get(COMMIT_TAG, UNKNOWN),
        run.data.tags.get(DIRTY_TAG, UNKNOWN),
        params,
        tuple(ast.literal_eval(params["algorithms"])),
        run.data.metrics["effect_points"],
        run.data.tags["verdict.kind"],
        accuracies,
    )


def check_reruns(studies: list[FinishedStudy]) -> None:
    """Refuse studies that are not reruns of one procedure with distinct searcher seeds."""
    first = studies[0]
    for other in studies[1:]:
        keys = sorted((set(first.params) | set(other.params)) - NOT_THE_PROCEDURE)
        differing = [k for k in keys if first.params.get(k) != other.params.get(k)]
        if differing:
            k = differing[0]
            raise AcrossError(
                f"studies {first.name!r} and {other.name!r} differ in {k} "
                f"({first.params.get(k)} vs {other.params.get(k)}): not reruns of one procedure"
            )
    seen: dict[int, str] = {}
    for study in studies:
        if study.seed in seen:
            raise AcrossError(
                f"studies {seen[study.seed]!r} and {study.name!r} both used --seed {study.seed}: "
                "the same search twice is not a rerun"
            )
        seen[study.seed] = study.name


def table(studies: list[FinishedStudy], result: SearchComparison) -> str:
    b, c = result.baseline, result.challenger
    lines = [
        f"| study | seed | commit | {b} final | {c} final | {c} − {b} | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for study in studies:
        lines.append(
            f"| {study.name} | {study.seed} | {study.commit[:7]} | {study.final_mean(b):.2f}% "
            f"| {study.final_mean(c):.2f}% | {signed(study.effect, keep_sign=True)} | {study.verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if len(set(args.names)) < 2:
            raise AcrossError("give at least two different studies: the unit here is the study")
        store = sqlite_path(args.tracking_uri)
        if store is not None and not store.is_file():  # MLflow would create an empty one
            raise AcrossError(f"no MLflow store at {args.tracking_uri}")
        client = MlflowClient(args.tracking_uri)
        studies = [read_study(client, name) for name in dict.fromkeys(args.names)]
        check_reruns(studies)
        baseline, challenger = studies[0].algorithms[:2]
        margin = float(studies[0].params["equivalence_margin"])
        result = compare_searches(baseline, challenger, [s.effect for s in studies], margin=margin)
    except AcrossError as error:
        return parser.fail(error)
    print(table(studies, result))
    print()
    print(result.verdict.sentence)
    for line in provenance_warnings(studies):
        print(line, file=sys.stderr)
    return 0


def provenance_warnings(studies: list[FinishedStudy]) -> list[str]:
    """Reruns of one procedure should run one code: say when they did not, or when it cannot be told."""
    lines = []
    commits = sorted({s.commit[:7] for s in studies})
    if len(commits) > 1:
        lines.append(
            f"warning: the studies ran different commits ({', '.join(commits)}); a change of the search "
            "spaces or the training between them is part of what this interval averages over"
        )
    dirty = [s.name for s in studies if s.dirty != "false"]
    if dirty:
        lines.append(
            f"warning: {', '.join(dirty)} ran with uncommitted changes, or from a tree whose state is "
            "unknown: their code is not fully named by their commit"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
