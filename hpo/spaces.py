"""Search spaces of a study: loading them (built-in, .py or .yaml) and checking them before Ray starts.

A search space is a define-by-run function `fn(trial) -> dict | None` for Ray Tune's OptunaSearch.
It calls `trial.suggest_*` with config field names (see `hypermaml.config`); those values become
the trial's settings, and the dict it may return holds constant settings that are merged in. The
settings every trial of a study shares (FIXED_SETTINGS) come from the study, never from a space.

Where a space comes from (`load_space`):

- nothing given: the built-in `search_spaces/<algorithm>.py`;
- a `.py` file that defines `space(trial)`, or a space taking any of `epochs` (the study's training
  epochs per trial) and `shot` (support images per class) after the trial, e.g. `space(trial, epochs)`;
- a `.yaml` / `.yml` file in this format:

    # each key: a config field name; entries are suggested in file order
    params:
      outer_lr:    {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      hn_layers:   {type: int, low: 2, high: 4}            # optional: step (int/float), log
      aggregation: {type: categorical, choices: [mean, concat]}
      warmup:      {type: categorical, choices: [false, true]}
      warmup_epochs: {type: int, low: 1, high: 3, when: {warmup: true}}
    constants:     # optional: fixed values for this algorithm's trials
      hn_hidden: 256

  An entry with `when` is suggested only when every condition holds: `{name: value}` (equal to it)
  or `{name: [v1, v2]}` (one of them), where each name is a param earlier in the file. A `step`
  cannot be combined with `log: true`. Write floats with a dot (1.0e-4): YAML reads 1e-4 as text.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from hypermaml.config import ALGORITHMS, ConfigError, from_flat

from .spec import SHARED_SETTINGS

SpaceFn = Callable[[optuna.Trial], dict[str, Any] | None]

# Settings every trial of a study shares, so that the algorithms are compared on the same data,
# budget, episodes, seeds and hardware. A space that sets one of them is rejected. They are those the
# study gives each trial (StudySpec.fixed_settings: the data, the benchmark, the training budget, what
# is measured on which episodes, the device) but meta_batch, which a space may tune; steps_per_epoch
# (the study's episodes per epoch over meta_batch); and how a trial runs (precision changes the
# rounding, so it too is the same for all trials).
FIXED_SETTINGS: frozenset[str] = frozenset(
    ({"algorithm", *SHARED_SETTINGS, "eval_seed", "seed", "device"} - {"meta_batch"})
    | {"steps_per_epoch", "task_chunk", "dense_conv", "channels_last", "precision", "compile"}
)

# What a space function may ask for after the trial, by parameter name.
SPACE_CONTEXT = ("epochs", "shot")
PARAM_TYPES = ("int", "float", "categorical")
# The keys a YAML entry of each type may have.
_ENTRY_KEYS = {
    "int": {"type", "low", "high", "step", "log", "when"},
    "float": {"type", "low", "high", "step", "log", "when"},
    "categorical": {"type", "choices", "when"},
}


class SpaceError(ValueError):
    """A search space that cannot be used; one-line message naming the file and the problem."""


@dataclass(frozen=True)
class LoadedSpace:
    """A one-argument space function plus where it came from, so that errors can name the file."""

    source: str
    function: SpaceFn

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        return self.function(trial)


@dataclass(frozen=True)
class YamlParam:
    """One `params` entry of a YAML space, validated."""

    name: str
    kind: str  # one of PARAM_TYPES
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()
    # (earlier param, values it must have): all must hold for this param to be suggested.
    when: tuple[tuple[str, tuple], ...] = ()


def load_space(algorithm: str, path: str | Path | None, epochs: int, shot: int = 1) -> SpaceFn:
    """The space for `algorithm`: built-in when `path` is None, else from a .py or .yaml file.

    The result takes only the trial (the study context it asks for is bound) and pickles with
    cloudpickle, as Ray needs.
    """
    context = {"epochs": epochs, "shot": shot}
    if path is None:
        return _load_builtin(algorithm, context)
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpaceError(f"{source}: no such file")
    if not path.is_file():
        raise SpaceError(f"{source}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".py":
        function = _space_function_of(_import_file(path, source), source)
        return LoadedSpace(source, _bind_context(function, context, source))
    if suffix in (".yaml", ".yml"):
        params, constants = _parse_yaml(_read_yaml(path, source), source)
        return LoadedSpace(source, functools.partial(suggest_yaml_space, params, constants))
    raise SpaceError(f"{source}: a search space file must end in .py, .yaml or .yml")


def check_space(
    algorithm: str, space: SpaceFn, fixed: dict[str, Any], samples: int = 32, seed: int = 0
) -> list[dict[str, Any]]:
    """Draw `samples` random trials and check each one builds a valid run; returns their flat configs.

    Meant to fail fast, before Ray starts. Random sampling with trials told back to the study lets
    the conditional branches of the space get exercised. Raises SpaceError for a space that raises,
    suggests nothing, sets a fixed setting, or yields a setting `from_flat` rejects; raises
    ConfigError (unchanged) when `fixed` itself is invalid, as that is not the space's fault.
    """
    if fixed.get("algorithm", algorithm) != algorithm:
        raise ValueError(f"fixed settings are for {fixed['algorithm']!r}, not {algorithm!r}")
    fixed = {**fixed, "algorithm": algorithm}
    from_flat(fixed)
    source = _source_of(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(samples):
        trial = study.ask()
        constants = _run_space(space, trial, source)
        params = dict(trial.params)
        _check_names(params, constants, source)
        config = {**fixed, **params, **constants}
        try:
            from_flat(config)
        except ConfigError as error:
            raise SpaceError(f"{source}: {error}") from error
        study.tell(trial, 0.0)
        configs.append(config)
    return configs


def sample_space(space: SpaceFn, seed: int = 0) -> dict[str, Any]:
    """One sample of the space (suggested values plus returned constants), as the TPE searcher draws it."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    trial = study.ask()
    constants = _run_space(space, trial, _source_of(space))
    return {**trial.params, **constants}


def suggest_yaml_space(
    params: tuple[YamlParam, ...], constants: dict[str, Any], trial: optuna.Trial
) -> dict[str, Any] | None:
    """The define-by-run function of a YAML space (bound with functools.partial, so it pickles)."""
    suggested: dict[str, Any] = {}
    for param in params:
        if not all(name in suggested and suggested[name] in values for name, values in param.when):
            continue
        if param.kind == "int":
            value = trial.suggest_int(param.name, param.low, param.high, step=param.step or 1, log=param.log)
        elif param.kind == "float":
            value = trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)
        else:
            value = trial.suggest_categorical(param.name, list(param.choices))
        suggested[param.name] = value
    # A copy, so that whoever merges it cannot change the space.
    return dict(constants) or None


# --- loading -------------------------------------------------------------------------------------


def is_reference(tuned: dict[str, Any], point: dict[str, Any]) -> bool:
    """Whether a trial's tuned values are the reference point's (floats compared to rounding)."""
    return all(
        k in tuned and (tuned[k] == v or (isinstance(v, float) and math.isclose(tuned[k], v, rel_tol=1e-9)))
        for k, v in point.items()
    )


def _load_builtin(algorithm: str, context: dict[str, int]) -> SpaceFn:
    if algorithm not in ALGORITHMS:
        choices = ", ".join(ALGORITHMS)
        raise SpaceError(f"no built-in search space for algorithm {algorithm!r}; choose one of: {choices}")
    source = f"built-in search_spaces/{algorithm}.py"
    module = importlib.import_module(f"search_spaces.{algorithm}")
    return LoadedSpace(source, _bind_context(_space_function_of(module, source), context, source))


def reference_point(
    algorithm: str, path: str | Path | None, epochs: int, shot: int = 1
) -> tuple[dict[str, Any], str] | None:
    """The published configuration a built-in space enqueues as its first trial, and its source.

    A built-in space module defines `reference(epochs, shot) -> dict` and `REFERENCE_SOURCE`; a
    user's space has none (None), since we cannot know what it was made from.
    """
    if path is not None:
        return None
    module = importlib.import_module(f"search_spaces.{algorithm}")
    return module.reference(epochs=epochs, shot=shot), module.REFERENCE_SOURCE


def _import_file(path: Path, source: str) -> Any:
    # A module name no import statement uses, registered only while the file runs (dataclasses and
    # the like look their module up there). Left registered, cloudpickle would pickle the space by
    # reference to it, which a fresh process (Ray restoring a study) could not import; unregistered,
    # it pickles the functions by value.
    name = "_search_space_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpaceError(f"{source}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise SpaceError(f"{source}: syntax error at line {error.lineno}: {error.msg}") from error
    except OSError as error:
        raise SpaceError(f"{source}: cannot read it: {error.strerror or error}") from error
    except Exception as error:
        raise SpaceError(f"{source}: importing it raised {_describe(error)}") from error
    finally:
        sys.modules.pop(name, None)
    return module


def _space_function_of(module: Any, source: str) -> Callable:
    function = getattr(module, "space", None)
    if not callable(function):
        raise SpaceError(f"{source}: defines no function space(trial) or space(trial, epochs)")
    return function


def _bind_context(function: Callable, context: dict[str, int], source: str) -> SpaceFn:
    """`function` with the study context it asks for bound by name: space(trial), space(trial, epochs),
    space(trial, epochs, shot), ... (any of SPACE_CONTEXT after the trial, in any order)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise SpaceError(f"{source}: the signature of space cannot be read") from None
    names = [p.name for p in signature.parameters.values()][1:]
    if not signature.parameters or any(name not in SPACE_CONTEXT for name in names):
        raise SpaceError(
            f"{source}: space must be defined as space(trial) or with any of "
            f"{', '.join(SPACE_CONTEXT)} after the trial, not space{signature}"
        )
    if not names:
        return function
    return functools.partial(function, **{name: context[name] for name in names})


def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpaceError(f"{source}: cannot read it: {_one_line(str(error))}") from error
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"{source}: invalid YAML{where}: {error.problem or error.context}") from error
    except yaml.YAMLError as error:
        raise SpaceError(f"{source}: invalid YAML: {_one_line(str(error))}") from error


def _parse_yaml(document: Any, source: str) -> tuple[tuple[YamlParam, ...], dict[str, Any]]:
    if not isinstance(document, dict):
        raise SpaceError(f"{source}: expected a mapping with the keys params and (optionally) constants")
    unknown = sorted(map(str, set(document) - {"params", "constants"}))
    if unknown:
        listed = ", ".join(unknown)
        raise SpaceError(f"{source}: unknown top-level key(s) {listed}; only params and constants are allowed")
    entries = document.get("params")
    if not isinstance(entries, dict) or not entries:
        raise SpaceError(f"{source}: params must be a non-empty mapping of setting names to entries")
    params: list[YamlParam] = []
    for name, entry in entries.items():
        params.append(_parse_param(name, entry, {param.name: param for param in params}, source))
    # `constants:` with nothing under it reads as None.
    constants = document.get("constants") or {}
    if not isinstance(constants, dict):
        raise SpaceError(f"{source}: constants must be a mapping of setting names to values")
    for name, value in constants.items():
        if name in entries:
            raise SpaceError(f"{source}: {name} is both a param and a constant; keep one")
        if not isinstance(name, str) or not _is_single_value(value):
            raise SpaceError(f"{source}: constant {name}: expected a single value, got {value!r}")
    return tuple(params), dict(constants)


def _parse_param(name: Any, entry: Any, earlier: dict[str, YamlParam], source: str) -> YamlParam:
    where = f"{source}: param {name}"
    if not isinstance(name, str):
        raise SpaceError(f"{where}: a param name must be text")
    if not isinstance(entry, dict):
        raise SpaceError(f"{where}: expected a mapping like {{type: float, low: 0.001, high: 0.1}}, got {entry!r}")
    kind = entry.get("type")
    if kind not in PARAM_TYPES:
        raise SpaceError(f"{where}: unknown type {kind!r}; choose one of: {', '.join(PARAM_TYPES)}")
    unknown = sorted(map(str, set(entry) - _ENTRY_KEYS[kind]))
    if unknown:
        allowed = ", ".join(sorted(_ENTRY_KEYS[kind]))
        raise SpaceError(f"{where}: unknown key(s) {', '.join(unknown)} for type {kind}; allowed: {allowed}")
    when = _parse_when(entry.get("when", {}), earlier, where)
    if kind == "categorical":
        if "choices" not in entry:
            raise SpaceError(f"{where}: missing choices")
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {choices!r}")
        for choice in choices:
            if not _is_single_value(choice):
                expected = "single values (text, numbers, true/false, null)"
                raise SpaceError(f"{where}: choices must be {expected}, got {choice!r}")
        return YamlParam(name, kind, choices=tuple(choices), when=when)
    low = _number(entry, "low", kind, where)
    high = _number(entry, "high", kind, where)
    if low >= high:
        raise SpaceError(f"{where}: low ({low}) must be below high ({high})")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got low = {low}")
    step = None
    if "step" in entry:
        if log:
            raise SpaceError(f"{where}: step cannot be combined with log: true")
        step = _number(entry, "step", kind, where)
        if step <= 0:
            raise SpaceError(f"{where}: step must be > 0, got {step}")
    return YamlParam(name, kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(when: Any, earlier: dict[str, YamlParam], where: str) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(when, dict):
        raise SpaceError(f"{where}: when must be a mapping like {{warmup: true}}, got {when!r}")
    conditions = []
    for name, allowed in when.items():
        if name not in earlier:
            raise SpaceError(f"{where}: when names {name!r}, which is not a param defined earlier in the file")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            raise SpaceError(f"{where}: when {name}: an empty list never holds")
        # A value the condition's param can never take is a typo (say "true" in quotes) that would
        # silently leave this param out of every trial.
        choices = earlier[name].choices
        for value in values:
            if earlier[name].kind == "categorical" and value not in choices:
                raise SpaceError(f"{where}: when {name}: {value!r} is not one of its choices {list(choices)}")
        conditions.append((name, values))
    return tuple(conditions)


def _number(entry: dict, key: str, kind: str, where: str) -> float:
    if key not in entry:
        raise SpaceError(f"{where}: missing {key}")
    value = entry[key]
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    expected = "an integer" if kind == "int" else "a finite number"
    hint = ""
    if isinstance(value, str) and _reads_as_float(value):
        hint = f" (YAML reads {value} as text; write it with a dot, like 1.0e-4)"
    raise SpaceError(f"{where}: {key} must be {expected}, got {value!r}{hint}")


# --- checking ------------------------------------------------------------------------------------


def _source_of(space: SpaceFn) -> str:
    return space.source if isinstance(space, LoadedSpace) else "search space"


def _run_space(space: SpaceFn, trial: optuna.Trial, source: str) -> dict[str, Any]:
    """Call the space on a trial; its returned constants, {} for None."""
    try:
        returned = space(trial)
    except Exception as error:
        raise SpaceError(f"{source}: space raised {_describe(error)}") from error
    if returned is None:
        return {}
    if not isinstance(returned, dict) or not all(isinstance(name, str) for name in returned):
        raise SpaceError(f"{source}: space must return None or a dict of constant settings, got {returned!r}")
    return returned


def _check_names(params: dict[str, Any], constants: dict[str, Any], source: str) -> None:
    if not params:
        raise SpaceError(f"{source}: the space suggests no parameters (no trial.suggest_* call)")
    fixed = sorted((set(params) | set(constants)) & FIXED_SETTINGS)
    if fixed:
        listed = ", ".join(fixed)
        raise SpaceError(f"{source}: sets {listed}, which the study fixes for every trial; remove it from the space")
    # Ray merges the constants over the suggestions, so the searcher would tune a value never used.
    both = sorted(set(params) & set(constants))
    if both:
        raise SpaceError(f"{source}: {', '.join(both)} is both suggested and returned as a constant; keep one")


# --- small helpers -------------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_one_line(str(error))}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _is_single_value(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _reads_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
