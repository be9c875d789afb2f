"""Configuration: one dataclass per concern, the single source of truth.

`TrainConfig` holds data and training settings shared by both algorithms; `MAMLConfig` and
`HyperMAMLConfig` hold each algorithm's own hyperparameters. A `RunConfig` pairs a TrainConfig with
one algorithm config. The CLI flags (`hypermaml.train`), checkpoints, the study's search spaces and
the MLflow params are all derived from these fields, flattened by `to_flat` / `from_flat`: field
names are unique across the three classes, so a flat dict of plain values is a complete run spec.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

ALGORITHMS = ("maml", "hypermaml")
DATASETS = ("omniglot", "miniimagenet", "cub")
# Images per class in the Omniglot image set; shot + query must fit in it.
OMNIGLOT_IMAGES_PER_CLASS = 20


class ConfigError(ValueError):
    """An invalid setting a user can fix; the message is one line naming the setting."""


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """Data, episodes and the outer (meta) training loop, shared by both algorithms."""

    algorithm: Literal["maml", "hypermaml"] = _doc("which few-shot learner to meta-train", default="maml")
    dataset: Literal["omniglot", "miniimagenet", "cub"] = _doc("benchmark", default="omniglot")
    data_root: str = _doc("folder holding the dataset (for Omniglot: the two zips or their folders)", default="")
    cache_dir: str = _doc("where decoded image tensors are cached (default: $HYPERMAML_CACHE or ~/.cache/hypermaml)", default="")
    download: bool = _doc("download Omniglot into data_root when it is missing", default=False)
    way: int = _doc("classes per episode (N)", default=5)
    shot: int = _doc("support images per class (K)", default=1)
    query: int = _doc("query images per class (Q)", default=15)
    epochs: int = _doc("training epochs; validation and a checkpoint after each", default=10)
    steps_per_epoch: int = _doc("meta-batches (outer optimizer steps) per epoch", default=100)
    meta_batch: int = _doc("tasks per outer step (T)", default=32)
    outer_lr: float = _doc("Adam learning rate of the outer loop", default=1e-3)
    val_episodes: int = _doc("fixed validation episodes evaluated after each epoch", default=200)
    test_episodes: int = _doc("test episodes (the literature uses 600)", default=600)
    eval_seed: int = _doc("seed of the fixed validation/test episode sets (same for every run)", default=0)
    seed: int = _doc("seed of model init and training episodes", default=0)
    device: str = _doc("torch device: cpu, cuda, cuda:1, ...", default="cpu")
    task_chunk: int = _doc("tasks vectorized together in one pass (0 = all of the meta-batch)", default=0)

    def validate(self) -> None:
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("dataset", self.dataset, DATASETS)
        for name in ("way", "shot", "query", "epochs", "steps_per_epoch", "meta_batch", "val_episodes", "test_episodes"):
            _check_positive(name, getattr(self, name))
        if self.way < 2:
            raise ConfigError(f"way must be at least 2, got {self.way}")
        if self.task_chunk < 0:
            raise ConfigError(f"task_chunk must be >= 0, got {self.task_chunk}")
        _check_positive_float("outer_lr", self.outer_lr)
        if self.dataset == "omniglot" and self.shot + self.query > OMNIGLOT_IMAGES_PER_CLASS:
            raise ConfigError(
                f"shot + query = {self.shot + self.query} exceeds the {OMNIGLOT_IMAGES_PER_CLASS} images per Omniglot class"
            )
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class MAMLConfig:
    """MAML (Finn et al. 2017): a few gradient steps on the support set, from a meta-learned init."""

    inner_steps: int = _doc("inner gradient steps during meta-training", default=1)
    inner_lr: float = _doc("inner-loop learning rate", default=0.4)
    first_order: bool = _doc("first-order MAML: no gradient through the inner-loop gradients", default=False)
    inner_params: Literal["all", "head"] = _doc("parameters adapted in the inner loop", default="all")
    test_inner_steps: int = _doc("inner steps at validation/test (0 = same as inner_steps)", default=0)

    def validate(self) -> None:
        _check_positive("inner_steps", self.inner_steps)
        _check_positive_float("inner_lr", self.inner_lr)
        _check_choice("inner_params", self.inner_params, ("all", "head"))
        if self.test_inner_steps < 0:
            raise ConfigError(f"test_inner_steps must be >= 0, got {self.test_inner_steps}")

    @property
    def eval_inner_steps(self) -> int:
        return self.test_inner_steps or self.inner_steps


@dataclass(frozen=True)
class HyperMAMLConfig:
    """HyperMAML (Przewięźlikowski et al.): a hypernetwork outputs the classifier-head update."""

    hn_hidden: int = _doc("hypernetwork hidden width", default=512)
    hn_layers: int = _doc("Linear layers in the hypernetwork (>= 2)", default=3)
    aggregation: Literal["mean", "concat"] = _doc("how the K shots of a class are combined", default="mean")
    delta_penalty: float = _doc("L2 penalty on the hypernetwork's update", default=0.0)
    warmup: bool = _doc("start with MAML on the head, then switch linearly to the hypernetwork", default=False)
    warmup_epochs: int = _doc("epochs of pure MAML warm-up", default=1)
    switch_epochs: int = _doc("epochs of the linear MAML -> hypernetwork switch", default=1)
    warmup_inner_steps: int = _doc("inner steps of the warm-up MAML", default=1)
    warmup_inner_lr: float = _doc("inner learning rate of the warm-up MAML", default=0.1)

    def validate(self) -> None:
        _check_positive("hn_hidden", self.hn_hidden)
        if self.hn_layers < 2:
            raise ConfigError(f"hn_layers must be at least 2, got {self.hn_layers}")
        _check_choice("aggregation", self.aggregation, ("mean", "concat"))
        if not (math.isfinite(self.delta_penalty) and self.delta_penalty >= 0):
            raise ConfigError(f"delta_penalty must be >= 0, got {self.delta_penalty}")
        if self.warmup:
            if self.warmup_epochs < 0 or self.switch_epochs < 0:
                raise ConfigError("warmup_epochs and switch_epochs must be >= 0")
            _check_positive("warmup_inner_steps", self.warmup_inner_steps)
            _check_positive_float("warmup_inner_lr", self.warmup_inner_lr)

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

    def validate(self) -> "RunConfig":
        self.train.validate()
        expected = ALGORITHM_CONFIGS[self.train.algorithm]
        if not isinstance(self.algo, expected):
            raise ConfigError(f"algorithm {self.train.algorithm!r} needs a {expected.__name__}, got {type(self.algo).__name__}")
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


def field_types(cls: type) -> dict[str, Any]:
    """Each field's type annotation, resolved (the CLI builds its flags from them)."""
    return get_type_hints(cls)


def choices_of(cls: type, name: str) -> tuple | None:
    """The allowed values of a Literal-typed field, else None."""
    hint = get_type_hints(cls)[name]
    return get_args(hint) if getattr(hint, "__origin__", None) is Literal else None


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
    if hint is str or getattr(hint, "__origin__", None) is Literal:
        return str(value)
    return value


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _check_positive_float(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value}")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
