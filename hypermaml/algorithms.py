"""MAML and HyperMAML, each vectorized over the T tasks of a meta-batch.

Both learners expose the same two methods:
  meta_loss(episodes, epoch) -> (mean query loss over tasks, per-task query accuracy [T])
      the training objective, differentiable w.r.t. all meta-parameters;
  query_logits(episodes) -> [T, N*Q, N]
      the test-time path (what validation and test evaluate).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .config import HyperMAMLConfig, MAMLConfig, RunConfig
from .episodes import Episodes
from .models import FEATURES, Conv4, HyperNetwork, backbone_for, linear


def query_loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over tasks of each task's mean query cross-entropy (not a sum: the gradient scale must not
    grow with the meta-batch), and the per-task accuracy, both on the device (no host sync)."""
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels).mean(1)
    accuracy = (logits.argmax(-1) == labels).float().mean(1)
    return loss.mean(), accuracy


def _summed_task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of per-task mean CE: its gradient w.r.t. task t's fast weights is task t's own."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / labels.shape[1]


def _detached(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in params.items()}


def _adapt_head_one_task(weight, bias, z_support, y_support, *, steps: int, lr: float, first_order: bool):
    """`steps` SGD steps of one task's head on its support cross-entropy (features fixed)."""
    head = {"weight": weight, "bias": bias}

    def support_loss(p):
        return F.cross_entropy(z_support @ p["weight"].T + p["bias"], y_support)

    for _ in range(steps):
        # The gradient is always taken at the *current* fast weights (the reference warm-up took it
        # w.r.t. the initial head for steps >= 2, which is not MAML).
        grads = grad(support_loss)(_detached(head) if first_order else head)
        if first_order:
            grads = _detached(grads)
        head = {k: head[k] - lr * grads[k] for k in head}
    return head["weight"], head["bias"]


def adapt_heads(weight, bias, z_support, y_support, *, steps: int, lr: float, first_order: bool):
    """Per-task adapted heads [T, N, D], [T, N] from a shared head and task-batched support features."""
    adapt = partial(_adapt_head_one_task, steps=steps, lr=lr, first_order=first_order)
    return vmap(adapt, in_dims=(None, None, 0, 0))(weight, bias, z_support, y_support)


class MAML(nn.Module):
    """MAML with a Conv4 backbone and a linear head; inner loop over all parameters or the head only.

    `backbone`: a prebuilt Conv4 (e.g. with other execution options); else `backbone_for` the images.
    """

    def __init__(self, cfg: MAMLConfig, way: int, in_channels: int, image_size: int, backbone: Conv4 | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else backbone_for(in_channels, image_size)
        self.head = nn.Linear(FEATURES, way)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.backbone(x), self.head.weight, self.head.bias)

    def meta_loss(self, episodes: Episodes, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._adapted_query_logits(episodes, self.cfg.inner_steps, first_order=self.cfg.first_order)
        return query_loss_and_accuracy(logits, episodes.y_query)

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        return self._adapted_query_logits(episodes, self.cfg.eval_inner_steps, first_order=True)

    def _adapted_query_logits(self, ep: Episodes, steps: int, first_order: bool) -> torch.Tensor:
        lr = self.cfg.inner_lr
        if self.cfg.inner_params == "head":
            # The backbone is not adapted, so its features are computed once per set.
            z_support, z_query = self.backbone(ep.x_support), self.backbone(ep.x_query)
            weight, bias = adapt_heads(
                self.head.weight, self.head.bias, z_support, ep.y_support, steps=steps, lr=lr, first_order=first_order
            )
            return linear(z_query, weight, bias)

        # Per-task fast weights: views of the shared parameters with a leading task dimension.
        fast = {name: p.expand(ep.tasks, *p.shape) for name, p in self.named_parameters()}

        def support_loss(params):
            return _summed_task_losses(functional_call(self, params, (ep.x_support,)), ep.y_support)

        for _ in range(steps):
            grads = grad(support_loss)(_detached(fast) if first_order else fast)
            if first_order:
                grads = _detached(grads)
            fast = {k: fast[k] - lr * grads[k] for k in fast}
        return functional_call(self, fast, (ep.x_query,))


class HyperMAML(nn.Module):
    """HyperMAML: a per-class hypernetwork maps the support set to an update of the classifier head.

    Per class, the hypernetwork reads each support image's embedding, the *universal* head's softmax
    predictions for it (no gradient flows through them), and its label one-hot; the K shots are
    averaged or concatenated; it outputs (dW_i, db_i) and the task head is theta' = theta + delta.
    The label is one-hot, not the reference's raw integer, because labels are nominal: an integer
    column tells the network that class 4 is "more" than class 0, while a one-hot lines up with the
    softmax columns, so "my class's predicted probability" is one linear read-out away.
    """

    def __init__(
        self,
        cfg: HyperMAMLConfig,
        way: int,
        shot: int,
        in_channels: int,
        image_size: int,
        backbone: Conv4 | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else backbone_for(in_channels, image_size)
        self.head = nn.Linear(FEATURES, way)
        nn.init.zeros_(self.head.bias)
        per_shot = FEATURES + 2 * way  # embedding | universal-head softmax | one-hot label
        in_features = per_shot * (shot if cfg.aggregation == "concat" else 1)
        self.hypernet = HyperNetwork(in_features, cfg.hn_hidden, cfg.hn_layers, FEATURES + 1)

    def meta_loss(self, episodes: Episodes, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits, delta_sq = self._query_logits(episodes, self.cfg.maml_weight(epoch))
        loss, accuracy = query_loss_and_accuracy(logits, episodes.y_query)
        if self.cfg.delta_penalty > 0 and delta_sq is not None:
            loss = loss + self.cfg.delta_penalty * delta_sq.mean()
        return loss, accuracy

    def query_logits(self, episodes: Episodes) -> torch.Tensor:
        # Validation and test always use the pure hypernetwork: the model that is finally tested.
        return self._query_logits(episodes, maml_weight=0.0)[0]

    def head_update(self, z_support: torch.Tensor, y_support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypernetwork update of the head: dW [T, N, D], db [T, N]."""
        tasks, n_support, dim = z_support.shape
        way = self.head.out_features
        with torch.no_grad():  # predictions of the universal head theta_H, never of a previous task's head
            probs = torch.softmax(linear(z_support, self.head.weight, self.head.bias), -1)
        rows = torch.cat([z_support, probs, F.one_hot(y_support, way).to(z_support.dtype)], -1)
        # Group the support rows by label (stable: shot order within a class is kept), so the result
        # does not depend on how the support set happens to be ordered.
        order = torch.argsort(y_support, dim=1, stable=True)
        rows = rows.gather(1, order.unsqueeze(-1).expand_as(rows)).view(tasks, way, n_support // way, -1)
        per_class = rows.mean(2) if self.cfg.aggregation == "mean" else rows.flatten(2)
        out = self.hypernet(per_class)
        return out[..., :dim], out[..., dim]

    def _query_logits(self, ep: Episodes, maml_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        z_support, z_query = self.backbone(ep.x_support), self.backbone(ep.x_query)
        weight, bias = self.head.weight, self.head.bias
        new_weight, new_bias = weight.expand(ep.tasks, -1, -1), bias.expand(ep.tasks, -1)
        delta_sq = None
        if maml_weight < 1:
            d_weight, d_bias = self.head_update(z_support, ep.y_support)
            # The delta is added exactly once (the reference added it once per inner step while switching).
            new_weight = new_weight + (1 - maml_weight) * d_weight
            new_bias = new_bias + (1 - maml_weight) * d_bias
            delta_sq = d_weight.pow(2).sum((1, 2)) + d_bias.pow(2).sum(1)
        if maml_weight > 0:
            maml_weight_t, maml_bias_t = adapt_heads(
                weight,
                bias,
                z_support,
                ep.y_support,
                steps=self.cfg.warmup_inner_steps,
                lr=self.cfg.warmup_inner_lr,
                first_order=False,
            )
            new_weight = new_weight + maml_weight * (maml_weight_t - weight)
            new_bias = new_bias + maml_weight * (maml_bias_t - bias)
        return linear(z_query, new_weight, new_bias), delta_sq


def build_learner(config: RunConfig, in_channels: int, image_size: int) -> MAML | HyperMAML:
    train = config.train
    backbone = backbone_for(in_channels, image_size, dense_shared=train.dense_conv, channels_last=train.channels_last)
    if train.algorithm == "maml":
        return MAML(config.algo, train.way, in_channels, image_size, backbone=backbone)
    return HyperMAML(config.algo, train.way, train.shot, in_channels, image_size, backbone=backbone)
