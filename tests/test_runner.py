"""The define-by-run wrapper the study hands to OptunaSearch (real Optuna, no Ray), and what a trial worker imports."""

import subprocess
import sys
from functools import partial
from pathlib import Path

import optuna

from hpo.runner import trial_space
from hpo.spaces import load_space
from hpo.spec import resolve


def test_sampled_values_win_over_study_defaults_and_epochs_hold_the_same_episodes(tmp_path):
    spec = resolve("smoke", {"data_root": str(tmp_path)})
    fixed = spec.fixed_settings("maml")
    space = partial(trial_space, load_space("maml", None, spec.epochs), fixed, 96)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **constants}  # how Ray's OptunaSearch merges them
        assert config["meta_batch"] == trial.params["meta_batch"]  # not the study's default (4)
        assert config["steps_per_epoch"] == 96 // config["meta_batch"]
        assert config["way"] == spec.way and config["epochs"] == spec.epochs
        seen.add(config["meta_batch"])
        study.tell(trial, 0.5)
    assert seen == {4, 8, 16, 32}


def only_outer_lr(trial):
    trial.suggest_float("outer_lr", 1e-4, 1e-2, log=True)


def test_unsampled_settings_take_the_study_defaults(tmp_path):
    spec = resolve("smoke", {"data_root": str(tmp_path), "meta_batch": 6})
    space = partial(trial_space, only_outer_lr, spec.fixed_settings("maml"), 24)
    trial = optuna.create_study().ask()
    config = {**trial.params, **space(trial)}
    assert config["meta_batch"] == 6 and config["steps_per_epoch"] == 4


def test_trial_workers_import_neither_the_drivers_libraries_nor_torchvision():
    """Every Tuner starts a fresh Ray worker, which imports the module of the trial function. Its
    start-up is study overhead, so hpo.trainable must not pull in MLflow, Optuna, scipy, matplotlib
    or torchvision (with torch._dynamo): together several seconds per worker on a small CPU."""
    heavy = ("mlflow", "optuna", "scipy", "matplotlib", "torchvision", "torch._dynamo")
    code = f"import sys, hpo.trainable; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "[]"
