"""Search spaces: the built-in ones, user .py and .yaml spaces, and the checks run before Ray starts."""

import dataclasses
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from ray import cloudpickle

from hpo.spaces import FIXED_SETTINGS, SpaceError, check_space, load_space, reference_point, sample_space
from hypermaml.config import ConfigError, TrainConfig, from_flat

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "search_spaces" / "examples"


def fixed_for(algorithm, epochs=9):
    """What a study fixes for every trial (from_flat does not touch data_root)."""
    return {
        "algorithm": algorithm,
        "dataset": "omniglot",
        "data_root": "/data/omniglot",
        "way": 5,
        "shot": 1,
        "query": 15,
        "epochs": epochs,
        "steps_per_epoch": 25,
        "meta_batch": 8,
        "val_episodes": 100,
        "test_episodes": 600,
        "eval_seed": 0,
        "seed": 0,
        "device": "cpu",
    }


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def values_of(configs, name):
    return [config[name] for config in configs if name in config]


def space_error(match, function, *args, **kwargs):
    """The SpaceError that function(*args, **kwargs) raises; its message must match and be one line."""
    with pytest.raises(SpaceError, match=match) as info:
        function(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# --- the fixed settings ----------------------------------------------------------------------------


def test_fixed_settings_leave_only_the_outer_loop_to_spaces():
    train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert FIXED_SETTINGS <= train_fields
    assert train_fields - FIXED_SETTINGS == {"meta_batch", "outer_lr"}


# --- built-in spaces -------------------------------------------------------------------------------


def test_builtin_hypermaml_space_covers_its_ranges_on_log_scales():
    space = load_space("hypermaml", None, epochs=9, shot=5)
    configs = check_space("hypermaml", space, {**fixed_for("hypermaml", epochs=9), "shot": 5}, samples=64)
    assert len(configs) == 64
    for name in (
        "hn_hidden",
        "hn_layers",
        "outer_lr",
        "aggregation",
        "delta_penalty",
        "warmup",
        "warmup_epochs",
        "switch_epochs",
        "warmup_inner_lr",
    ):
        assert values_of(configs, name), name
    hidden = values_of(configs, "hn_hidden")
    assert all(64 <= h <= 1024 for h in hidden)
    assert statistics.median(hidden) < 400  # log-uniform median is 256; a linear one would be 544
    outer_lr = values_of(configs, "outer_lr")
    # 3e-4 and up: the budget-sized lower end shared with MAML's space
    assert all(3e-4 <= lr <= 1e-2 for lr in outer_lr) and min(outer_lr) < 5e-4 and statistics.median(outer_lr) < 3e-3
    assert set(values_of(configs, "hn_layers")) == {2, 3, 4}
    assert set(values_of(configs, "aggregation")) == {"mean", "concat"}
    assert set(values_of(configs, "delta_penalty")) <= {0.0, 1e-4, 1e-3, 1e-2} and 0.0 in values_of(
        configs, "delta_penalty"
    )
    for config in configs:
        warmup_names = {"warmup_epochs", "switch_epochs", "warmup_inner_lr"} & set(config)
        assert warmup_names == ({"warmup_epochs", "switch_epochs", "warmup_inner_lr"} if config["warmup"] else set())
    assert set(values_of(configs, "warmup_epochs")) == {1, 2, 3}  # 1 .. 9 // 3
    assert set(values_of(configs, "switch_epochs")) <= {1, 2, 3}
    assert all(0.01 <= lr <= 0.5 for lr in values_of(configs, "warmup_inner_lr"))
    assert all(config["dataset"] == "omniglot" and config["way"] == 5 for config in configs)


def test_builtin_hypermaml_space_does_not_tune_aggregation_at_one_shot():
    # At one shot mean and concat build the same model: a dimension the searcher would learn nothing from.
    configs = check_space(
        "hypermaml", load_space("hypermaml", None, epochs=9, shot=1), fixed_for("hypermaml", 9), samples=16
    )
    assert values_of(configs, "aggregation") == []


@pytest.mark.parametrize("algorithm", ["maml", "hypermaml"])
@pytest.mark.parametrize("epochs,shot", [(3, 1), (5, 1), (40, 5)])
def test_reference_configurations_lie_in_their_spaces_and_are_valid(algorithm, epochs, shot):
    point, source = reference_point(algorithm, None, epochs, shot)
    assert source
    space = load_space(algorithm, None, epochs=epochs, shot=shot)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(point)
    trial = study.ask()
    space(trial)
    assert trial.params == point  # every reference value is one the space can propose, and nothing else
    from_flat({**fixed_for(algorithm, epochs), "shot": shot, **point})  # a valid run configuration
    if algorithm == "maml":
        assert point == {
            "inner_steps": 1,
            "inner_lr": 0.4,
            "first_order": False,
            "inner_params": "all",
            "outer_lr": 1e-3,
            "meta_batch": 32,
        }
    else:
        assert (point["hn_hidden"], point["hn_layers"], point["outer_lr"], point["warmup"]) == (512, 3, 1e-2, True)
        assert point["warmup_epochs"] + point["switch_epochs"] <= 2 * max(1, epochs // 3)


def test_user_spaces_have_no_reference(tmp_path):
    assert reference_point("maml", tmp_path / "mine.py", 5, 1) is None


def test_builtin_hypermaml_warmup_never_exceeds_a_third_of_the_epochs():
    short = check_space("hypermaml", load_space("hypermaml", None, epochs=2), fixed_for("hypermaml", 2), samples=32)
    assert set(values_of(short, "warmup_epochs")) == {1}  # max(1, 2 // 3)
    long = check_space("hypermaml", load_space("hypermaml", None, epochs=12), fixed_for("hypermaml", 12), samples=64)
    assert max(values_of(long, "warmup_epochs") + values_of(long, "switch_epochs")) == 4


def test_builtin_maml_space_covers_its_ranges_on_log_scales():
    configs = check_space("maml", load_space("maml", None, epochs=9), fixed_for("maml"), samples=64)
    for name in ("inner_steps", "inner_lr", "first_order", "inner_params", "outer_lr", "meta_batch"):
        assert len(values_of(configs, name)) == 64, name
    steps = values_of(configs, "inner_steps")
    assert min(steps) >= 1 and max(steps) <= 10 and len(set(steps)) > 5
    inner_lr = values_of(configs, "inner_lr")
    assert all(1e-2 <= lr <= 0.5 for lr in inner_lr) and min(inner_lr) < 0.015
    assert statistics.median(inner_lr) < 0.15  # log-uniform median is about 0.07; a linear one 0.25
    assert set(values_of(configs, "first_order")) == {False, True}
    assert set(values_of(configs, "inner_params")) == {"all", "head"}
    assert set(values_of(configs, "meta_batch")) == {2, 4, 8, 16, 32}  # overrides the study's meta_batch 8
    outer_lr = values_of(configs, "outer_lr")
    assert all(3e-4 <= lr <= 1e-2 for lr in outer_lr) and min(outer_lr) < 5e-4


def test_builtin_space_of_an_unknown_algorithm_is_refused():
    space_error("no built-in search space for algorithm 'protonet'", load_space, "protonet", None, epochs=4)


def test_an_invalid_fixed_setting_is_a_config_error_not_the_spaces_fault():
    fixed = {**fixed_for("maml"), "shot": 10}  # 10 + 15 > 20 images per Omniglot class
    with pytest.raises(ConfigError, match="exceeds"):
        check_space("maml", load_space("maml", None, epochs=4), fixed)


# --- user .py spaces -------------------------------------------------------------------------------


def test_user_space_taking_only_the_trial(tmp_path):
    path = write(
        tmp_path,
        "narrow.py",
        """
        def space(trial):
            trial.suggest_int("hn_hidden", 32, 64)
            return {"aggregation": "concat"}
    """,
    )
    configs = check_space("hypermaml", load_space("hypermaml", path, epochs=4), fixed_for("hypermaml"), samples=8)
    assert all(32 <= c["hn_hidden"] <= 64 and c["aggregation"] == "concat" for c in configs)


def test_user_space_taking_the_epochs_gets_the_studys_epochs(tmp_path):
    path = write(
        tmp_path,
        "by_epochs.py",
        """
        def space(trial, epochs):
            trial.suggest_int("hn_layers", 2, 3)
            return {"warmup": True, "warmup_epochs": epochs - 1}
    """,
    )
    sample = sample_space(load_space("hypermaml", path, epochs=7))
    assert sample["warmup_epochs"] == 6 and sample["hn_layers"] in (2, 3)


@pytest.mark.parametrize(
    "body, match",
    [
        (
            "def space(trial):\n    trial.suggest_int('hn_size', 64, 512)\n",
            r"typo\.py: unknown setting\(s\) for hypermaml: hn_size",
        ),
        (
            "def space(trial):\n    trial.suggest_float('inner_lr', 0.01, 0.5)\n",
            "unknown setting.* for hypermaml: inner_lr",
        ),
        ("def space(trial):\n    trial.suggest_int('hn_layers', 1, 3)\n", "hn_layers must be at least 2"),
        (
            "def space(trial):\n    trial.suggest_int('hn_layers', 2, 3)\n    return 1 / 0\n",
            "space raised ZeroDivisionError: division by zero",
        ),
        ("def space(trial):\n    trial.suggest_int('way', 2, 20)\n", "sets way, which the study fixes"),
        (
            "def space(trial):\n    trial.suggest_int('hn_layers', 2, 3)\n    return {'seed': 1}\n",
            "sets seed, which the study fixes",
        ),
        (
            "def space(trial):\n    trial.suggest_int('hn_layers', 2, 3)\n    return {'hn_layers': 2}\n",
            "hn_layers is both suggested and returned",
        ),
        ("def space(trial):\n    return None\n", "suggests no parameters"),
        ("def space(trial):\n    trial.suggest_int('hn_layers', 2, 3)\n    return [1]\n", "must return None or a dict"),
    ],
)
def test_user_space_mistakes_are_caught_before_ray_starts(tmp_path, body, match):
    space = load_space("hypermaml", write(tmp_path, "typo.py", body), epochs=4)
    space_error(match, check_space, "hypermaml", space, fixed_for("hypermaml"))


@pytest.mark.parametrize(
    "name, body, match",
    [
        ("missing.py", None, r"missing\.py: no such file"),
        ("broken.py", "def space(trial)\n    pass\n", r"broken\.py: syntax error at line 1"),
        (
            "crash.py",
            "import no_such_module_here\n",
            "importing it raised ModuleNotFoundError: No module named 'no_such_module_here'",
        ),
        ("nothing.py", "def search(trial):\n    pass\n", "defines no function space"),
        (
            "args.py",
            "def space(trial, budget):\n    pass\n",
            r"space\(trial\) or with any of epochs, shot after the trial, not space\(trial, budget\)",
        ),
        ("space.json", "{}", r"must end in \.py, \.yaml or \.yml"),
    ],
)
def test_unloadable_space_files_fail_with_one_line(tmp_path, name, body, match):
    path = tmp_path / name
    if body is not None:
        path.write_text(body)
    space_error(match, load_space, "hypermaml", path, epochs=4)


# --- YAML spaces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["maml", "hypermaml"])
def test_example_yaml_spaces_load_and_check(algorithm):
    path = EXAMPLES / f"{algorithm}_small.yaml"
    configs = check_space(algorithm, load_space(algorithm, path, epochs=6), fixed_for(algorithm, 6), samples=64)
    assert len(configs) == 64
    if algorithm == "maml":
        assert all(c["inner_params"] == "head" and 1 <= c["inner_steps"] <= 5 for c in configs)
    else:
        assert all(c["warmup_inner_steps"] == 1 and 64 <= c["hn_hidden"] <= 512 for c in configs)
        assert all(("warmup_inner_lr" in c) == c["warmup"] for c in configs)
        assert all(("warmup_epochs" in c) == c["warmup"] for c in configs)


def test_a_yaml_space_checked_for_the_other_algorithm_is_refused():
    space = load_space("maml", EXAMPLES / "hypermaml_small.yaml", epochs=6)
    space_error(
        r"hypermaml_small\.yaml: unknown setting\(s\) for maml: .*hn_hidden",
        check_space,
        "maml",
        space,
        fixed_for("maml"),
    )


def test_yaml_conditions_leave_params_out_when_they_do_not_hold(tmp_path):
    path = write(
        tmp_path,
        "conditions.yml",
        """
        params:
          aggregation: {type: categorical, choices: [mean, concat]}
          hn_layers: {type: int, low: 2, high: 6, step: 2}
          hn_hidden: {type: int, low: 64, high: 128, when: {aggregation: concat, hn_layers: [4, 6]}}
          delta_penalty: {type: float, low: 0.0, high: 0.01, step: 0.005}
    """,
    )
    configs = check_space("hypermaml", load_space("hypermaml", path, epochs=4), fixed_for("hypermaml"), samples=64)
    assert set(values_of(configs, "hn_layers")) == {2, 4, 6}
    assert set(values_of(configs, "delta_penalty")) <= {0.0, 0.005, 0.01}
    for config in configs:
        holds = config["aggregation"] == "concat" and config["hn_layers"] in (4, 6)
        assert ("hn_hidden" in config) == holds
    assert any("hn_hidden" in c for c in configs) and not all("hn_hidden" in c for c in configs)


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "params: {hn_layers: {type: int, low: 2, high: 4}}\nconstant: {hn_hidden: 64}\n",
            "unknown top-level key.* constant",
        ),
        ("params: {hn_layers: {type: uniform, low: 2, high: 4}}\n", "param hn_layers: unknown type 'uniform'"),
        ("params: {hn_layers: {type: int, high: 4}}\n", "param hn_layers: missing low"),
        ("params: {outer_lr: {type: float, low: 1.0e-4}}\n", "param outer_lr: missing high"),
        ("params: {aggregation: {type: categorical}}\n", "param aggregation: missing choices"),
        ("params: {hn_layers: {type: int, low: 4, high: 4}}\n", r"param hn_layers: low \(4\) must be below high \(4\)"),
        (
            "params: {outer_lr: {type: float, low: 0.0, high: 0.1, log: true}}\n",
            "param outer_lr: log: true needs low > 0",
        ),
        (
            "params: {hn_hidden: {type: int, low: 64, high: 512, log: true, step: 64}}\n",
            "param hn_hidden: step cannot be combined with log",
        ),
        (
            "params: {aggregation: {type: categorical, choices: []}}\n",
            "param aggregation: choices must be a non-empty list",
        ),
        ("params: {hn_layers: {type: int, low: 2, high: 4, lg: true}}\n", "param hn_layers: unknown key.* lg"),
        ("params: {hn_layers: {type: int, low: 2.5, high: 4}}\n", "param hn_layers: low must be an integer"),
        ("params: {outer_lr: {type: float, low: 1e-4, high: 1.0e-2}}\n", "YAML reads 1e-4 as text"),
        (
            "params:\n  warmup_epochs: {type: int, low: 1, high: 3, when: {warmup: true}}\n"
            "  warmup: {type: categorical, choices: [false, true]}\n",
            "param warmup_epochs: when names 'warmup', which is not a param defined earlier",
        ),
        (
            "params:\n  warmup: {type: categorical, choices: [false, true]}\n"
            "  warmup_epochs: {type: int, low: 1, high: 3, when: {warmup: 'true'}}\n",
            "'true' is not one of its choices",
        ),
        (
            "params: {hn_hidden: {type: int, low: 64, high: 512}}\nconstants: {hn_hidden: 256}\n",
            "hn_hidden is both a param and a constant",
        ),
        ("params: {hn_layers: {type: int, low: 2, high: 4}\n", "invalid YAML at line"),
        ("", "expected a mapping"),
        ("params: {}\n", "params must be a non-empty mapping"),
    ],
)
def test_malformed_yaml_spaces_are_refused_with_the_problem_named(tmp_path, text, match):
    path = write(tmp_path, "bad.yaml", text)
    error = space_error(match, load_space, "hypermaml", path, epochs=4)
    assert str(error).startswith(f"{path}: ")


# --- what Ray needs --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["builtin", "yaml", "py"])
def test_loaded_spaces_pickle_and_sample_identically(tmp_path, source):
    path = {
        "builtin": None,
        "yaml": EXAMPLES / "hypermaml_small.yaml",
        "py": write(tmp_path, "user.py", "def space(trial, epochs):\n    trial.suggest_int('hn_layers', 2, epochs)\n"),
    }[source]
    space = load_space("hypermaml", path, epochs=5)
    copy = cloudpickle.loads(cloudpickle.dumps(space))
    for seed in range(3):
        assert sample_space(copy, seed) == sample_space(space, seed)


def test_a_py_space_unpickles_in_a_fresh_process_without_its_file(tmp_path):
    """Ray restores searchers in other processes: the space must travel by value, not by file or module."""
    path = write(
        tmp_path,
        "travels.py",
        """
        import math

        def widest(epochs):
            return 2 ** (5 + int(math.log2(epochs)))

        def space(trial, epochs):
            trial.suggest_int("hn_hidden", 32, widest(epochs))
    """,
    )
    space = load_space("hypermaml", path, epochs=8)
    pickled = tmp_path / "space.pkl"
    pickled.write_bytes(cloudpickle.dumps(space))
    path.unlink()
    script = (
        "import sys; from ray import cloudpickle; from hpo.spaces import sample_space; "
        "print(sample_space(cloudpickle.loads(open(sys.argv[1], 'rb').read()), 4))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(pickled)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sample_space(space, 4))


def test_sample_space_is_deterministic_for_a_seed():
    space = load_space("hypermaml", None, epochs=9)
    assert sample_space(space, seed=3) == sample_space(space, seed=3)
    assert len({str(sample_space(space, seed)) for seed in range(5)}) > 1
