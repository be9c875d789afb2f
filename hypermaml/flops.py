"""FLOPs of meta-training: a compute budget that is the same on every machine.

Equal episodes are not equal compute (MAML's inner loop over all parameters, second order, with many
steps costs several times a head-only step), and seconds are not the same on two machines. So a
network's compute is counted in floating-point operations: `step_flops` counts one outer step of a
configuration once, and `fit` derives from `max_train_flops` how many outer steps each epoch trains
(`epoch_steps`).

What is counted: torch.utils.flop_counter.FlopCounterMode's operations, the matrix products and
convolutions (2 FLOPs per multiply-add), of one outer step exactly as `fit` runs it: the learner
built by `build_learner` from the config, its meta-loss on a meta-batch of the configured shape (the
support sets, the inner loop with its gradients and, for second order, their gradients, the query
predictions), and the outer backward. Elementwise work (batch norm, ReLU, pooling, softmax, the Adam
update) is not counted: it grows with the same activations and parameters, and is a small share of
the arithmetic (not of CPU time, which FLOPs do not claim to predict).

How: on the meta device, where tensors have shapes and no data, so nothing is computed and nothing
depends on the machine, its thread count or the data: the same config gives the same integer
anywhere. The count is made in float32 without autocast: a product of two matrices takes the same
FLOPs in bf16 as in float32, so `precision` does not change it (nor `compile`, which fuses the same
arithmetic). The whole meta-batch is counted as one pass: every task's computation is its own and
the shared weights' gradients sum over tasks, so the count is linear in the tasks and the same for
any `task_chunk` (tests/test_flops.py checks meta_batch 8 against 8 x meta_batch 1).

HyperMAML's warm-up changes what a step computes: warm-up epochs run MAML on the head only, switch
epochs run that and the hypernetwork, later epochs the hypernetwork only. Each epoch is counted at
its own phase's cost (`epoch_step_flops`), and the budget buys the same number of steps in every
epoch (ASHA compares networks at equal epochs), so one step in each of the run's epochs costs
sum(epoch_step_flops) and each epoch trains floor(max_train_flops / that sum) steps. Counting the
costliest phase instead would charge a warm-up network for compute it never ran.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .algorithms import build_learner
from .config import ConfigError, HyperMAMLConfig, RunConfig
from .datasets import CHANNELS, IMAGE_SIZE
from .episodes import Episodes


def step_flops(config: RunConfig, epoch: int | None = None) -> int:
    """FLOPs of one outer (meta-training) step of `config` in `epoch` (0-based; None: the run's last
    epoch). Only HyperMAML with warm-up costs differently in different epochs (see the module note)."""
    config.validate()
    t = config.train
    epoch = t.epochs - 1 if epoch is None else epoch
    with torch.device("meta"):
        learner = build_learner(config, CHANNELS[t.dataset], IMAGE_SIZE[t.dataset])
        episodes = synthetic_batch(config)
    with flop_counter() as counter:
        loss, _ = learner.meta_loss(episodes, epoch)
        loss.backward()
    return counter.get_total_flops()


def epoch_step_flops(config: RunConfig) -> list[int]:
    """FLOPs of one outer step in each epoch of the run, [epochs]; each phase of the schedule is counted once."""
    by_phase: dict[tuple[bool, bool], int] = {}
    counts = []
    for epoch in range(config.train.epochs):
        phase = _phase(config, epoch)
        if phase not in by_phase:
            by_phase[phase] = step_flops(config, epoch)
        counts.append(by_phase[phase])
    return counts


def epoch_steps(config: RunConfig, step_flops_by_epoch: list[int]) -> int:
    """Outer steps every epoch trains: steps_per_epoch, or fewer if max_train_flops buys fewer steps in
    every epoch (`step_flops_by_epoch`: `epoch_step_flops(config)`). ConfigError if it buys none."""
    t = config.train
    if not t.max_train_flops:
        return t.steps_per_epoch
    one_step_each = sum(step_flops_by_epoch)  # one outer step in each epoch of the run
    affordable = math.floor(t.max_train_flops) // one_step_each  # exact integer arithmetic
    if affordable < 1:
        raise ConfigError(
            f"max_train_flops must be at least {one_step_each:.4g} (one outer step in each of the "
            f"{t.epochs} epochs of this configuration), got {t.max_train_flops:.4g}"
        )
    return min(t.steps_per_epoch, affordable)


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts grouped convolutions' weight gradients correctly.

    torch's formula for aten.convolution_backward ignores `groups`: the weight gradient of a grouped
    convolution is counted as if every group read every other group's input, `groups` times too
    many. MAML's per-task fast weights run one convolution grouped by task, so uncorrected, one
    task's step would cost more the more tasks share its meta-batch.
    """
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    groups,
    output_mask,
    out_shape,
    **kwargs,
) -> int:
    """torch's formula (torch.utils.flop_counter.conv_backward_flop) with the weight gradient divided by `groups`."""

    def channels_first(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # input gradient: a transposed convolution of the output gradient with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # weight gradient: a convolution of the input with the output gradient, per group
        image, kernel = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(channels_first(image), channels_first(kernel), channels_first(out_shape[1])) // groups
    return flops


def synthetic_batch(config: RunConfig, generator: torch.Generator | None = None) -> Episodes:
    """A meta-training batch of the configured shape: random images, each task's classes in order.
    Under torch.device("meta") it holds shapes only (FLOP counting); with a generator, the same
    images every call (timing an outer step)."""
    t = config.train
    shape = (CHANNELS[t.dataset], IMAGE_SIZE[t.dataset], IMAGE_SIZE[t.dataset])

    def part(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(t.way).repeat_interleave(per_class).expand(t.meta_batch, -1).contiguous()
        return torch.rand(t.meta_batch, t.way * per_class, *shape, generator=generator), labels

    return Episodes(*part(t.shot), *part(t.training_query))


def _phase(config: RunConfig, epoch: int) -> tuple[bool, bool]:
    """What an outer step computes in `epoch`: (warm-up MAML on the head, the hypernetwork); MAML's is
    the same every epoch."""
    if isinstance(config.algo, HyperMAMLConfig):
        maml_weight = config.algo.maml_weight(epoch)
        return maml_weight > 0, maml_weight < 1
    return False, False
