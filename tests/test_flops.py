"""The compute budget in FLOPs: `step_flops` (counted on the meta device), and `fit` under max_train_flops
on real Omniglot, with tiny budgets."""

import dataclasses
import math

import pytest
import torch

from hypermaml import ConfigError, HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, fit, step_flops
from hypermaml.fitting import episode_sampler, load_data, outer_step, start_training
from hypermaml.flops import epoch_step_flops, flop_counter
from hypermaml.train import main as train_main

# 5-way 1-shot with 5 training queries, as the study trains.
SHAPE = dict(way=5, shot=1, query=5)


def config(algorithm="maml", meta_batch=2, epochs=1, **algo):
    train = TrainConfig(algorithm=algorithm, meta_batch=meta_batch, epochs=epochs, **SHAPE)
    return RunConfig(train, MAMLConfig(**algo) if algorithm == "maml" else HyperMAMLConfig(**algo)).validate()


def replace_train(run_config, **changes):
    return RunConfig(dataclasses.replace(run_config.train, **changes), run_config.algo).validate()


# ---- step_flops ----------------------------------------------------------------------------------

COSTLY = dict(inner_params="all", inner_steps=2, first_order=False)


@pytest.mark.parametrize("algorithm,algo", [("maml", COSTLY), ("hypermaml", {"hn_hidden": 256, "warmup": True})])
def test_step_flops_is_the_same_integer_every_time_and_for_any_thread_count(algorithm, algo):
    run = config(algorithm, meta_batch=4, **algo)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = [step_flops(run), step_flops(run)]
        torch.set_num_threads(2)
        two_threads = step_flops(run)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(two_threads, int) and two_threads > 0
    assert one_thread == [two_threads, two_threads]


def test_step_flops_orders_configurations_as_their_compute():
    second_order_10 = step_flops(config(inner_params="all", inner_steps=10, first_order=False))
    second_order_1 = step_flops(config(inner_params="all", inner_steps=1, first_order=False))
    first_order_10 = step_flops(config(inner_params="all", inner_steps=10, first_order=True))
    head_first_order = step_flops(config(inner_params="head", inner_steps=1, first_order=True))
    assert second_order_10 > first_order_10 > second_order_1 > head_first_order
    # Second order backpropagates through every inner step's backward pass: more than twice first order's.
    assert second_order_10 > 2 * first_order_10
    big, small = (step_flops(config("hypermaml", hn_hidden=h, hn_layers=n)) for h, n in ((1024, 4), (64, 2)))
    assert big > small

    # The hypernetwork's matmuls, counted by hand: per task, one row per class through the layers, and
    # backward (input and weight gradients): 3x forward. Rows: 64 features + 5 softmax + 5 one-hot; output 64 + 1.
    def hypernet(hidden, layers):
        sizes = [64 + 2 * 5] + [hidden] * (layers - 1) + [64 + 1]
        forward = [2 * 5 * a * b for a, b in zip(sizes[:-1], sizes[1:])]
        return 3 * sum(forward)  # the rows hold the support embeddings: the first layer's input gradient too

    assert big - small == 2 * (hypernet(1024, 4) - hypernet(64, 2))  # 2 tasks


def test_step_flops_matches_a_hand_count_of_the_conv4_backbone():
    """Head-only first-order MAML on one task: the Conv4 forward of its 5 support and 25 query images,
    and the backward (input and weight gradients) of the query images only: first order cuts the support
    images out of the outer gradient, and the first layer's input needs no gradient."""
    sizes, channels = [28, 14, 7, 3], [1, 64, 64, 64, 64]
    per_layer = [2 * s * s * 9 * c_in * c_out for s, c_in, c_out in zip(sizes, channels[:-1], channels[1:])]
    forward = sum(per_layer)  # FLOPs of one image through Conv4 (2 per multiply-add)
    assert forward == 19_630_080
    support, query = 5, 25
    by_hand = (support + query) * forward + query * (2 * forward - per_layer[0])
    counted = step_flops(config(meta_batch=1, inner_params="head", inner_steps=1, first_order=True))
    # What the hand count leaves out: the 5-way head's matmuls (640 FLOPs per image and pass), under 1e-4.
    assert counted == pytest.approx(by_hand, rel=1e-4) and counted > by_hand


@pytest.mark.parametrize(
    "algorithm,algo",
    [("maml", COSTLY), ("maml", {"inner_params": "head"}), ("hypermaml", {"hn_hidden": 64, "warmup": True})],
)
def test_step_flops_is_linear_in_the_tasks_so_task_chunks_do_not_change_it(algorithm, algo):
    """Every task computes on its own and shared weights' gradients sum over tasks, so 8 tasks cost 8 times one,
    however they are chunked. MAML's fast weights run convolutions grouped by task, whose weight gradient
    torch's own formula counts `groups` times over (hypermaml.flops.flop_counter corrects it)."""
    one = step_flops(config(algorithm, meta_batch=1, **algo))
    assert step_flops(config(algorithm, meta_batch=8, **algo)) == 8 * one
    # Shared weights through the grouped convolution instead of the dense one: the same arithmetic.
    grouped = replace_train(config(algorithm, meta_batch=8, **algo), dense_conv=False)
    assert step_flops(grouped) == 8 * one


def test_hypermaml_warm_up_epochs_are_counted_at_their_own_cost():
    run = config("hypermaml", epochs=5, hn_hidden=512, warmup=True, warmup_epochs=1, switch_epochs=2)
    per_epoch = epoch_step_flops(run)
    warm_up, switch, hypernetwork = per_epoch[0], per_epoch[1], per_epoch[4]
    assert per_epoch == [warm_up, switch, switch, hypernetwork, hypernetwork]
    # The switch runs the warm-up MAML and the hypernetwork; each alone costs less.
    assert switch > hypernetwork > warm_up
    assert hypernetwork == step_flops(dataclasses.replace(run, algo=dataclasses.replace(run.algo, warmup=False)))
    assert step_flops(run) == hypernetwork  # no epoch given: the run's last


@pytest.fixture(scope="module")
def data(omniglot_root):
    return load_data(replace_train(config(), data_root=str(omniglot_root)))


@pytest.mark.parametrize(
    "algorithm,algo,epoch,precision",
    [("maml", {**COSTLY, "inner_steps": 1}, 0, "fp32"), ("hypermaml", {"hn_hidden": 64, "warmup": True}, 1, "bf16")],
)
def test_step_flops_counts_what_an_outer_step_of_fit_computes(omniglot_root, data, algorithm, algo, epoch, precision):
    """The meta-device count equals a count of fit's own outer step on real images (CPU, two task chunks,
    Adam's update included: elementwise, it adds no FLOPs); for HyperMAML in a switch epoch (both paths)
    and under bf16 autocast (a product takes the same FLOPs in any precision)."""
    run = replace_train(
        config(algorithm, meta_batch=2, epochs=3, **algo),
        data_root=str(omniglot_root),
        task_chunk=1,
        precision=precision,
    )
    progress = start_training(run, torch.device("cpu"))
    episodes = episode_sampler(run, data["train"], "train").sample(2, progress.generator)
    with flop_counter() as counter:
        outer_step(progress, episodes, run, epoch)
    assert counter.get_total_flops() == step_flops(run, epoch) == progress.epoch_flops[epoch]


# ---- fit under a FLOP budget ---------------------------------------------------------------------


def tiny(omniglot_root, algorithm="maml", epochs=2, steps_per_epoch=50, max_train_flops=0.0, **algo):
    train = TrainConfig(
        algorithm=algorithm,
        data_root=str(omniglot_root),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        meta_batch=4,
        val_episodes=20,
        test_episodes=20,
        seed=7,
        max_train_flops=max_train_flops,
        **SHAPE,
    )
    algo_cfg = (
        MAMLConfig(**{"inner_params": "head", **algo}) if algorithm == "maml" else HyperMAMLConfig(hn_hidden=64, **algo)
    )
    return RunConfig(train, algo_cfg).validate()


class Interrupted(Exception):
    pass


def counts(history):
    return [(h["train_episodes"], h["train_flops"]) for h in history]


def test_a_flop_budget_trains_the_same_derived_steps_in_every_epoch_and_logs_them(omniglot_root, data):
    per_step = step_flops(tiny(omniglot_root))
    budget = 15.5 * per_step  # 15 steps in all; 7 in each of the 2 epochs
    result = fit(tiny(omniglot_root, max_train_flops=budget), data=data)
    assert counts(result.history) == [(7 * 4, 7 * per_step), (14 * 4, 14 * per_step)]
    assert (result.train_episodes, result.train_flops) == (56, 14 * per_step)
    # Equal steps per epoch: the budget is missed by less than one step in each epoch.
    assert 0 <= budget - result.train_flops < 2 * per_step
    # The budget is a limit: steps_per_epoch still is one, and without a budget it is the only one.
    assert counts(fit(tiny(omniglot_root, steps_per_epoch=3, max_train_flops=budget), data=data).history) == [
        (12, 3 * per_step),
        (24, 6 * per_step),
    ]
    assert counts(fit(tiny(omniglot_root, steps_per_epoch=3), data=data).history) == [
        (12, 3 * per_step),
        (24, 6 * per_step),
    ]


def test_with_a_time_cap_too_whichever_limit_comes_first_ends_training(omniglot_root, data):
    per_step = step_flops(tiny(omniglot_root))
    budget = 15.5 * per_step  # 7 steps in each of the 2 epochs
    # The time cap first: it ends epoch 1 after its first step, and the run with it.
    capped = fit(replace_train(tiny(omniglot_root, max_train_flops=budget), max_train_seconds=1e-9), data=data)
    assert [(h["capped"], h["train_episodes"], h["train_flops"]) for h in capped.history] == [(1.0, 4, per_step)]
    # The FLOP budget first: the cap is never reached.
    budgeted = fit(replace_train(tiny(omniglot_root, max_train_flops=budget), max_train_seconds=1e6), data=data)
    assert [(h["capped"], h["train_episodes"]) for h in budgeted.history] == [(0.0, 28), (0.0, 56)]


def test_configurations_of_different_cost_use_the_same_flops_and_different_episodes(omniglot_root, data):
    cheap = replace_train(tiny(omniglot_root, epochs=1, first_order=True), meta_batch=2)  # head only
    costly = replace_train(tiny(omniglot_root, epochs=1, inner_params="all"), meta_batch=2)  # second order
    cheap_step, costly_step = step_flops(cheap), step_flops(costly)
    assert costly_step > 1.4 * cheap_step
    budget = 2.5 * costly_step
    results = [fit(replace_train(run, max_train_flops=budget), data=data) for run in (cheap, costly)]
    for result, per_step in zip(results, (cheap_step, costly_step)):
        assert 0 <= budget - result.train_flops < per_step  # within one step of the budget (one epoch)
        assert result.train_flops == result.train_episodes // 2 * per_step
    assert results[1].train_episodes == 2 * 2 < results[0].train_episodes == 2 * math.floor(budget / cheap_step)


def test_the_same_seed_and_budget_train_the_same_steps_whatever_the_thread_count(omniglot_root, data):
    run = tiny(omniglot_root, "hypermaml", max_train_flops=6.5 * step_flops(tiny(omniglot_root, "hypermaml")))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, again = fit(run, data=data).history, fit(run, data=data).history
        torch.set_num_threads(2)
        two = fit(run, data=data).history
    finally:
        torch.set_num_threads(threads)
    assert counts(one) == counts(two) == counts(again) and [e for e, _ in counts(one)] == [12, 24]
    # The same threads: the same arithmetic, to the bit (other thread counts may round differently).
    assert [(h["train_acc"], h["val_acc"]) for h in one] == [(h["train_acc"], h["val_acc"]) for h in again]


def test_a_budgeted_run_resumes_with_the_steps_it_started_with(omniglot_root, data, tmp_path):
    per_step = step_flops(tiny(omniglot_root, epochs=3))
    run = tiny(omniglot_root, epochs=2, max_train_flops=8.5 * per_step)  # 4 steps per epoch
    full = fit(run, data=data)

    def stop_after_epoch_1(metrics):
        raise Interrupted  # as if the trial's worker died after epoch 1's checkpoint

    with pytest.raises(Interrupted):
        fit(run, report=stop_after_epoch_1, checkpoint_dir=tmp_path, data=data)
    resumed = fit(run, checkpoint_dir=tmp_path, resume_from=tmp_path, data=data)
    assert counts(resumed.history) == counts(full.history) == [(16, 4 * per_step), (32, 8 * per_step)]
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    # Extended to 3 epochs, the run goes on at its 4 steps per epoch (recounted, 3 epochs would get 2).
    extended = fit(replace_train(run, epochs=3), checkpoint_dir=tmp_path, resume_from=tmp_path, data=data)
    assert counts(extended.history)[-1] == (48, 12 * per_step)


def test_a_budget_too_small_for_one_step_per_epoch_is_one_line(omniglot_root, data, tmp_path, capsys):
    run = tiny(omniglot_root, epochs=3)
    minimum = 3 * step_flops(run)
    with pytest.raises(ConfigError) as error:
        fit(replace_train(run, max_train_flops=minimum - 1), data=data)
    assert str(error.value) == (
        f"max_train_flops must be at least {minimum:.4g} (one outer step in each of the 3 "
        f"epochs of this configuration), got {minimum - 1:.4g}"
    )
    assert [e for e, _ in counts(fit(replace_train(run, max_train_flops=minimum), data=data).history)] == [4, 8, 12]
    for bad, message in (
        ("-1", "max_train_flops must be at least 0"),
        ("inf", "max_train_flops must be a finite number"),
        (str(minimum - 1), f"max_train_flops must be at least {minimum:.4g}"),
    ):
        out = tmp_path / f"run{bad}"
        code = train_main(
            [
                "--data-root",
                str(omniglot_root),
                "--algorithm",
                "maml",
                "--inner-params",
                "head",
                "--epochs",
                "3",
                "--meta-batch",
                "4",
                "--query",
                "5",
                "--max-train-flops",
                bad,
                "--output",
                str(out),
            ]
        )
        stderr = capsys.readouterr().err
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
        assert not out.exists()
