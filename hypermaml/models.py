"""Task-batched Conv4 backbone and the per-class hypernetwork.

Every tensor carries a leading task dimension T: images are [T, B, C, H, W]. The backbone's
parameters are either shared by all tasks (a conv weight [O, I, 3, 3]) or per task (the same with
a leading T, as MAML's inner loop makes them). Both run as ONE grouped convolution over a
[B, T*C, H, W] layout, where batch norm over channels is exactly per-(task, channel) batch
statistics — the transductive, per-episode BN of the literature.

Why not `torch.func.vmap` over the backbone: on this project's CPUs vmapped conv/BN ran 2.5x slower
than a per-task loop, and `F.batch_norm` under vmap gave wrong second-order gradients (abs. error
1.5e-2 in float64 against per-task autograd). The grouped layout agrees with per-task autograd to
rounding (float64 meta-gradients within 3e-14; the tests assert 1e-5) and is at least as fast as the
loop; `torch.func.functional_call`/`grad` still drive it with per-task fast weights.
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
    """

    def __init__(self, in_channels: int, global_pool: bool = False, width: int = FEATURES):
        super().__init__()
        self.global_pool = global_pool
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
        h = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
        for block in self.blocks:
            weight, gamma, beta = block.conv.weight, block.bn.weight, block.bn.bias
            if weight.dim() == 4:  # shared by all tasks: a view, gradients sum back over tasks
                weight = weight.expand(tasks, *weight.shape)
                gamma, beta = gamma.expand(tasks, -1), beta.expand(tasks, -1)
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), padding=1, groups=tasks)
            h = F.batch_norm(h, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=block.bn.eps)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(batch, tasks, -1, *h.shape[2:])
        h = h.mean(dim=(3, 4)) if self.global_pool else h.flatten(2)
        return h.transpose(0, 1)


def backbone_for(in_channels: int, image_size: int) -> Conv4:
    """Conv4 for 28x28 (Omniglot), Conv4Pool for larger images (84x84 miniImageNet / CUB)."""
    return Conv4(in_channels, global_pool=image_size > 28)


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
