"""Task-batched Conv4 backbone and the per-class hypernetwork.

Every tensor carries a leading task dimension T: images are [T, B, C, H, W]. The backbone's
parameters are either shared by all tasks (a conv weight [O, I, 3, 3]) or per task (the same with
a leading T, as MAML's inner loop makes them). Batch norm always uses each task's own batch
statistics per channel — the transductive, per-episode BN of the literature.

- Shared weights (HyperMAML, head-only MAML): ONE dense convolution over all tasks' images laid out
  task-major, [T*B, C, H, W]; batch norm then takes its statistics per (task, channel) over a
  [T, B, C, H, W] view of the same memory (`batch_norm_per_task`).
- Per-task weights (MAML's fast weights): ONE grouped convolution over a [B, T*C, H, W] layout, where
  F.batch_norm over the T*C channels is exactly per-(task, channel) statistics.

Both agree with one plain Conv4 per task (hypermaml/loop_reference.py) to rounding, in features and
in first- and second-order gradients (float64: tests/test_models.py). `dense_shared=False` makes
shared weights take the grouped path too (expanded views), for benchmarks that compare the two.

Why not `torch.func.vmap` over the backbone: on this project's CPUs vmapped conv/BN ran 2.5x slower
than a per-task loop, and `F.batch_norm` under vmap gave wrong second-order gradients (abs. error
1.5e-2 in float64 against per-task autograd). `torch.func.functional_call`/`grad` drive the grouped
layout with per-task fast weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 64  # Conv4's embedding size on 28x28 input, and Conv4Pool's on any input


class Conv4(nn.Module):
    """Four blocks of conv3x3(64) -> BN (episode batch stats) -> ReLU -> maxpool 2x2.

    `global_pool=False` is the Omniglot Conv4 (28x28 -> 1x1x64). `global_pool=True` is Conv4Pool:
    the same blocks then a spatial mean, so 84x84 input still gives 64 features.
    The convs have no bias: BN right after them would cancel it exactly.
    `dense_shared`: shared weights run one dense conv (else the grouped conv, as per-task weights do).
    `channels_last`: the dense path keeps images and activations in channels-last memory order.
    """

    def __init__(self, in_channels: int, global_pool: bool = False, width: int = FEATURES,
                 dense_shared: bool = True, channels_last: bool = False):
        super().__init__()
        self.global_pool = global_pool
        self.dense_shared = dense_shared
        self.channels_last = channels_last
        self.blocks = nn.ModuleList()
        for i in range(4):
            block = nn.Module()
            block.conv = nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False)
            # track_running_stats=False: there are no running statistics to carry between episodes.
            block.bn = nn.BatchNorm2d(width, track_running_stats=False)
            self.blocks.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, features]."""
        shared = all(block.conv.weight.dim() == 4 and block.bn.weight.dim() == 1 for block in self.blocks)
        if shared and self.dense_shared:
            return self._dense(x)
        return self._grouped(x)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """Shared weights: one dense conv over [T*B, C, H, W] per block, batch norm per task."""
        tasks = x.shape[0]
        h = x.flatten(0, 1)
        if self.channels_last:
            h = h.to(memory_format=torch.channels_last)  # (.contiguous() would keep a 1-channel NCHW batch as is)
        for block in self.blocks:
            h = F.conv2d(h, block.conv.weight, padding=1)
            h = batch_norm_per_task(h, tasks, block.bn.weight, block.bn.bias, block.bn.eps)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.unflatten(0, (tasks, -1))
        return h.mean(dim=(3, 4)) if self.global_pool else h.flatten(2)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Per-task weights (shared ones are expanded): one grouped conv over [B, T*C, H, W] per block."""
        tasks, batch = x.shape[:2]
        h = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
        for block in self.blocks:
            weight, gamma, beta = block.conv.weight, block.bn.weight, block.bn.bias
            if weight.dim() == 4:  # shared by all tasks: a view, gradients sum back over tasks
                weight = weight.expand(tasks, *weight.shape)
            if gamma.dim() == 1:
                gamma, beta = gamma.expand(tasks, -1), beta.expand(tasks, -1)
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), padding=1, groups=tasks)
            h = F.batch_norm(h, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=block.bn.eps)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(batch, tasks, -1, *h.shape[2:])
        h = h.mean(dim=(3, 4)) if self.global_pool else h.flatten(2)
        return h.transpose(0, 1)


def batch_norm_per_task(h: torch.Tensor, tasks: int, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Training-mode batch norm of a task-major batch [T*B, C, H, W] with each task's own statistics.

    Per (task, channel) over (B, H, W), with the biased variance: what F.batch_norm gives on one task
    alone. Computed on a [T, B, C, H, W] view of the same memory (no copy, in either memory format)
    as one var_mean reduction and one fused multiply-add; plain autograd ops, so second-order
    gradients need nothing special. (F.batch_norm itself would need the channels to be (task,
    channel) pairs, i.e. a transposed copy of the activations before and after every block.)
    Statistics are taken in at least float32, also when autocast gives bf16 conv outputs.
    """
    h5 = h.unflatten(0, (tasks, -1))
    var, mean = torch.var_mean(h5.to(torch.promote_types(h5.dtype, torch.float32)), dim=(1, 3, 4), correction=0, keepdim=True)
    scale = gamma.view(-1, 1, 1) * torch.rsqrt(var + eps)  # [T, 1, C, 1, 1]
    shift = beta.view(-1, 1, 1) - mean * scale
    return torch.addcmul(shift, h5, scale).flatten(0, 1)


def backbone_for(in_channels: int, image_size: int, dense_shared: bool = True, channels_last: bool = False) -> Conv4:
    """Conv4 for 28x28 (Omniglot), Conv4Pool for larger images (84x84 miniImageNet / CUB)."""
    return Conv4(in_channels, global_pool=image_size > 28, dense_shared=dense_shared, channels_last=channels_last)


def linear(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Classifier head on [T, B, D] features with shared ([N, D]) or per-task ([T, N, D]) weights."""
    if weight.dim() == 2:
        return z @ weight.T + bias
    return torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2))


class HyperNetwork(nn.Module):
    """MLP applied to each class row: Linear(in, H) -> ReLU -> [Linear(H, H) -> ReLU]* -> Linear(H, out)."""

    def __init__(self, in_features: int, hidden: int, layers: int, out_features: int):
        super().__init__()
        sizes = [in_features] + [hidden] * (layers - 1)
        mods: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
