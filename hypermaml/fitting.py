"""`fit` (meta-training with per-epoch validation, checkpoints, exact resume) and `evaluate`."""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .algorithms import MAML, HyperMAML, build_learner
from .allocator import keep_heap_warm
from .config import DATA_LOCATION, ConfigError, RunConfig, from_flat, to_flat
from .datasets import CHANNELS, IMAGE_SIZE, load_split
from .episodes import Episodes, EpisodeSampler, FewShotSplit, fixed_episodes
from .flops import epoch_step_flops, epoch_steps

CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"
# Keys of an epoch's metrics (fit's history and what it reports) that other modules read.
EPOCH, VAL_ACC, BEST_VAL_ACC, TRAIN_S, TRAIN_EPISODES = "epoch", "val_acc", "best_val_acc", "train_s", "train_episodes"
CAPPED = "capped"  # 1.0 when the training-time cap makes this epoch the last before `epochs`
# Settings that may differ when resuming: where the data is, not what is computed; and epochs, which a
# resumed run may raise to train on (a study, which fixes its epochs, does not allow that: hpo.spec.RELOCATABLE).
RESUMABLE_CHANGES = DATA_LOCATION | {"epochs"}
# Tasks vectorized per pass on CPU when task_chunk = 0. Batching more tasks gains nothing on a
# compute-bound CPU and loses cache locality (see benchmarks/throughput.py); on a GPU all at once.
CPU_TASK_CHUNK = 4
# Evaluation episodes are drawn in blocks of this many, whatever the learner's task_chunk: the
# episode set then depends on (split, shape, seed) only, so two learners see the same episodes.
EVAL_BLOCK = 50

Report = Callable[[dict[str, Any]], None]
# A learner's meta_loss(episodes, epoch) -> (mean query loss, per-task query accuracy).
MetaLoss = Callable[[Episodes, int], tuple[torch.Tensor, torch.Tensor]]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # mean query accuracy over the episodes
    ci95: float  # 1.96 * std / sqrt(episodes)
    ms_per_task: float  # time per episode: drawing it, adapting to its support set, predicting its queries
    episodes: int
    per_episode: torch.Tensor = field(repr=False)  # [episodes] accuracies, on the CPU


@dataclass
class FitResult:
    learner: MAML | HyperMAML  # weights of the last epoch
    best_state: dict[str, torch.Tensor]  # weights of the epoch with the best validation accuracy
    best_val_acc: float
    best_epoch: int  # 1-based
    history: list[dict[str, float]]
    train_seconds: float  # meta-training time, validation excluded
    train_episodes_per_s: float
    train_episodes: int  # meta-training episodes in all (outer steps x meta_batch)
    train_flops: int  # their floating-point operations (hypermaml.flops)
    precision: str  # what meta-training ran in: "fp32" or "bf16" (config.train.precision resolved)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def task_chunk_size(config: RunConfig, device: torch.device) -> int:
    if config.train.task_chunk:
        return config.train.task_chunk
    return config.train.meta_batch if device.type == "cuda" else CPU_TASK_CHUNK


def load_data(config: RunConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, FewShotSplit]:
    """Load the splits (CPU) and check that the episode shape fits each of them."""
    t = config.train
    data = {}
    for split in splits:
        data[split] = load_split(t.dataset, split, t.data_root, t.cache_dir or None, download=t.download)
        episode_sampler(config, data[split], split)  # built only to fail early if the shape does not fit
    return data


def episode_sampler(config: RunConfig, split_data: FewShotSplit, split: str) -> EpisodeSampler:
    """An EpisodeSampler of the configured way/shot/query on one split (the training split's query:
    `training_query`); a shape that does not fit is a ConfigError."""
    t = config.train
    query = t.training_query if split == "train" else t.query
    try:
        return EpisodeSampler(split_data, t.way, t.shot, query)
    except ValueError as error:
        raise ConfigError(f"{t.dataset} {split} split: {error}") from None


def chunks(episodes: Episodes, size: int) -> Iterator[Episodes]:
    for start in range(0, episodes.tasks, size):
        part = slice(start, start + size)
        yield Episodes(
            episodes.x_support[part], episodes.y_support[part], episodes.x_query[part], episodes.y_query[part]
        )


def new_learner(config: RunConfig, device: torch.device | str = "cpu") -> MAML | HyperMAML:
    """A freshly initialized learner; its init depends on config.train.seed only (no global RNG)."""
    dataset = config.train.dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        learner = build_learner(config, CHANNELS[dataset], IMAGE_SIZE[dataset])
    learner.run_config = config
    return learner.to(device)


def evaluate(
    learner: MAML | HyperMAML,
    split: str = "test",
    episodes: int = 600,
    seed: int | None = None,
    data: FewShotSplit | None = None,
) -> EvalResult:
    """Accuracy ± 95% CI on a fixed, seeded set of episodes of `split` (the test-time path).

    `seed` defaults to the run's eval_seed, so every run of a study sees the same episodes.
    """
    keep_heap_warm()
    config: RunConfig = learner.run_config
    device = next(learner.parameters()).device
    if data is None:
        data = load_data(config, (split,))[split]
    sampler = episode_sampler(config, data.to(device), split)
    seed = config.train.eval_seed if seed is None else seed
    accuracies = []
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():  # float32 whatever the training precision
        for block in fixed_episodes(sampler, episodes, seed, EVAL_BLOCK):
            for ep in chunks(block, task_chunk_size(config, device)):
                logits = learner.query_logits(ep)
                accuracies.append((logits.argmax(-1) == ep.y_query).float().mean(1))  # stays on the device
    per_episode = torch.cat(accuracies).cpu()  # the one host sync of the evaluation
    seconds = time.perf_counter() - start
    ci95 = 1.96 * per_episode.std().item() / math.sqrt(episodes) if episodes > 1 else float("nan")
    return EvalResult(per_episode.mean().item(), ci95, 1000 * seconds / episodes, episodes, per_episode)


@dataclass
class TrainingProgress:
    """Everything `fit` carries from one epoch to the next, and what last.pt stores."""

    learner: MAML | HyperMAML
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # draws the training episodes
    meta_loss: MetaLoss  # learner.meta_loss, or its compiled form (`meta_loss_function`)
    precision: str  # "fp32" or "bf16": config.train.precision as resolved for the device (`training_precision`)
    epoch_flops: list[int]  # FLOPs of one outer step in each epoch (`epoch_step_flops`)
    epoch_steps: int  # outer steps each epoch trains: steps_per_epoch, or fewer under max_train_flops
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0  # 1-based; 0 before the first validation
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochTraining:
    loss: float  # mean query loss over the epoch's training tasks
    accuracy: float  # mean query accuracy over the same tasks
    seconds: float  # meta-training time of the epoch, validation excluded
    steps: int  # outer steps the epoch ran: all of them unless the time cap cut it
    episodes: int  # training episodes of those steps


def fit(
    config: RunConfig,
    report: Report | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    data: dict[str, FewShotSplit] | None = None,
) -> FitResult:
    """Meta-train for epochs x steps_per_epoch meta-batches, validating after every epoch.

    The training budget: every epoch trains steps_per_epoch outer steps, or fewer when
    `max_train_flops` buys fewer (the same number in every epoch: `hypermaml.flops.epoch_steps`; a
    budget too small for one step per epoch is a ConfigError, before any data is loaded).
    `max_train_seconds` is a safety stop on top: it may end an epoch early, or the run before its
    last epoch, whichever of the two limits comes first.

    After each epoch: `report(metrics)` is called (after that epoch's checkpoint is written) with
    epoch, train_loss, train_acc, val_acc, val_ci95, episodes_per_s, epoch_s, best_val_acc,
    train_episodes and train_flops (cumulative: the last epoch's are the network's totals), capped
    (1.0 when `max_train_seconds` ends training after this epoch, before the last) and, for
    HyperMAML, hn_weight. `checkpoint_dir` gets last.pt (atomically, every epoch) and best.pt.
    `resume_from` (a checkpoint file, or a folder holding last.pt) continues exactly where it
    stopped, with the steps per epoch the run started with (also when `epochs` is raised to extend it).
    """
    config.validate()
    keep_heap_warm()
    t = config.train
    device = resolve_device(t.device)
    progress = start_training(config, device)
    if resume_from is not None:
        restore_from_checkpoint(progress, config, resume_from)
    data = data if data is not None else load_data(config, ("train", "val"))
    train_sampler = episode_sampler(config, data["train"].to(device), "train")
    val_data = data["val"].to(device)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    for epoch in range(progress.epochs_done, t.epochs):
        if time_cap_reached(progress.history, t.max_train_seconds):
            break  # the epoch before was the last its cap allowed (also when a resumed run ended there)
        epoch_start = time.perf_counter()
        training = train_epoch(
            progress, train_sampler, config, epoch, cap_seconds_left(progress.history, t.max_train_seconds)
        )
        val = evaluate(progress.learner, "val", t.val_episodes, t.eval_seed, data=val_data)
        improved = record_epoch(progress, config, epoch, training, val, epoch_start)
        if checkpoint_dir is not None:
            write_checkpoints(progress, config, checkpoint_dir, improved)
        if report is not None:
            report(dict(progress.history[-1]))

    train_seconds = trained_seconds(progress.history)
    train_episodes, train_flops = training_totals(progress.history)
    return FitResult(
        learner=progress.learner,
        best_state=progress.best_state,
        best_val_acc=progress.best_val_acc,
        best_epoch=progress.best_epoch,
        history=progress.history,
        train_seconds=train_seconds,
        train_episodes_per_s=train_episodes / train_seconds if train_seconds > 0 else float("nan"),
        train_episodes=train_episodes,
        train_flops=train_flops,
        precision=progress.precision,
    )


def training_totals(history: list[dict[str, float]]) -> tuple[int, int]:
    """Meta-training episodes and FLOPs of the epochs in `history` (its metrics are cumulative)."""
    if not history:
        return 0, 0
    return history[-1][TRAIN_EPISODES], history[-1]["train_flops"]


def time_cap_reached(history: list[dict[str, float]], max_train_seconds: float) -> bool:
    """Whether one more epoch would take meta-training past `max_train_seconds` (0: no limit), its time
    predicted as the mean of the epochs so far. Equal compute per network: an expensive configuration
    trains fewer epochs instead of more seconds."""
    if not max_train_seconds or not history:
        return False
    spent = trained_seconds(history)
    return spent + spent / len(history) > max_train_seconds


def cap_seconds_left(history: list[dict[str, float]], max_train_seconds: float) -> float:
    """Meta-training time the cap leaves for the next epoch (inf without a cap): `train_epoch` ends there."""
    return max_train_seconds - trained_seconds(history) if max_train_seconds else math.inf


def trained_seconds(history: list[dict[str, float]]) -> float:
    return sum(h[TRAIN_S] for h in history)


def start_training(config: RunConfig, device: torch.device) -> TrainingProgress:
    """A fresh learner, its Adam optimizer and the seeded episode generator, before epoch 1, with the
    FLOPs of an outer step and the steps per epoch (ConfigError: max_train_flops buys no step per epoch)."""
    flops = epoch_step_flops(config)
    steps = epoch_steps(config, flops)
    learner = new_learner(config, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.train.outer_lr)
    generator = torch.Generator(device).manual_seed(config.train.seed)
    return TrainingProgress(
        learner,
        optimizer,
        generator,
        meta_loss_function(learner, config.train.compile),
        training_precision(config.train.precision, device),
        flops,
        steps,
    )


def meta_loss_function(learner: MAML | HyperMAML, compile: bool) -> MetaLoss:
    """learner.meta_loss, or with `compile` its torch.compile'd form. Shapes are static
    (dynamic=False): each task-chunk shape compiles once, the first time it comes.

    The epoch enters the meta-loss only through HyperMAML's warm-up weight, and compiled code is
    specialized on the epochs it reads: with a warm-up, every epoch after the switch is passed as
    the first one with weight 0, so the code compiles warmup_epochs + switch_epochs + 1 times, not
    once per epoch.
    """
    if not compile:
        return learner.meta_loss
    compiled = torch.compile(learner.meta_loss, dynamic=False)
    if not (isinstance(learner, HyperMAML) and learner.cfg.warmup):
        return compiled
    last = learner.cfg.warmup_epochs + learner.cfg.switch_epochs  # maml_weight is 0 from this epoch on
    return lambda episodes, epoch: compiled(episodes, min(epoch, last))


def restore_from_checkpoint(progress: TrainingProgress, config: RunConfig, resume_from: str | Path) -> None:
    """Put `progress` back in the state a checkpoint saved, after checking it was made by this config."""
    state = load_checkpoint(resume_from)
    check_resumable(config, state["config"])
    progress.learner.load_state_dict(state["model"])
    progress.optimizer.load_state_dict(state["optimizer"])
    progress.generator.set_state(state["train_generator"])
    progress.epochs_done = state["epoch"]
    progress.history = list(state["history"])
    progress.best_val_acc, progress.best_epoch = state["best_val_acc"], state["best_epoch"]
    progress.best_state = state.get("best_model", progress.learner.state_dict())
    # The steps per epoch the run started with, not recounted: a retry trains the same steps whatever
    # FLOP count this torch version would give, and a run resumed with more epochs goes on at the
    # same pace. (A checkpoint that passed check_resumable has max_train_flops, so it has these too.)
    progress.epoch_steps = state["epoch_steps"]
    if config.train.precision == "auto" and progress.history and "bf16_autocast" in progress.history[-1]:
        # "auto" was resolved on the machine that started the run; a retry may land on other hardware,
        # and one network must not train in two precisions.
        progress.precision = "bf16" if progress.history[-1]["bf16_autocast"] else "fp32"


def train_epoch(
    progress: TrainingProgress, sampler: EpisodeSampler, config: RunConfig, epoch: int, seconds_left: float = math.inf
) -> EpochTraining:
    """`progress.epoch_steps` outer steps (`outer_step` on a freshly sampled meta-batch), or fewer: the
    epoch ends after the step that uses up `seconds_left` of training time (the time cap's remainder),
    so a configuration whose first epoch alone outlasts the cap trains no longer than any other.

    Raises TrainingDiverged if the epoch's mean loss is not finite.
    """
    t = config.train
    device = next(progress.learner.parameters()).device
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    for steps in range(1, progress.epoch_steps + 1):  # noqa: B007 (the steps taken, read after the loop)
        loss, correct = outer_step(progress, sampler.sample(t.meta_batch, progress.generator), config, epoch)
        loss_sum += loss
        correct_sum += correct
        # A host clock, no device sync: exact on a CPU; on a GPU it may read a few queued steps early.
        if time.perf_counter() - start >= seconds_left:
            break
    n_train = steps * t.meta_batch
    train_loss = (loss_sum / n_train).item()  # the one host sync of the epoch
    seconds = time.perf_counter() - start
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: train loss is {train_loss}")
    return EpochTraining(train_loss, (correct_sum / n_train).item(), seconds, steps, n_train)


def outer_step(
    progress: TrainingProgress, episodes: Episodes, config: RunConfig, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One outer step on a meta-batch: the meta-loss in task chunks (in the configured precision),
    their backward passes, one Adam step. Returns the sums over the tasks of the query loss and of
    the query accuracy, on the device (no host sync)."""
    learner, optimizer = progress.learner, progress.optimizer
    device = next(learner.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    loss_sum = correct_sum = torch.zeros((), device=device)
    for part in chunks(episodes, task_chunk_size(config, device)):
        with autocast(progress.precision, device):
            loss, accuracy = progress.meta_loss(part, epoch)
        (loss * (part.tasks / episodes.tasks)).backward()  # outside autocast, as torch recommends
        loss_sum = loss_sum + loss.detach() * part.tasks
        correct_sum = correct_sum + accuracy.sum()
    optimizer.step()
    return loss_sum, correct_sum


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The meta-training forward's autocast: with precision "bf16" (or "auto" on a device with native
    bf16), convolutions and matmuls run in bfloat16 (cross-entropy losses in float32); with "fp32" it
    does nothing. Meta-gradient error against float64: tests/test_execution.py."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_precision(precision, device) == "bf16")


def training_precision(precision: str, device: torch.device) -> str:
    """The precision meta-training runs in: "auto" becomes "bf16" where the device computes bf16
    natively, else "fp32". On CPUs without bf16 instructions autocast would emulate it, slower than
    float32; test accuracy under bf16 on this project's CPU: docs/results.md, "bf16 against float32"."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def native_bf16(device: torch.device) -> bool:
    """A CUDA GPU that supports bf16, or a CPU with avx512_bf16 / AMX-BF16 (Linux: /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to know, so float32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def record_epoch(
    progress: TrainingProgress,
    config: RunConfig,
    epoch: int,
    training: EpochTraining,
    val: EvalResult,
    epoch_start: float,
) -> bool:
    """Append epoch `epoch`'s (0-based) metrics to the history and keep its weights if they validate best.

    Returns whether this epoch is the new best.
    """
    learner = progress.learner
    episodes_before, flops_before = training_totals(progress.history)
    improved = val.accuracy > progress.best_val_acc
    if improved:
        progress.best_val_acc, progress.best_epoch = val.accuracy, epoch + 1
        progress.best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    metrics = {
        EPOCH: epoch + 1,
        "train_loss": training.loss,
        "train_acc": training.accuracy,
        VAL_ACC: val.accuracy,
        "val_ci95": val.ci95,
        BEST_VAL_ACC: progress.best_val_acc,
        "episodes_per_s": training.episodes / training.seconds,
        TRAIN_S: training.seconds,
        # Cumulative: the last epoch's are what the network used in all.
        TRAIN_EPISODES: episodes_before + training.episodes,
        "train_flops": flops_before + training.steps * progress.epoch_flops[epoch],
        "epoch_s": time.perf_counter() - epoch_start,
        "bf16_autocast": float(progress.precision == "bf16"),  # what precision "auto" became on this device
    }
    if isinstance(learner, HyperMAML):
        metrics["hn_weight"] = 1.0 - learner.cfg.maml_weight(epoch)
    progress.history.append(metrics)
    progress.epochs_done = epoch + 1
    # Whether the training-time cap makes this the last epoch before `epochs`: a caller tests after it.
    t = config.train
    metrics[CAPPED] = float(epoch + 1 < t.epochs and time_cap_reached(progress.history, t.max_train_seconds))
    return improved


def write_checkpoints(progress: TrainingProgress, config: RunConfig, checkpoint_dir: Path, improved: bool) -> None:
    """last.pt (everything `restore_from_checkpoint` needs) every epoch; best.pt when the epoch is the new best."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": to_flat(config),
        "epoch": progress.epochs_done,
        "epoch_steps": progress.epoch_steps,
        "model": progress.learner.state_dict(),
        "optimizer": progress.optimizer.state_dict(),
        "train_generator": progress.generator.get_state(),
        "history": progress.history,
        "best_val_acc": progress.best_val_acc,
        "best_epoch": progress.best_epoch,
        "best_model": progress.best_state,
    }
    save_checkpoint(state, checkpoint_dir / LAST)
    if improved:
        save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "config": to_flat(config),
                "epoch": progress.epochs_done,
                "model": progress.best_state,
                "val_acc": progress.best_val_acc,
            },
            checkpoint_dir / BEST,
        )


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a reader sees the old checkpoint or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError(f"{path} is not a readable checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a hypermaml checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_learner(path: str | Path, device: str = "cpu") -> MAML | HyperMAML:
    """The learner stored in a checkpoint (best.pt or last.pt), with its RunConfig attached."""
    state = load_checkpoint(path)
    config = from_flat({**state["config"], "device": device})
    learner = new_learner(config, resolve_device(device))
    learner.load_state_dict(state["model"])
    return learner


def check_resumable(config: RunConfig, saved: dict[str, Any]) -> None:
    """ConfigError unless `config` continues the run whose checkpoint holds the settings `saved`."""
    current = to_flat(config)
    changed = sorted(
        k for k in set(current) | set(saved) if k not in RESUMABLE_CHANGES and current.get(k) != saved.get(k)
    )
    if changed:
        changes = ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume: the checkpoint was made with other settings ({changes}); "
            "resume with the settings it was made with, or start a new run"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
