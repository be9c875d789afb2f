"""`python -m hpo.search`: tune HyperMAML and MAML with the same budget, then compare them on test.

    python -m hpo.search                                   # the default study on this machine
    python -m hpo.search --preset smoke --data-root DIR --tracking-uri URI --storage-path DIR --name N
    python -m hpo.search --dry-run                         # print the resolved study and space samples

Everything a user can get wrong is checked before Ray starts (one error line, exit code 2).
Re-running with the same --name (or --resume) continues an interrupted study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import optuna

from hypermaml.config import ALGORITHMS, DATASETS, ConfigError, from_flat
from hypermaml.data import DataError
from hypermaml.training import load_data

from .spaces import SpaceError, check_space, load_space, reference_point, sample_space
from .spec import DATA_ROOT_ENV, PRESETS, SCHEDULERS, SEARCHERS, SPEC_FILE, StudySpec, resolve

EXIT_USAGE = 2
# Where things are, not what is computed: a study may be continued with these changed.
RELOCATABLE = frozenset({"address", "data_root", "cache_dir", "tracking_uri"})


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hpo.search", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="budget preset (default: default)")
    p.add_argument("--name", help="study name: MLflow experiment, Ray experiment folder, Optuna study prefix")
    p.add_argument("--data-root", help=f"dataset folder (or ${DATA_ROOT_ENV})")
    p.add_argument("--cache-dir", help="decoded-image cache (default $HYPERMAML_CACHE or ~/.cache/hypermaml)")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--query", type=int)
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS)
    p.add_argument("--trials", type=int, help="trials per algorithm")
    p.add_argument("--epochs", type=int, help="epochs per trial")
    p.add_argument("--episodes-per-epoch", type=int, help="training episodes per epoch")
    p.add_argument("--meta-batch", type=int, help="tasks per step when a space does not tune it")
    p.add_argument("--val-episodes", type=int)
    p.add_argument("--test-episodes", type=int)
    p.add_argument("--test-repeats", type=int, help="test sets of --test-episodes each (episode seeds) for every replicate")
    p.add_argument("--replicate-top", type=int, help="configurations per algorithm retrained with fresh seeds (top-k by validation)")
    p.add_argument("--replicate-seeds", type=int, help="fresh training seeds per retrained configuration (at least 2)")
    p.add_argument("--equivalence-margin", type=float, help="points: a 95%% CI inside +-margin is 'equivalent' (default 1.0)")
    p.add_argument("--time-budget", type=float, dest="time_budget_s", help="seconds for the whole tuning, split equally")
    p.add_argument("--searcher", choices=SEARCHERS)
    p.add_argument("--scheduler", choices=SCHEDULERS)
    p.add_argument("--grace-period", type=int, help="ASHA: epochs every trial gets before it can be stopped")
    p.add_argument("--reduction-factor", type=int, help="ASHA: keep 1/reduction-factor of the trials at each rung")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractional GPUs per trial, e.g. 0.25")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--max-failures", type=int, help="retries of a failing trial from its last checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.add_argument("--storage-path", help="Ray Tune storage: a folder or a URI like s3://bucket/path (default ./ray_results)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address, e.g. auto (or $RAY_ADDRESS)")
    p.add_argument("--space", action="append", default=[], metavar="[ALGORITHM=]PATH",
                   help="a search space file (.py with space(trial[, epochs]) or .yaml) replacing the built-in one")
    p.add_argument("--resume", action="store_true", help="continue the study of this --name (re-running the name does too)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved study and one sample of each space; start nothing")
    p.add_argument("--verbose", action="store_true",
                   help="also print Ray Tune's status tables (default: one line per trial event)")
    return p


def parse_spaces(entries: list[str], algorithms: tuple[str, ...]) -> dict[str, str]:
    spaces = {}
    for entry in entries:
        algorithm, sep, path = entry.partition("=")
        if not sep:
            if len(algorithms) != 1:
                raise UsageError(f"--space {entry}: say which algorithm it is for, e.g. --space maml={entry}")
            algorithm, path = algorithms[0], entry
        if algorithm not in algorithms:
            raise UsageError(f"--space {entry}: unknown algorithm {algorithm!r}; the study has {', '.join(algorithms)}")
        spaces[algorithm] = path
    return spaces


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    overrides = {k: v for k, v in vars(args).items() if k not in ("preset", "space", "resume", "dry_run", "verbose")}
    if overrides.get("algorithms"):
        overrides["algorithms"] = tuple(dict.fromkeys(overrides["algorithms"]))
    spec = resolve(args.preset, overrides)
    spec = StudySpec(**{**spec.to_dict(), "spaces": parse_spaces(args.space, spec.algorithms)})
    for name in ("trials", "epochs", "episodes_per_epoch", "meta_batch", "val_episodes", "test_episodes", "test_repeats",
                 "max_concurrent", "grace_period", "replicate_top"):
        if getattr(spec, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
    if spec.replicate_seeds < 2:
        raise UsageError(f"--replicate-seeds must be at least 2 (the seed variance needs two), got {spec.replicate_seeds}")
    if not spec.equivalence_margin > 0:
        raise UsageError(f"--equivalence-margin must be positive, got {spec.equivalence_margin}")
    if spec.reduction_factor < 2:
        raise UsageError(f"--reduction-factor must be at least 2, got {spec.reduction_factor}")
    if spec.cpus_per_trial <= 0 or spec.gpus_per_trial < 0 or spec.max_failures < 0 or spec.time_budget_s < 0:
        raise UsageError("resources, --max-failures and --time-budget must not be negative (and a trial needs CPUs)")
    if not spec.data_root:
        raise UsageError(f"no data: pass --data-root DIR or set ${DATA_ROOT_ENV}")
    return spec


def stored_spec(spec: StudySpec) -> StudySpec | None:
    """The spec a study of this --name was started with, or None if there is none (or it is remote)."""
    path = Path(spec.study_dir) / SPEC_FILE
    if "://" in spec.storage_path or not path.is_file():
        return None
    values = json.loads(path.read_text())
    values["algorithms"] = tuple(values["algorithms"])
    known = {f.name for f in dataclasses.fields(StudySpec)}
    return StudySpec(**{k: v for k, v in values.items() if k in known})


def check_name(spec: StudySpec, resume: bool) -> StudySpec:
    """A re-run of an existing --name must ask for the same study; --resume continues it as stored."""
    stored = stored_spec(spec)
    if stored is None:
        if resume and "://" not in spec.storage_path:
            raise UsageError(f"--resume: no study {spec.name!r} in {spec.storage_path}")
        return spec
    if resume:
        return stored
    current = spec.to_dict()
    differing = [k for k, v in stored.to_dict().items() if k not in RELOCATABLE and current.get(k) != v]
    if differing:
        changes = ", ".join(f"{k} {stored.to_dict()[k]!r} -> {current[k]!r}" for k in differing)
        raise UsageError(f"study {spec.name!r} exists with other settings ({changes}); "
                         f"pass --resume to continue it as stored, or choose a new --name")
    return spec


def preflight(spec: StudySpec, resume: bool) -> dict:
    """Everything that can fail because of the user's input, checked before Ray starts."""
    fixed = {**spec.fixed_settings(spec.algorithms[0]), "steps_per_epoch": 1}
    try:
        load_data(from_flat(fixed))  # missing data, unknown layout, way/shot that do not fit a split
    except (ConfigError, DataError) as error:
        raise UsageError(str(error)) from None
    spaces = {}
    for algorithm in spec.algorithms:
        try:
            spaces[algorithm] = load_space(algorithm, spec.spaces.get(algorithm), spec.epochs, spec.shot)
            check_space(algorithm, spaces[algorithm], {**spec.fixed_settings(algorithm), "steps_per_epoch": 1}, seed=spec.seed)
        except SpaceError as error:
            raise UsageError(str(error)) from None
    if "://" not in spec.storage_path:
        _check_writable(Path(spec.storage_path))
    if spec.tracking_uri.startswith("sqlite:///"):
        _check_writable(Path(spec.tracking_uri[len("sqlite:///"):]).parent)
    return spaces


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"storage {folder} is not writable ({error.strerror or error})") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" INFO lines for every space check
    try:
        spec = check_name(resolve_spec(args), args.resume)  # first: a stale name must write nothing
        spaces = preflight(spec, args.resume)
        references = {a: r for a in spec.algorithms
                      if (r := reference_point(a, spec.spaces.get(a), spec.epochs, spec.shot)) is not None}
    except UsageError as error:
        print(f"python -m hpo.search: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print(json.dumps({"study": spec.to_dict(), "budget": spec.budget(),
                          "space_samples": {a: sample_space(spaces[a], seed=spec.seed) for a in spec.algorithms}},
                         indent=2, default=str))
        return 0
    from .runner import run_study  # imports Ray: only once the input is known to be good

    run_study(spec, spaces, references, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
