"""Few-shot data in memory, and episode sampling.

A split is one uint8 tensor of images on the training device (`FewShotSplit`), from which
`EpisodeSampler` draws N-way K-shot tasks with pure torch indexing ops and a seeded
`torch.Generator`: no per-image Python, PIL or host synchronisation in the training loop.
`fixed_episodes` gives the seeded evaluation episodes, the same on every device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields cannot be compared with ==
class FewShotSplit:
    images: torch.Tensor  # uint8 [M, C, H, W], class-contiguous
    class_offsets: torch.Tensor  # int64 [n_classes], first image of each class in `images`
    class_counts: torch.Tensor  # int64 [n_classes], images of each class
    class_names: tuple[str, ...]
    name: str = "given"  # only used in messages, e.g. "omniglot/train"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [M, C, H, W], got {self.images.dtype} {list(self.images.shape)}")
        n_classes = len(self.class_names)
        for field_name in ("class_offsets", "class_counts"):
            tensor = getattr(self, field_name)
            if tensor.dtype != torch.int64 or tuple(tensor.shape) != (n_classes,):
                raise ValueError(f"{field_name} must be int64 [{n_classes}], got {tensor.dtype} {list(tensor.shape)}")
        if n_classes == 0:
            raise ValueError(f"the {self.name} split has no classes")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def min_count(self) -> int:
        return int(self.class_counts.min())

    def to(self, device: torch.device | str) -> FewShotSplit:
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            class_offsets=self.class_offsets.to(device),
            class_counts=self.class_counts.to(device),
        )


@dataclass(frozen=True, eq=False)
class Episodes:
    x_support: torch.Tensor  # float32 [T, N*K, C, H, W] in [0, 1]
    y_support: torch.Tensor  # int64 [T, N*K], class-major: [0]*K + [1]*K + ...
    x_query: torch.Tensor  # float32 [T, N*Q, C, H, W]
    y_query: torch.Tensor  # int64 [T, N*Q], class-major

    @property
    def tasks(self) -> int:
        return self.x_support.shape[0]


class EpisodeSampler:
    """Draws N-way K-shot Q-query tasks from a split; the images are gathered on the split's device.

    The random draws happen on the generator's device: a device generator for training (no host
    round trip), a CPU generator for the fixed evaluation episodes, which are then the same on every
    device (the drawn indices are moved to the split's device).
    """

    def __init__(self, split: FewShotSplit, way: int, shot: int, query: int):
        for arg_name, value in (("way", way), ("shot", shot), ("query", query)):
            if value < 1:
                raise ValueError(f"{arg_name} must be at least 1, got {value}")
        if way > split.n_classes:
            raise ValueError(f"way {way} exceeds the {split.n_classes} classes of the {split.name} split")
        if shot + query > split.min_count:
            raise ValueError(
                f"shot+query = {shot + query} exceeds the {split.min_count} images per class "
                f"of the {split.name} split (its smallest class)"
            )
        self.split = split
        self.way = way
        self.shot = shot
        self.query = query
        # A Python int read once here, so that sample() never syncs with the device.
        self._max_count = int(split.class_counts.max())
        # The class table on the CPU as well, for draws with a CPU generator.
        self._cpu_table = (split.class_counts.cpu(), split.class_offsets.cpu())

    def sample(self, tasks: int, generator: torch.Generator) -> Episodes:
        device = self.split.images.device
        image_index = self._draw_image_index(tasks, generator).to(device)  # [T, N, K+Q]
        support_index = image_index[:, :, : self.shot].reshape(tasks, -1)  # class-major
        query_index = image_index[:, :, self.shot :].reshape(tasks, -1)
        labels = torch.arange(self.way, device=device)
        return Episodes(
            x_support=self._images_as_float(support_index),
            y_support=labels.repeat_interleave(self.shot).repeat(tasks, 1),
            x_query=self._images_as_float(query_index),
            y_query=labels.repeat_interleave(self.query).repeat(tasks, 1),
        )

    def _draw_image_index(self, tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[T, N, K+Q] indices into split.images, drawn and computed on the generator's device."""
        device = generator.device
        if device.type == "cpu":
            class_counts, class_offsets = self._cpu_table
        else:
            class_counts, class_offsets = self.split.class_counts, self.split.class_offsets
        # Top-`way` of iid uniform scores = a uniform random subset in uniform random order.
        class_scores = torch.rand(tasks, self.split.n_classes, generator=generator, device=device)
        classes = class_scores.topk(self.way, dim=1).indices  # [T, N]

        # Same trick per class over image positions; positions beyond the class's count get
        # score -1 so they never win (the constructor ensures per_class <= every count).
        counts = class_counts[classes]  # [T, N]
        position_scores = torch.rand(tasks, self.way, self._max_count, generator=generator, device=device)
        positions_out_of_range = torch.arange(self._max_count, device=device) >= counts.unsqueeze(-1)
        position_scores = position_scores.masked_fill(positions_out_of_range, -1.0)
        positions = position_scores.topk(self.shot + self.query, dim=-1).indices  # [T, N, K+Q]
        return class_offsets[classes].unsqueeze(-1) + positions

    def _images_as_float(self, index: torch.Tensor) -> torch.Tensor:
        images = self.split.images[index.reshape(-1)]
        return (images.float() / 255).reshape(*index.shape, *images.shape[1:])


def fixed_episodes(sampler: EpisodeSampler, episodes: int, seed: int, chunk: int) -> Iterator[Episodes]:
    """The fixed evaluation episodes for `seed`, in chunks of `chunk` tasks.

    Uses its own CPU generator, so the result does not depend on any other RNG state, nor on the
    device the split is on: CPU and GPU runs evaluate the same episodes. The episodes depend on
    `chunk` too (the random draws are shaped per chunk).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < episodes:
        tasks = min(chunk, episodes - done)
        yield sampler.sample(tasks, generator)
        done += tasks
