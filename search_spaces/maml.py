"""MAML search space: the inner loop (steps, learning rate, order, adapted parameters) and the
outer loop (Adam learning rate, tasks per meta-batch).

The ranges contain the published Omniglot settings (1 inner step; inner lr 0.4 in Finn et al.,
0.1 in the reference code) and extend well beyond them (more steps, smaller and larger learning
rates), because those were tuned for other training budgets than ours. Learning rates are searched
on a log scale: their effect is multiplicative. The lower ends (inner lr 1e-2, outer lr 3e-4, the
same outer range as HyperMAML's) are sized to budgets of a few thousand episodes (the measurement:
docs/results.md, "Earlier default studies"); for much larger budgets give the study your own space.

Adapting only the head ("head") is the cheap variant that HyperMAML also uses, so the study can
tell whether adapting the whole backbone is what makes MAML good.

The study runs `reference(...)` first: Finn et al.'s Omniglot 5-way setting, so that tuning can
only add to what the published configuration reaches at the study's budget.
"""

from __future__ import annotations

import optuna

from search_spaces.hypermaml import OUTER_LR_LOW

REFERENCE_SOURCE = "Finn et al. 2017 (MAML), Omniglot 5-way"


def reference(epochs: int, shot: int) -> dict:
    # Finn et al., Omniglot: 1 inner step of lr 0.4, second order, every parameter adapted,
    # 32 tasks per meta-batch, Adam with lr 1e-3. Nothing depends on the budget or the shot.
    return {
        "inner_steps": 1,
        "inner_lr": 0.4,
        "first_order": False,
        "inner_params": "all",
        "outer_lr": 1e-3,
        "meta_batch": 32,
    }


def space(trial: optuna.Trial) -> None:
    trial.suggest_int("inner_steps", 1, 10)
    # Below 1e-2 even ten steps barely move the weights: a dead region of the range (see the module note).
    trial.suggest_float("inner_lr", 1e-2, 0.5, log=True)
    trial.suggest_categorical("first_order", [False, True])
    trial.suggest_categorical("inner_params", ["all", "head"])
    trial.suggest_float("outer_lr", OUTER_LR_LOW, 1e-2, log=True)
    trial.suggest_categorical("meta_batch", [2, 4, 8, 16, 32])
