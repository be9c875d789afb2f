"""Configuration: one dataclass per concern, the single source of truth.

`TrainConfig` holds data and training settings shared by both algorithms; `MAMLConfig` and
`HyperMAMLConfig` hold each algorithm's own hyperparameters. A `RunConfig` pairs a TrainConfig with
one algorithm config. The CLI flags (`hypermaml.train`, through `hypermaml.cli`), the checks
(`check_settings`: each field's bounds and Literal values, declared with `setting`), checkpoints,
the study's search spaces, its settings shared with every run (`train_setting`) and the MLflow params
are all derived from these fields, flattened by `to_flat` / `from_flat`: field names are unique across
the three classes, so a flat dict of plain values is a complete run spec.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

Algorithm = Literal["maml", "hypermaml"]
Dataset = Literal["omniglot", "miniimagenet", "cub"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
DATASETS: tuple[str, ...] = get_args(Dataset)
# Images per class in the Omniglot image set; shot + query must fit in it.
OMNIGLOT_IMAGES_PER_CLASS = 20


class ConfigError(ValueError):
    """An invalid setting a user can fix; the message is one line naming the setting."""


class DataError(ValueError):
    """A problem with the data a user can fix (missing root, missing files, bad split); the message is one line
    naming the path and what to do."""


def setting(
    help: str,
    default: Any = MISSING,
    *,
    low: float | None = None,
    above: float | None = None,
    flag: str | None = None,
    why: str | None = None,
) -> Any:
    """A config field with what the CLI and the checks read from it.

    help: the flag's help. low: the smallest allowed value; above: a value it must exceed (0: positive).
    flag: the command-line flag, when it is not --field-name. why: added to the message of a broken bound.
    `check_settings` enforces the bounds and a Literal type's values; `hypermaml.cli` builds the flags.
    """
    metadata = {"help": help, "low": low, "above": above, "flag": flag, "why": why}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


def check_settings(config: Any) -> None:
    """Check every field of a config dataclass against its bounds and its Literal values (ConfigError)."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        allowed = literal_choices(hints[f.name])
        if allowed is not None:
            for item in value if isinstance(value, tuple) else (value,):
                _check_choice(f.name, item, allowed)
        low, above = f.metadata.get("low"), f.metadata.get("above")
        if low is None and above is None:
            continue
        why = f" ({f.metadata['why']})" if "why" in f.metadata else ""
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
        if low is not None and value < low:
            raise ConfigError(f"{f.name} must be at least {low}, got {value}{why}")
        if above is not None and not value > above:
            bound = "a positive number" if above == 0 else f"greater than {above}"
            raise ConfigError(f"{f.name} must be {bound}, got {value}{why}")


def literal_choices(hint: Any) -> tuple | None:
    """The allowed values of a Literal type, or of the items of a tuple[Literal, ...]; else None."""
    if get_origin(hint) is tuple:
        hint = get_args(hint)[0]
    return get_args(hint) if get_origin(hint) is Literal else None


@dataclass(frozen=True)
class TrainConfig:
    """Data, episodes and the outer (meta) training loop, shared by both algorithms."""

    algorithm: Algorithm = setting("which few-shot learner to meta-train", "maml")
    dataset: Dataset = setting("benchmark", "omniglot")
    data_root: str = setting(
        "folder holding the dataset (for Omniglot: the two zips or their folders); "
        "none: Omniglot in the cache folder, fetched when absent",
        "",
    )
    cache_dir: str = setting(
        "where decoded images (and fetched Omniglot) are kept; none: $HYPERMAML_CACHE or ~/.cache/hypermaml", ""
    )
    download: bool = setting(
        "fetch Omniglot into data_root when it is missing (without a data_root it always is)", False
    )
    way: int = setting("classes per episode (N)", 5, low=2)
    shot: int = setting("support images per class (K)", 1, low=1)
    query: int = setting("query images per class (Q)", 15, low=1)
    train_query: int = setting(
        "query images per class in meta-training episodes; 0: the same as --query "
        "(validation and test always use --query)",
        0,
        low=0,
    )
    epochs: int = setting("training epochs; validation and a checkpoint after each", 10, low=1)
    max_train_seconds: float = setting(
        "at most this many seconds of meta-training (validation excluded): an epoch predicted from the epochs so "
        "far to pass it does not start, and an epoch that reaches it ends after that outer step; 0: no limit. "
        "A safety stop: the seconds depend on the machine and its load (equal compute anywhere: --max-train-flops)",
        0.0,
        low=0,
    )
    max_train_flops: float = setting(
        "at most this many floating-point operations of meta-training per network (hypermaml.flops counts one "
        "outer step of the configuration): every epoch trains the same number of outer steps, steps_per_epoch "
        "or fewer, so that the run's steps fit the budget; the same steps on any machine; 0: no limit",
        0.0,
        low=0,
    )
    steps_per_epoch: int = setting("meta-batches (outer optimizer steps) per epoch", 100, low=1)
    meta_batch: int = setting("tasks per outer step (T)", 32, low=1)
    outer_lr: float = setting("Adam learning rate of the outer loop", 1e-3, above=0)
    val_episodes: int = setting("fixed validation episodes evaluated after each epoch", 200, low=1)
    test_episodes: int = setting("test episodes (the literature uses 600)", 600, low=1)
    eval_seed: int = setting("seed of the fixed validation/test episode sets (same for every run)", 0)
    seed: int = setting("seed of model init and training episodes", 0)
    device: str = setting("torch device: cpu, cuda, cuda:1, ...", "cpu")
    task_chunk: int = setting(
        "tasks vectorized together in one pass (0: 4 on CPU, all of the meta-batch on a GPU)", 0, low=0
    )
    dense_conv: bool = setting(
        "backbone weights shared by all tasks run one dense convolution over all tasks' images "
        "(else the grouped convolution that per-task weights use); same results up to float rounding",
        True,
    )
    channels_last: bool = setting(
        "keep images and activations of the dense convolutions in channels-last memory order", False
    )
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "meta-training forward in float32, or under bfloat16 autocast (convolutions and matmuls in bf16); auto: bf16 "
        "where the device computes it natively (a CUDA GPU with bf16, a CPU with avx512_bf16 or AMX), else fp32; "
        "parameters, optimizer and evaluation stay float32",
        "auto",
    )
    compile: bool = setting(
        "torch.compile the meta-loss (static shapes: each task-chunk shape compiles once, "
        "in the first outer step that meets it); same results up to float rounding",
        False,
    )

    @property
    def training_query(self) -> int:
        """Query images per class of the meta-training episodes."""
        return self.train_query or self.query

    def validate(self) -> None:
        check_settings(self)
        for name, query in (("query", self.query), ("train_query", self.training_query)):
            if self.dataset == "omniglot" and self.shot + query > OMNIGLOT_IMAGES_PER_CLASS:
                raise ConfigError(
                    f"shot + {name} = {self.shot + query} exceeds the {OMNIGLOT_IMAGES_PER_CLASS} images per Omniglot class"
                )
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")


# TrainConfig settings that say where the data is (and whether to fetch it), not what is computed: a run
# may be resumed, and a study started again, with them changed (hypermaml.fitting.RESUMABLE_CHANGES,
# hpo.spec.RELOCATABLE, each with its own additions).
DATA_LOCATION = frozenset({"data_root", "cache_dir", "download"})


def train_setting(name: str, default: Any = MISSING, *, note: str = "") -> Any:
    """TrainConfig's field `name`, declared once, as a field of another config dataclass (the run settings
    hpo.spec.StudySpec shares with every run): TrainConfig's help and bounds; `default` in place of
    TrainConfig's default when given; `note` appended to the help ("<help>; <note>") for what the field
    also means there. Its metadata names the TrainConfig field ("train_field")."""
    train = next(f for f in fields(TrainConfig) if f.name == name)
    metadata = {**train.metadata, "train_field": name}
    if note:
        metadata["help"] = f"{metadata['help']}; {note}"
    return field(default=train.default if default is MISSING else default, metadata=metadata)


@dataclass(frozen=True)
class MAMLConfig:
    """MAML (Finn et al. 2017): a few gradient steps on the support set, from a meta-learned init."""

    inner_steps: int = setting("inner gradient steps during meta-training", 1, low=1)
    inner_lr: float = setting("inner-loop learning rate", 0.4, above=0)
    first_order: bool = setting("first-order MAML: no gradient through the inner-loop gradients", False)
    inner_params: Literal["all", "head"] = setting("parameters adapted in the inner loop", "all")
    test_inner_steps: int = setting("inner steps at validation/test (0 = same as inner_steps)", 0, low=0)

    def validate(self) -> None:
        check_settings(self)

    @property
    def eval_inner_steps(self) -> int:
        return self.test_inner_steps or self.inner_steps


@dataclass(frozen=True)
class HyperMAMLConfig:
    """HyperMAML (Przewięźlikowski et al.): a hypernetwork outputs the classifier-head update."""

    hn_hidden: int = setting("hypernetwork hidden width", 512, low=1)
    hn_layers: int = setting("Linear layers in the hypernetwork", 3, low=2)
    aggregation: Literal["mean", "concat"] = setting("how the K shots of a class are combined", "mean")
    delta_penalty: float = setting("L2 penalty on the hypernetwork's update", 0.0, low=0)
    warmup: bool = setting("start with MAML on the head, then switch linearly to the hypernetwork", False)
    warmup_epochs: int = setting("epochs of pure MAML warm-up", 1, low=0)
    switch_epochs: int = setting("epochs of the linear MAML -> hypernetwork switch", 1, low=0)
    warmup_inner_steps: int = setting("inner steps of the warm-up MAML", 1, low=1)
    warmup_inner_lr: float = setting("inner learning rate of the warm-up MAML", 0.1, above=0)

    def validate(self) -> None:
        check_settings(self)

    def maml_weight(self, epoch: int) -> float:
        """Weight p of the MAML update at a 0-based epoch; the hypernetwork gets 1 - p.

        p = 1 during warm-up (epochs < W), falls linearly over the S switch epochs as
        (W + S - epoch) / (S + 1), then 0 — the reference schedule, counted in our epochs.
        """
        if not self.warmup:
            return 0.0
        w, s = self.warmup_epochs, self.switch_epochs
        if epoch < w:
            return 1.0
        if epoch < w + s:
            return (w + s - epoch) / (s + 1)
        return 0.0


AlgorithmConfig = MAMLConfig | HyperMAMLConfig
ALGORITHM_CONFIGS: dict[str, type] = {"maml": MAMLConfig, "hypermaml": HyperMAMLConfig}


@dataclass(frozen=True)
class RunConfig:
    """A complete run: shared training settings plus the chosen algorithm's settings."""

    train: TrainConfig
    algo: AlgorithmConfig

    def validate(self) -> RunConfig:
        self.train.validate()
        expected = ALGORITHM_CONFIGS[self.train.algorithm]
        if not isinstance(self.algo, expected):
            raise ConfigError(
                f"algorithm {self.train.algorithm!r} needs a {expected.__name__}, got {type(self.algo).__name__}"
            )
        self.algo.validate()
        return self


def to_flat(config: RunConfig) -> dict[str, Any]:
    """Flat {field: value} of the train and algorithm settings (names are unique across both)."""
    return {**dataclasses.asdict(config.train), **dataclasses.asdict(config.algo)}


def from_flat(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a flat dict; unknown keys are an error."""
    algorithm = values.get("algorithm", TrainConfig.algorithm)
    _check_choice("algorithm", algorithm, ALGORITHMS)
    algo_cls = ALGORITHM_CONFIGS[algorithm]
    train_names = {f.name for f in fields(TrainConfig)}
    algo_names = {f.name for f in fields(algo_cls)}
    unknown = set(values) - train_names - algo_names
    if unknown:
        raise ConfigError(f"unknown setting(s) for {algorithm}: {', '.join(sorted(unknown))}")
    train = TrainConfig(**{k: _coerce(TrainConfig, k, v) for k, v in values.items() if k in train_names})
    algo = algo_cls(**{k: _coerce(algo_cls, k, v) for k, v in values.items() if k in algo_names})
    return RunConfig(train, algo).validate()


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Accept the plain values that come back from CLIs, YAML and MLflow (e.g. 3.0 for an int)."""
    hint = get_type_hints(cls)[name]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if hint is str or get_origin(hint) is Literal:
        return str(value)
    return value


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
