"""The study specification: one dataclass, resolved from a preset plus command-line flags.

Fairness is built in: every algorithm gets the same trials, epochs, training episodes per epoch,
resources, seeds and validation/test episodes. An epoch is a fixed number of training *episodes*
(steps_per_epoch = episodes_per_epoch // meta_batch), so a tuned meta-batch size changes how the
episodes are batched, not how much data a trial sees.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from hypermaml.config import (
    ALGORITHMS,
    DATA_LOCATION,
    Algorithm,
    ConfigError,
    Dataset,
    check_settings,
    from_flat,
    setting,
    train_setting,
)

from .storage import is_remote

Preset = Literal["smoke", "default", "paper"]  # the keys of PRESETS
Searcher = Literal["tpe", "random", "gp", "cmaes", "qmc"]
Scheduler = Literal["asha", "none"]
SEARCHERS: tuple[str, ...] = get_args(Searcher)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
DATA_ROOT_ENV = "HYPERMAML_DATA_ROOT"
SPEC_FILE = "spec.json"  # in the study folder: the spec a study was started with
# Where things are, not what is computed: a study may be started again with these changed (the data,
# the Ray cluster, the MLflow store).
RELOCATABLE = DATA_LOCATION | {"address", "tracking_uri"}
SQLITE = "sqlite:///"
# Replicate seeds start here: far from the small seeds users pass with --seed, which tuning trains with.
REPLICATE_SEED_BASE = 1000
# Search k of a study with --seed s seeds its searcher, tuning trials and validation episodes with
# s + k * SEARCH_SEED_STRIDE: search 0 is the single search a study always had, and no two searches of
# any two studies (seeds below the stride) share a seed.
SEARCH_SEED_STRIDE = 100_000


@dataclass(frozen=True)
class StudySpec:
    """A study. Each field is a `python -m hpo.search` flag (hypermaml.cli); a preset supplies the
    fields a flag does not give. The run settings every trial shares (way, shot, epochs, ...; they
    make SHARED_SETTINGS) are TrainConfig's fields, help and bounds included (`train_setting`), some
    with a default of the study's; `validate` checks them as TrainConfig does, across fields too."""

    name: str = setting(
        "study name: MLflow experiment, Ray experiment folder, Optuna study prefix", "hypermaml-vs-maml"
    )
    preset: Preset = setting("budget preset: the values of the flags not given (default: default)", "default")
    dataset: Dataset = train_setting("dataset")
    data_root: str = train_setting("data_root", note=f"not given: ${DATA_ROOT_ENV}, if set")
    cache_dir: str = train_setting("cache_dir")
    download: bool = train_setting("download")
    way: int = train_setting("way")
    shot: int = train_setting("shot")
    query: int = train_setting("query")
    train_query: int = train_setting("train_query")
    algorithms: tuple[Algorithm, ...] = setting("the algorithms compared", ALGORITHMS)
    searches: int = setting(
        "independent searches per algorithm, each with its own searcher, tuning and replicate "
        "seeds, sharing nothing: the verdict's unit (with --resume, a larger value adds searches)",
        1,
        low=1,
    )
    trials: int = setting("trials per search", 8, low=1)
    epochs: int = train_setting("epochs", 5, note="per trial (ASHA's max_t)")
    episodes_per_epoch: int = setting("training episodes per epoch", 240, low=1)
    max_train_seconds: float = train_setting("max_train_seconds")
    max_train_flops: float = train_setting("max_train_flops")
    meta_batch: int = train_setting("meta_batch", 8, note="when a space does not tune it")
    val_episodes: int = train_setting("val_episodes", 100)
    test_episodes: int = train_setting("test_episodes", note="of each test set")
    test_repeats: int = setting("test sets of --test-episodes each (episode seeds) for every replicate", 1, low=1)
    replicate_top: int = setting(
        "configurations per algorithm retrained with fresh seeds (top-k by validation)", 1, low=1
    )
    replicate_seeds: int = setting(
        "fresh training seeds per retrained configuration", 3, low=2, why="the seed-to-seed variance needs two"
    )
    replicate_epochs: int = setting(
        "epochs of every retrained configuration (0: the trials' --epochs); its FLOP and time limits scale "
        "with them, the same per epoch as a trial's",
        0,
        low=0,
    )
    equivalence_margin: float = setting("points: a 95% CI inside +-margin is 'equivalent'", 1.0, above=0)
    reference_margin: float = setting(
        "points: the published reference is retrained with fresh seeds unless the top "
        "trial's validation accuracy leads it by more",
        10.0,
        low=0,
    )
    references: bool = setting(
        "run each algorithm's published configuration (a built-in space's reference) as the first trial of "
        "every search",
        True,
    )
    time_budget_s: float = setting(
        "seconds for the whole tuning, split equally (0: none)", 0.0, low=0, flag="--time-budget"
    )
    searcher: Searcher = setting("Optuna sampler", "tpe")
    search_batch: int = setting(
        "trials a search proposes at once, from the same results (its rounds): what it "
        "proposes and stops then depends on no timing",
        2,
        low=1,
    )
    scheduler: Scheduler = setting(
        "trial scheduler: asha judges a trial at each rung against the earlier rounds of its search", "asha"
    )
    grace_period: int = setting("ASHA: epochs every trial gets before it can be stopped", 1, low=1)
    reduction_factor: int = setting("ASHA: keep 1/reduction-factor of the trials at each rung", 2, low=2)
    cpus_per_trial: float = setting("CPUs per trial", 1.0, above=0)
    gpus_per_trial: float = setting("fractional GPUs per trial, e.g. 0.25", 0.0, low=0)
    max_concurrent: int = setting("trials running at once", 2, low=1)
    max_failures: int = setting("retries of a failing trial from its last checkpoint", 1, low=0)
    # The study's seed, not TrainConfig's: search k's runs train with seed + k * SEARCH_SEED_STRIDE.
    seed: int = setting("seed of the searcher and of the tuning trials", 0)
    tracking_uri: str = setting("MLflow tracking URI (default sqlite:///./mlflow.db)", "")
    storage_path: str = setting("Ray Tune storage: a folder or a URI like s3://bucket/path (default ./ray_results)", "")
    address: str = setting("Ray cluster address, e.g. auto (default $RAY_ADDRESS; none: a local Ray)", "")
    spaces: dict[str, str] = field(default_factory=dict)  # algorithm -> .py / .yaml path

    def validate(self) -> StudySpec:
        check_settings(self)
        for algorithm in self.algorithms:  # the settings every trial shares, checked where they are defined
            from_flat({**self.fixed_settings(algorithm), "steps_per_epoch": 1})
        return self

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def is_remote(self) -> bool:
        """Tune's storage is a URI (s3://...), not a folder of the driver's machine."""
        return is_remote(self.storage_path)

    @property
    def study_dir(self) -> str:
        """Where Ray Tune keeps this study (a local path or a pyarrow URI like s3://...)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def spec_file(self) -> str:
        """The spec this study was started with, beside Tune's results (local or remote)."""
        return f"{self.study_dir}/{SPEC_FILE}"

    def search_seed(self, search: int) -> int:
        """The seed of search k: its searcher's, its tuning trials' and its validation episodes'."""
        return self.seed + SEARCH_SEED_STRIDE * search

    def fixed_settings(self, algorithm: str, search: int = 0) -> dict[str, Any]:
        """The run settings every trial of `algorithm` in search k shares (the rest comes from its space)."""
        return {
            "algorithm": algorithm,
            **{name: getattr(self, name) for name in SHARED_SETTINGS},
            "eval_seed": self.search_seed(search),
            "seed": self.search_seed(search),
            "device": self.device,
        }

    @property
    def final_epochs(self) -> int:
        """The epochs each retrained configuration (replicate) trains."""
        return self.replicate_epochs or self.epochs

    @property
    def replicate_scale(self) -> float:
        """A replicate's budget in trials' budgets: it keeps a trial's episodes and limits per epoch."""
        return self.final_epochs / self.epochs

    def replicate_limits(self) -> dict[str, Any]:
        """A replicate's epochs and training limits: a trial's limits per epoch, for its epochs."""
        return {
            "epochs": self.final_epochs,
            "max_train_flops": self.max_train_flops * self.replicate_scale,
            "max_train_seconds": self.max_train_seconds * self.replicate_scale,
        }

    def replicate_seed_list(self, search: int = 0) -> list[int]:
        """Fresh training seeds of search k's replicates: the same for every candidate and algorithm
        (common random numbers), never a tuning seed, and different for every search of every study."""
        first = REPLICATE_SEED_BASE + 100 * self.search_seed(search)
        return [first + i for i in range(self.replicate_seeds)]

    def budget(self) -> dict[str, Any]:
        """The equal budget each algorithm gets, as planned (the summary states what ran)."""
        resources = f"{self.cpus_per_trial:g} CPU" + (f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else "")
        return {
            "benchmark": f"{self.dataset} {self.way}-way {self.shot}-shot, {self.query} queries per class"
            + (f" ({self.train_query} in training episodes)" if self.train_query else ""),
            "searches per algorithm": f"{self.searches} (independent: own searcher, tuning and replicate seeds)",
            "trials per search": self.trials,
            "epochs per trial": self.epochs,
            "training episodes per epoch": self.episodes_per_epoch,
            "training time per network": (
                f"at most {self.max_train_seconds:g} s (an epoch that would pass it "
                "does not start; one that reaches it stops there)"
                if self.max_train_seconds
                else "no limit"
            ),
            "training compute per network": (
                f"at most {self.max_train_flops:.3g} FLOPs (each configuration trains the "
                "outer steps its FLOPs per step buy, at most all of them; the same on any "
                "machine)"
                if self.max_train_flops
                else "its episodes"
            ),
            "validation episodes": f"{self.val_episodes} (the same fixed set for every trial)",
            "replicates": f"top {self.replicate_top} configurations x {self.replicate_seeds} fresh seeds, "
            + (
                f"{self.final_epochs} epochs each ({self.replicate_scale:.3g}x a trial's episodes and limits)"
                if self.replicate_scale != 1
                else "a trial's full budget each"
            ),
            "test": f"{self.test_repeats * self.test_episodes} episodes (the same for every replicate of both algorithms)",
            "resources per trial": resources,
            "concurrent trials": self.max_concurrent,
            "searcher / scheduler": f"{self.searcher} (seed {self.seed}) / {self.scheduler}",
            "time budget": f"{self.time_budget_s:g} s in all" if self.time_budget_s else "none",
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The StudySpec fields that are TrainConfig's (declared with train_setting): every run of the study has its value.
SHARED_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StudySpec) if "train_field" in f.metadata)

# fmt: off
# One row of values per preset, as a table (the formatter would give each value a line of its own).
PRESETS: dict[str, dict[str, Any]] = {
    # A few trials of a few short epochs: exercises everything (tests, CI). Its reference is always
    # retrained (margin 100 points), so the smoke test sees the finalist chosen against it.
    "smoke": dict(trials=4, epochs=3, episodes_per_epoch=16, meta_batch=4, query=5, val_episodes=20,
                  test_episodes=30, replicate_top=1, replicate_seeds=2, reference_margin=100),
    # This laptop-class machine, 2 CPU cores: three searches per algorithm (the verdict's unit), each
    # short, at equal compute per network on any machine; the finalists trained longer than the
    # trials that chose them, and no published configuration, which this budget starves, in the
    # searches. Measurements: docs/results.md.
    "default": dict(searches=3, trials=4, epochs=3, episodes_per_epoch=864, train_query=5, meta_batch=8,
                    val_episodes=100, test_episodes=600, replicate_top=1, replicate_seeds=2,
                    replicate_epochs=8, max_train_flops=4.725e12, references=False, search_batch=1),
    # The literature's scale, for a GPU cluster.
    "paper": dict(trials=50, epochs=40, episodes_per_epoch=3200, meta_batch=32, val_episodes=600,
                  test_episodes=600, replicate_top=3, replicate_seeds=5, gpus_per_trial=0.25, cpus_per_trial=2,
                  max_concurrent=16, search_batch=8, max_failures=3),
}
# fmt: on


def resolve(preset: str, overrides: dict[str, Any], cwd: Path | None = None) -> StudySpec:
    """Preset values, then explicit flags; fill the defaults that depend on the environment."""
    cwd = (cwd or Path.cwd()).resolve()
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values: dict[str, Any] = {
        **PRESETS[preset],
        **{k: v for k, v in overrides.items() if v is not None},
        "preset": preset,
    }
    if "algorithms" in values:
        values["algorithms"] = tuple(dict.fromkeys(values["algorithms"]))  # each once, in the order given
    if not values.get("address"):
        values["address"] = os.environ.get("RAY_ADDRESS", "")
    if not values.get("data_root"):
        values["data_root"] = os.environ.get(DATA_ROOT_ENV, "")
    if values.get("data_root"):
        values["data_root"] = str(Path(values["data_root"]).expanduser().resolve())
    if not values.get("storage_path"):
        values["storage_path"] = str(cwd / "ray_results")
    elif not is_remote(values["storage_path"]):
        values["storage_path"] = str(Path(values["storage_path"]).expanduser().resolve())  # Ray needs absolute paths
    if not values.get("tracking_uri"):
        values["tracking_uri"] = f"sqlite:///{cwd / 'mlflow.db'}"
    return StudySpec(**values).validate()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a local SQLite MLflow store, or None for any other kind of store."""
    return Path(tracking_uri[len(SQLITE) :]) if tracking_uri.startswith(SQLITE) else None


# ---- study files -------------------------------------------------------------------------------------

# The keys of `--dry-run`'s output besides "study": derived from it, so a study file may carry them.
DERIVED_KEYS = frozenset({"budget", "space_samples", "compute"})


def read_study_file(path: str | Path) -> dict[str, Any]:
    """The StudySpec fields a study file gives (YAML or JSON): what `spec.json` holds, or the whole
    output of `--dry-run` (its "study"; the derived "budget" and "space_samples" are not read back).
    Any subset of the fields works; the preset it names (or `default`) fills the rest.
    Raises ConfigError, one line naming the file and the key."""
    import yaml  # the driver's import only

    where = f"study file {path}"
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{where}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not YAML or JSON{at}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of study settings (key: value), got {type(values).__name__}")
    if isinstance(values.get("study"), dict) and set(values) <= {"study"} | DERIVED_KEYS:
        values = values["study"]  # --dry-run's output
    fields = {f.name: f for f in dataclasses.fields(StudySpec)}
    hints = get_type_hints(StudySpec)
    read = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        read[key] = _file_value(where, key, value, hints[key])
    return read


def _file_value(where: str, key: str, value: Any, hint: Any) -> Any:
    """A study file's value as the field's type, or a ConfigError naming the key."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: key {key!r}: expected {expected}, got {value!r}")

    origin = get_origin(hint)
    if origin is tuple:
        items = value if isinstance(value, list) else None
        if items is None:
            raise wrong("a list")
        return tuple(_file_value(where, key, item, get_args(hint)[0]) for item in items)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise wrong("a mapping of algorithm to file path")
        return dict(value)
    if origin is Literal:
        if value not in get_args(hint):
            raise wrong("one of " + ", ".join(map(str, get_args(hint))))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if value is None:
        return ""  # an empty YAML value: the field's default for its environment (resolve)
    if not isinstance(value, str):
        raise wrong("a string")
    return value
