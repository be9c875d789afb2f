"""Task-batched Conv4 backbone and the per-class hypernetwork.

Every tensor carries a leading task dimension T: images are [T, B, C, H, W]. The backbone's
parameters are either shared by all tasks (a conv weight [O, I, 3, 3]) or per task (the same with
a leading T, as MAML's inner loop makes them). Activations are laid out batch-major,
[B, T*C, H, W], where F.batch_norm over the T*C channels is exactly per-(task, channel) batch
statistics — the transductive, per-episode BN of the literature. The same memory is [B*T, C, H, W]:

- shared weights (HyperMAML, head-only MAML) run ONE dense convolution over it, [B*T, C, H, W] ->
  [B*T, O, H, W] = [B, T*O, H, W], with no copy before or after (`dense_shared=True`, the default);
- per-task weights (MAML's fast weights) run ONE grouped convolution over [B, T*C, H, W]
  (`dense_shared=False` sends shared weights there too, for benchmarks that compare the two).

`channels_last=True` runs shared weights in channels-last memory order instead, task-major, with the
per-task statistics computed by `batch_norm_per_task`. All paths agree with one plain Conv4 per task
(hypermaml/loop_reference.py) to rounding, in features and first- and second-order gradients
(float64: tests/test_models.py).

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
    `channels_last`: the dense convs of shared weights run in channels-last memory order.
    """

    def __init__(
        self,
        in_channels: int,
        global_pool: bool = False,
        width: int = FEATURES,
        dense_shared: bool = True,
        channels_last: bool = False,
    ):
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
        tasks, batch = x.shape[:2]
        shared = all(block.conv.weight.dim() == 4 and block.bn.weight.dim() == 1 for block in self.blocks)
        if shared and self.dense_shared and self.channels_last:
            return self._dense_channels_last(x)
        # Batch-major: image b of task t is row b*T + t. The activations [B, T*C, H, W] are, in the same
        # memory, [B*T, C, H, W]: the input of a dense conv, whose output is again [B, T*O, H, W].
        h = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:]).contiguous()
        for block in self.blocks:
            weight, gamma, beta = block.conv.weight, block.bn.weight, block.bn.bias
            if weight.dim() == 4 and self.dense_shared:  # shared by all tasks: one dense conv
                h = F.conv2d(h.view(batch * tasks, -1, *h.shape[2:]), weight, padding=1).view(batch, -1, *h.shape[2:])
            else:
                if weight.dim() == 4:  # shared, on the grouped path: a view, gradients sum back over tasks
                    weight = weight.expand(tasks, *weight.shape)
                h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), padding=1, groups=tasks)
            if gamma.dim() == 1:  # channel t*O + o is channel o of task t
                gamma, beta = gamma.repeat(tasks), beta.repeat(tasks)
            h = F.batch_norm(h, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=block.bn.eps)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(batch, tasks, -1, *h.shape[2:])
        h = h.mean(dim=(3, 4)) if self.global_pool else h.flatten(2)
        return h.transpose(0, 1)

    def _dense_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Shared weights, channels-last: dense convs over task-major [T*B, C, H, W] in channels-last
        memory; batch norm per task by `batch_norm_per_task` (the (task, channel) view that
        F.batch_norm needs does not exist in this memory order)."""
        tasks = x.shape[0]
        h = x.flatten(0, 1).to(memory_format=torch.channels_last)  # (.contiguous() keeps a 1-channel batch as is)
        for block in self.blocks:
            h = F.conv2d(h, block.conv.weight, padding=1)
            h = batch_norm_per_task(h, tasks, block.bn.weight, block.bn.bias, block.bn.eps)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.unflatten(0, (tasks, -1))
        return h.mean(dim=(3, 4)) if self.global_pool else h.flatten(2)


def batch_norm_per_task(
    h: torch.Tensor, tasks: int, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> torch.Tensor:
    """Training-mode batch norm of a task-major batch [T*B, C, H, W] with each task's own statistics.

    Per (task, channel) over (B, H, W), with the biased variance: what F.batch_norm gives on one task
    alone. Computed on a [T, B, C, H, W] view of the same memory (no copy, in any memory order) as
    one var_mean reduction and one multiply-add, plain autograd ops (second order included).
    Statistics are taken in at least float32, also when autocast gives bf16 conv outputs.
    """
    h5 = h.unflatten(0, (tasks, -1))
    var, mean = torch.var_mean(
        h5.to(torch.promote_types(h5.dtype, torch.float32)), dim=(1, 3, 4), correction=0, keepdim=True
    )
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
