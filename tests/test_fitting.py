"""fit / evaluate / checkpoints on real Omniglot, with tiny budgets."""

import dataclasses
import math

import pytest
import torch

from hypermaml import (
    HyperMAMLConfig,
    MAMLConfig,
    RunConfig,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    fit,
    load_checkpoint,
    load_learner,
)
from hypermaml.fitting import episode_sampler, load_data, time_cap_reached

TIMING = {"episodes_per_s", "train_s", "epoch_s"}


def tiny(omniglot_root, algorithm="maml", epochs=2, **algo):
    train = TrainConfig(
        algorithm=algorithm,
        data_root=str(omniglot_root),
        way=5,
        shot=1,
        query=5,
        epochs=epochs,
        steps_per_epoch=3,
        meta_batch=4,
        val_episodes=20,
        test_episodes=20,
        seed=7,
    )
    algo_cfg = MAMLConfig(inner_params="head", **algo) if algorithm == "maml" else HyperMAMLConfig(hn_hidden=64, **algo)
    return RunConfig(train, algo_cfg).validate()


@pytest.fixture(scope="module")
def data(omniglot_root):
    return load_data(tiny(omniglot_root))


def replace_train(config, **changes):
    return RunConfig(dataclasses.replace(config.train, **changes), config.algo).validate()


def without_timing(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.mark.parametrize("algorithm", ["maml", "hypermaml"])
def test_same_seed_gives_identical_metrics_and_weights(omniglot_root, data, algorithm):
    config = tiny(omniglot_root, algorithm)
    a, b = fit(config, data=data), fit(config, data=data)
    assert without_timing(a.history) == without_timing(b.history)
    for k, v in a.learner.state_dict().items():
        assert torch.equal(v, b.learner.state_dict()[k]), k
    other_seed = RunConfig(TrainConfig(**{**config.train.__dict__, "seed": 8}), config.algo)
    assert without_timing(fit(other_seed, data=data).history) != without_timing(a.history)


@pytest.mark.parametrize(
    "algorithm,algo", [("maml", {}), ("hypermaml", {"warmup": True, "warmup_epochs": 1, "switch_epochs": 1})]
)
def test_resume_from_checkpoint_continues_exactly(omniglot_root, data, tmp_path, algorithm, algo):
    full = fit(tiny(omniglot_root, algorithm, epochs=3, **algo), data=data)
    reported = []
    fit(tiny(omniglot_root, algorithm, epochs=2, **algo), report=reported.append, checkpoint_dir=tmp_path, data=data)
    assert [m["epoch"] for m in reported] == [1, 2]
    resumed = fit(
        tiny(omniglot_root, algorithm, epochs=3, **algo), checkpoint_dir=tmp_path, resume_from=tmp_path, data=data
    )
    assert without_timing(resumed.history) == without_timing(full.history)
    for k, v in full.learner.state_dict().items():
        assert torch.equal(v, resumed.learner.state_dict()[k]), k
    assert load_checkpoint(tmp_path)["epoch"] == 3
    if algorithm == "hypermaml":
        assert [h["hn_weight"] for h in full.history] == [0.0, 0.5, 1.0]


def test_the_training_time_cap_predicts_the_next_epoch_from_the_mean_so_far():
    history = [{"train_s": 40.0}, {"train_s": 60.0}]  # 100 s spent; the next epoch is predicted at 50 s
    assert time_cap_reached(history, 149.0) and not time_cap_reached(history, 150.0)
    assert not time_cap_reached(history, 0.0)  # no cap
    assert not time_cap_reached([], 1e-9)  # the first epoch always runs


def test_a_run_ends_at_its_training_time_cap_says_so_and_stays_ended_on_resume(omniglot_root, data, tmp_path):
    capped, reported = replace_train(tiny(omniglot_root, epochs=3), max_train_seconds=1e-9), []
    result = fit(capped, report=reported.append, checkpoint_dir=tmp_path, data=data)
    assert [(m["epoch"], m["capped"]) for m in reported] == [(1, 1.0)]
    # The cap ends even the first epoch: after its first outer step (4 episodes) of 3.
    assert [h["train_episodes"] for h in result.history] == [4]
    assert len(result.history) == 1 and result.train_episodes_per_s == pytest.approx(4 / result.train_seconds)
    resumed = fit(capped, report=reported.append, checkpoint_dir=tmp_path, resume_from=tmp_path, data=data)
    assert len(resumed.history) == 1 and len(reported) == 1  # nothing more trained
    uncapped = fit(replace_train(tiny(omniglot_root, epochs=3), max_train_seconds=1e6), data=data)
    assert [(h["capped"], h["train_episodes"]) for h in uncapped.history] == [(0.0, 12), (0.0, 24), (0.0, 36)]


def test_a_resumed_auto_precision_run_keeps_the_precision_it_started_in(omniglot_root, data, tmp_path):
    config = tiny(omniglot_root, epochs=2)  # precision "auto"
    here = fit(replace_train(config, epochs=1), checkpoint_dir=tmp_path, data=data).precision
    # As if the first epoch had run on a machine where "auto" became the other precision.
    elsewhere = "fp32" if here == "bf16" else "bf16"
    state = load_checkpoint(tmp_path / "last.pt")
    state["history"][-1]["bf16_autocast"] = float(elsewhere == "bf16")
    torch.save(state, tmp_path / "last.pt")
    resumed = fit(config, checkpoint_dir=tmp_path, resume_from=tmp_path, data=data)
    assert resumed.precision == elsewhere and resumed.history[-1]["bf16_autocast"] == float(elsewhere == "bf16")


def test_report_metrics_checkpoints_and_best_model(omniglot_root, data, tmp_path):
    reported = []
    result = fit(tiny(omniglot_root, "hypermaml"), report=reported.append, checkpoint_dir=tmp_path, data=data)
    assert {"train_loss", "train_acc", "val_acc", "val_ci95", "episodes_per_s", "epoch_s"} <= set(reported[0])
    assert all(0 <= m["val_acc"] <= 1 and m["episodes_per_s"] > 0 for m in reported)
    best = max(reported, key=lambda m: m["val_acc"])
    assert (result.best_epoch, result.best_val_acc) == (best["epoch"], best["val_acc"])
    # best.pt holds the best epoch's weights, loads with weights_only, and re-evaluates to the same accuracy.
    learner = load_learner(tmp_path / "best.pt")
    again = evaluate(learner, "val", 20, data=data["val"])
    assert again.accuracy == pytest.approx(best["val_acc"], abs=1e-6)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_evaluate_uses_a_fixed_episode_set_and_reports_a_95_ci(omniglot_root, data):
    learner = fit(tiny(omniglot_root, epochs=1), data=data).learner
    a = evaluate(learner, "test", 30, data=data["test"])
    b = evaluate(learner, "test", 30, data=data["test"])
    assert torch.equal(a.per_episode, b.per_episode)
    assert a.ci95 == pytest.approx(1.96 * a.per_episode.std().item() / math.sqrt(30))
    assert a.ms_per_task > 0 and a.episodes == 30
    # the episode set does not depend on how many tasks the learner vectorizes per pass
    chunked = RunConfig(TrainConfig(**{**learner.run_config.train.__dict__, "task_chunk": 7}), learner.run_config.algo)
    learner.run_config = chunked
    assert torch.equal(evaluate(learner, "test", 30, data=data["test"]).per_episode, a.per_episode)
    c = evaluate(learner, "test", 30, seed=123, data=data["test"])
    assert not torch.equal(a.per_episode, c.per_episode)


def test_train_query_shapes_the_training_episodes_only(omniglot_root, data):
    """--train-query sets the query images per class of meta-training; validation and test keep --query."""
    config = replace_train(tiny(omniglot_root, epochs=1), train_query=2)
    generator = torch.Generator().manual_seed(0)
    assert episode_sampler(config, data["train"], "train").sample(4, generator).x_query.shape[1] == 5 * 2
    assert episode_sampler(config, data["val"], "val").sample(4, generator).x_query.shape[1] == 5 * 5
    fewer, same = fit(config, data=data), fit(replace_train(config, train_query=0), data=data)
    assert fewer.history[0]["train_loss"] != same.history[0]["train_loss"]  # it trained on other episodes
    # The same network is evaluated on the same episodes whatever its train_query.
    same.learner.run_config = config
    with_two = evaluate(same.learner, "val", 20, data=data["val"]).per_episode
    same.learner.run_config = replace_train(config, train_query=0)
    assert torch.equal(with_two, evaluate(same.learner, "val", 20, data=data["val"]).per_episode)


def test_divergence_is_reported_as_an_error(omniglot_root, data):
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1"):
        fit(tiny(omniglot_root, "maml", epochs=1, inner_lr=1e36, inner_steps=3), data=data)
