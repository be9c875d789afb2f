"""HyperMAML search space: the hypernetwork's size and input aggregation, the outer learning rate,
the Δ penalty and the optional MAML warm-up.

The ranges are centred on the reference HyperMAML Omniglot setting (hypernetwork hidden width 512,
3 layers, outer lr 1e-2 for the cross_char benchmark and 1e-3 otherwise) and reach an order of
magnitude or so either side (the outer lr down to 3e-4 only, as MAML's: smaller rates do not train
in our budgets), because that setting was chosen for its own training budget, not ours.
Widths and learning rates are searched on a log scale: their effect is multiplicative.
The warm-up lengths are bounded by a third of the study's epochs so that most of the training
budget is spent on the hypernetwork that is finally validated and tested.

The study runs `reference(...)` first: the reference implementation's Omniglot->EMNIST command,
with its warm-up and switch lengths scaled to the study's epochs.
"""

from __future__ import annotations

import optuna

# The lower end of the outer learning rate for both built-in spaces, sized to the study budgets
# (a few thousand episodes); the measurement: docs/results.md, "Earlier default studies".
OUTER_LR_LOW = 3e-4

REFERENCE_SOURCE = "HyperMAML reference implementation (gmum/few-shot-hypernets-public), cross_char command"


def reference(epochs: int, shot: int) -> dict:
    # commands.sh, cross_char 1-shot: --hn_hidden_size 512 --hn_head_len 3 --lr 1e-2, n_task 32,
    # hm_lambda 0, MAML warm-up with 1 inner step of lr 0.1 for 50 of 2048 loop-epochs (2.4%),
    # then a switch over 500 (24%). Scaled to our epochs, at least one each and at most a third
    # (the space's own bound). At 1 shot mean and concat are the same model, so the space does not
    # tune aggregation then; 5-shot commands use mean.
    longest = max(1, epochs // 3)
    point = {
        "hn_hidden": 512,
        "hn_layers": 3,
        "outer_lr": 1e-2,
        "meta_batch": 32,
        "delta_penalty": 0.0,
        "warmup": True,
        "warmup_epochs": min(longest, max(1, round(0.024 * epochs))),
        "switch_epochs": min(longest, max(1, round(0.244 * epochs))),
        "warmup_inner_lr": 0.1,
    }
    if shot > 1:
        point["aggregation"] = "mean"
    return point


def space(trial: optuna.Trial, epochs: int, shot: int) -> None:
    trial.suggest_int("hn_hidden", 64, 1024, log=True)
    trial.suggest_int("hn_layers", 2, 4)
    trial.suggest_float("outer_lr", OUTER_LR_LOW, 1e-2, log=True)
    # Tuned for both algorithms with the same menu, so neither gets a knob the other lacks.
    trial.suggest_categorical("meta_batch", [2, 4, 8, 16, 32])
    if shot > 1:  # with one shot per class, mean and concat are the same model: no dead dimension
        trial.suggest_categorical("aggregation", ["mean", "concat"])
    # A fixed menu rather than a log range: "no penalty" (0) must be reachable, and a log range
    # cannot include 0.
    trial.suggest_categorical("delta_penalty", [0.0, 1e-4, 1e-3, 1e-2])
    # The warm-up settings only mean something with warm-up on; suggesting them only then keeps
    # the searcher from learning about parameters that had no effect.
    if trial.suggest_categorical("warmup", [False, True]):
        longest = max(1, epochs // 3)
        trial.suggest_int("warmup_epochs", 1, longest)
        trial.suggest_int("switch_epochs", 1, longest)
        trial.suggest_float("warmup_inner_lr", 0.01, 0.5, log=True)
