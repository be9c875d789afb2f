"""HyperMAML search space: the hypernetwork's size and input aggregation, the outer learning rate,
the Δ penalty and the optional MAML warm-up.

The ranges are centred on the reference HyperMAML Omniglot setting (hypernetwork hidden width 512,
3 layers, outer lr 1e-2 for the cross_char benchmark and 1e-3 otherwise) and reach an order of
magnitude or so either side, because that setting was chosen for its own training budget, not ours.
Widths and learning rates are searched on a log scale: their effect is multiplicative.
The warm-up lengths are bounded by a third of the study's epochs so that most of the training
budget is spent on the hypernetwork that is finally validated and tested.
"""

from __future__ import annotations

import optuna


def space(trial: optuna.Trial, epochs: int) -> None:
    trial.suggest_int("hn_hidden", 64, 1024, log=True)
    trial.suggest_int("hn_layers", 2, 4)
    trial.suggest_float("outer_lr", 1e-4, 1e-2, log=True)
    # Tuned for both algorithms with the same menu, so neither gets a knob the other lacks.
    trial.suggest_categorical("meta_batch", [4, 8, 16, 32])
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
