"""The define-by-run wrapper the study hands to OptunaSearch (real Optuna, no Ray), the choice of
replicate candidates and finalists (plain records), and what a trial worker imports."""

import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from hpo.records import NUMBER_KEY, SEARCH_KEY, ReplicateRecord, TrialEnd, TrialRecord, TuneOutcome, trial_end
from hpo.runner import _trial_record, candidates, choose_finalists, reference_gap, trial_space
from hpo.spaces import load_space
from hpo.spec import resolve
from hypermaml.fitting import CAPPED, EPOCH, TRAIN_EPISODES, TRAIN_S, VAL_ACC


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
    assert seen == {2, 4, 8, 16, 32}


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
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def trial(number, val, tuned, reference="", status=TrialEnd.COMPLETED, curve=None):
    curve = curve if curve is not None else ([] if val is None else [val])
    return TrialRecord("maml", f"t{number}", number, tuned, curve, val, 1.0, status, reference)


def test_candidates_are_the_top_distinct_configurations_plus_the_reference():
    outcome = TuneOutcome(
        "maml",
        [
            trial(0, 0.60, {"lr": 1}, reference="Finn et al."),
            trial(1, 0.90, {"lr": 2}),
            trial(2, 0.85, {"lr": 2}),  # the same configuration as trial 1: counted once
            trial(3, 0.80, {"lr": 3}, status=TrialEnd.EARLY_STOPPED),
            trial(4, None, {"lr": 4}, status=TrialEnd.FAILED),
        ],
        10.0,
        100,
    )
    assert [(rank, t.trial_id) for rank, t in candidates(outcome, top=2, reference_margin=100)] == [
        (1, "t1"),
        (2, "t3"),
        (3, "t0"),
    ]
    assert [(rank, t.trial_id) for rank, t in candidates(outcome, top=3, reference_margin=100)] == [
        (1, "t1"),
        (2, "t3"),
        (3, "t0"),
    ]
    assert [(rank, t.trial_id) for rank, t in candidates(outcome, top=1, reference_margin=100)] == [
        (1, "t1"),
        (3, "t0"),
    ]
    # 30 points behind the top trial: clearly beaten at a 10-point margin, so not retrained ...
    assert [(rank, t.trial_id) for rank, t in candidates(outcome, top=1, reference_margin=10)] == [(1, "t1")]
    # ... but still retrained when it is one of the top configurations itself.
    assert [(rank, t.trial_id) for rank, t in candidates(outcome, top=3, reference_margin=10)] == [
        (1, "t1"),
        (2, "t3"),
        (3, "t0"),
    ]


def test_an_early_stopped_reference_is_compared_after_the_epochs_it_ran():
    top = trial(1, 0.90, {"lr": 2}, curve=[0.50, 0.70, 0.90])
    # Stopped after its first epoch at 45%: 45 points behind the top's final 90%, but only 5 behind
    # the top trial's own first epoch, so it is not clearly beaten and is retrained.
    stopped = trial(0, 0.45, {"lr": 1}, reference="Finn et al.", status=TrialEnd.EARLY_STOPPED, curve=[0.45])
    assert reference_gap(stopped, top) == pytest.approx(5.0)
    assert [t.trial_id for _, t in candidates(TuneOutcome("maml", [stopped, top], 1.0, 100), 1, 10)] == ["t1", "t0"]
    clearly_behind = trial(0, 0.30, {"lr": 1}, reference="Finn et al.", status=TrialEnd.EARLY_STOPPED, curve=[0.30])
    assert reference_gap(clearly_behind, top) == pytest.approx(20.0)
    assert [t.trial_id for _, t in candidates(TuneOutcome("maml", [clearly_behind, top], 1.0, 100), 1, 10)] == ["t1"]


def replicate(algorithm, rank, seed, val, test):
    return ReplicateRecord(
        algorithm,
        f"r{rank}{seed}",
        rank,
        f"t{rank}",
        seed,
        {"rank": rank},
        [val],
        val,
        test,
        0.01,
        1.0,
        10,
        1.0,
        np.full(4, test),
    )


def test_the_finalist_is_the_best_mean_validation_never_the_best_test():
    records = [replicate("maml", 1, s, v, t) for s, v, t in ((1000, 0.80, 0.99), (1001, 0.70, 0.99))]  # mean val 0.75
    records += [replicate("maml", 2, s, v, t) for s, v, t in ((1000, 0.77, 0.50), (1001, 0.77, 0.50))]  # mean val 0.77
    records += [replicate("hypermaml", 3, 1001, 0.6, 0.6), replicate("hypermaml", 3, 1000, 0.6, 0.6)]
    finalists = choose_finalists(records)
    assert finalists["maml"].candidate_rank == 2 and finalists["maml"].mean_val_acc == 0.77
    assert finalists["hypermaml"].seeds == [1000, 1001]  # in seed order
    assert finalists["hypermaml"].episode_matrix().shape == (2, 4)


def test_a_trial_ends_one_way_decided_by_its_last_epoch():
    assert trial_end({EPOCH: 5, CAPPED: 0.0}, 5) is TrialEnd.COMPLETED
    assert trial_end({EPOCH: 5, CAPPED: 0.0}, 5, running=True) is TrialEnd.COMPLETED  # its last report was its last
    assert trial_end({EPOCH: 2, CAPPED: 1.0}, 5, running=True) is TrialEnd.TIME_CAP
    assert trial_end({EPOCH: 2, CAPPED: 0.0}, 5) is TrialEnd.EARLY_STOPPED
    assert trial_end({EPOCH: 2, CAPPED: 0.0}, 5, running=True) is TrialEnd.TIME_BUDGET
    assert trial_end({EPOCH: 5}, 5, failed=True) is TrialEnd.FAILED
    assert trial_end(None, 5) is TrialEnd.EARLY_STOPPED
    assert [end for end in TrialEnd if end.full_budget] == [TrialEnd.COMPLETED, TrialEnd.TIME_CAP]
    assert f"{TrialEnd.TIME_BUDGET}" == "time_budget" and TrialEnd.TIME_BUDGET == "time_budget"  # tags and text


def test_a_trial_cut_by_the_time_budget_is_one_whose_optuna_trial_is_still_running(tmp_path):
    """Tune's time budget tells the searcher nothing of the trials it stops: their Optuna trials stay
    RUNNING, which is how the record knows them; a trial the scheduler stopped was told PRUNED."""
    spec = resolve("smoke", {"data_root": str(tmp_path)})
    study = optuna.create_study()
    study.ask()  # number 0: still running when the experiment ended
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)  # number 1
    proposals = {0: {t.number: t for t in study.get_trials(deepcopy=False)}}

    def result(number, epochs_run, error=None):
        frame = pd.DataFrame(
            {VAL_ACC: [0.5] * epochs_run, TRAIN_S: [1.0] * epochs_run, TRAIN_EPISODES: [10] * epochs_run}
        )
        return SimpleNamespace(
            path=f"/ray/maml/trial_{number}",
            config={SEARCH_KEY: 0, NUMBER_KEY: number, "outer_lr": 0.01},
            metrics_dataframe=frame,
            metrics={EPOCH: epochs_run, CAPPED: 0.0},
            error=error,
        )

    def end(number, epochs_run, error=None):
        return _trial_record(spec, "maml", result(number, epochs_run, error), None, proposals).status

    assert end(0, 1) is TrialEnd.TIME_BUDGET
    assert end(1, 1) is TrialEnd.EARLY_STOPPED
    assert end(0, spec.epochs) is TrialEnd.COMPLETED
    assert end(0, 1, error=RuntimeError("diverged")) is TrialEnd.FAILED
