"""`python -m hpo.search`: tune HyperMAML and MAML with the same budget, then compare them on test.

    python -m hpo.search                                   # the default study (Omniglot fetched into the cache folder)
    python -m hpo.search --data-root DIR                   # the default study on the Omniglot zips in DIR
    python -m hpo.search --preset smoke --data-root DIR --tracking-uri URI --storage-path DIR --name N
    python -m hpo.search --dry-run                         # print the resolved study and space samples
    python -m hpo.search --config study.yaml               # a study file (what --dry-run prints); flags override it

Everything a user can get wrong is checked before Ray starts (one error line, exit code 2).
Re-running with the same --name (or --resume) continues an interrupted study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import optuna

from hypermaml import cli
from hypermaml.config import ConfigError, DataError, from_flat
from hypermaml.fitting import load_data

from . import storage
from .spaces import SpaceError, check_space, load_space, reference_point, sample_space
from .spec import RELOCATABLE, StudySpec, read_study_file, resolve, sqlite_path


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m hpo.search", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a study file, YAML or JSON: what --dry-run prints or spec.json holds, or any part of it; "
        "the flags given beside it override it",
    )
    cli.add_fields(p, StudySpec, skip=("spaces",), show_defaults=False)
    p.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="[ALGORITHM=]PATH",
        help="a search space file (.py with space(trial[, epochs]) or .yaml) replacing the built-in one",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the study of this --name (re-running the name does too)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved study and one sample of each space; start nothing"
    )
    p.add_argument(
        "--verbose", action="store_true", help="also print Ray Tune's status tables (default: one line per trial event)"
    )
    return p


def parse_spaces(entries: list[str], algorithms: tuple[str, ...]) -> dict[str, str]:
    spaces = {}
    for entry in entries:
        algorithm, sep, path = entry.partition("=")
        if not sep:
            if len(algorithms) != 1:
                raise ConfigError(f"--space {entry}: say which algorithm it is for, e.g. --space maml={entry}")
            algorithm, path = algorithms[0], entry
        if algorithm not in algorithms:
            raise ConfigError(
                f"--space {entry}: unknown algorithm {algorithm!r}; the study has {', '.join(algorithms)}"
            )
        spaces[algorithm] = path
    return spaces


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    """The study file's values (--config), then the flags given beside it, then the preset's values."""
    values = {**(read_study_file(args.config) if args.config else {}), **cli.given(args, StudySpec)}
    spec = resolve(values.pop("preset", StudySpec.preset), values)
    return dataclasses.replace(spec, spaces={**spec.spaces, **parse_spaces(args.space, spec.algorithms)})


def stored_spec(spec: StudySpec) -> StudySpec | None:
    """The spec a study of this --name was started with (beside its Tune results, local or remote),
    or None if there is none."""
    text = storage.read_text(spec.spec_file)
    if text is None:
        return None
    values = json.loads(text)
    values["algorithms"] = tuple(values["algorithms"])
    known = {f.name for f in dataclasses.fields(StudySpec)}
    return StudySpec(**{k: v for k, v in values.items() if k in known})


def check_name(spec: StudySpec, resume: bool, grow_to: int | None = None) -> StudySpec:
    """A re-run of an existing --name must ask for the same study; --resume continues it as stored, and
    with a larger --searches (`grow_to`) adds searches to it: only the new ones run, and the verdict is
    computed again over all of them."""
    try:
        stored = stored_spec(spec)
    except OSError as error:  # remote storage that cannot be reached (credentials, endpoint, bucket)
        raise ConfigError(f"storage {spec.storage_path} cannot be read: {str(error).splitlines()[0]}") from None
    if stored is None:
        if resume:
            raise ConfigError(f"--resume: no study {spec.name!r} in {spec.storage_path}")
        return spec
    if resume:
        if grow_to is None or grow_to == stored.searches:
            return stored
        if grow_to < stored.searches:
            raise ConfigError(
                f"--searches {grow_to}: study {spec.name!r} has {stored.searches} searches already; "
                "a study can only grow"
            )
        return dataclasses.replace(stored, searches=grow_to)
    current = spec.to_dict()
    differing = [k for k, v in stored.to_dict().items() if k not in RELOCATABLE and current.get(k) != v]
    if differing:
        changes = ", ".join(f"{k} {stored.to_dict()[k]!r} -> {current[k]!r}" for k in differing)
        raise ConfigError(
            f"study {spec.name!r} exists with other settings ({changes}); "
            f"pass --resume to continue it as stored, or choose a new --name"
        )
    return spec


def preflight(spec: StudySpec) -> dict:
    """Everything that can fail because of the user's input, checked before Ray starts (fetching
    Omniglot first when the study has no data root, or --download and none in it)."""
    load_data(
        from_flat({**spec.fixed_settings(spec.algorithms[0]), "steps_per_epoch": 1})
    )  # missing data, way/shot that do not fit
    spaces = {}
    for algorithm in spec.algorithms:
        spaces[algorithm] = load_space(algorithm, spec.spaces.get(algorithm), spec.epochs, spec.shot)
        check_space(
            algorithm, spaces[algorithm], {**spec.fixed_settings(algorithm), "steps_per_epoch": 1}, seed=spec.seed
        )
    if not spec.is_remote:
        _check_writable(Path(spec.storage_path))
    if (store := sqlite_path(spec.tracking_uri)) is not None:
        _check_writable(store.parent)
    return spaces


def _check_writable(folder: Path) -> None:
    """The folder is writable, or can be created: checked without creating anything (a dry run leaves no trace)."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"storage {folder} is not writable ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"storage {folder} is not writable ({existing} is read-only)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" INFO lines for every space check
    try:
        spec = resolve_spec(args)
        if not (args.dry_run and spec.is_remote):  # a dry run reads no remote storage: it may be offline
            spec = check_name(
                spec, args.resume, cli.given(args, StudySpec).get("searches")
            )  # a stale name writes nothing
        spaces = preflight(spec)
        references = {
            a: r
            for a in spec.algorithms
            if spec.references and (r := reference_point(a, spec.spaces.get(a), spec.epochs, spec.shot)) is not None
        }
    except (ConfigError, DataError, SpaceError) as error:
        return parser.fail(error)
    if args.dry_run:
        from .compute import estimate  # imports torch's training code: only for a dry run

        print(
            json.dumps(
                {
                    "study": spec.to_dict(),
                    "budget": spec.budget(),
                    "space_samples": {a: sample_space(spaces[a], seed=spec.seed) for a in spec.algorithms},
                    "compute": estimate(spec, spaces, references),
                },
                indent=2,
                default=str,
            )
        )
        return 0
    if (store := sqlite_path(spec.tracking_uri)) is not None:  # SQLite creates its file, not the folder it is in
        store.parent.mkdir(parents=True, exist_ok=True)
    from .runner import run_study  # imports Ray: only once the input is known to be good

    return run_study(spec, spaces, references, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
