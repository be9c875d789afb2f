"""The study specification: one dataclass, resolved from a preset plus command-line flags.

Fairness is built in: every algorithm gets the same trials, epochs, training episodes per epoch,
resources, seeds and validation/test episodes. An epoch is a fixed number of training *episodes*
(steps_per_epoch = episodes_per_epoch // meta_batch), so a tuned meta-batch size changes how the
episodes are batched, not how much data a trial sees.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypermaml.config import ALGORITHMS

SEARCHERS = ("tpe", "random", "gp", "cmaes", "qmc")
SCHEDULERS = ("asha", "none")
DATA_ROOT_ENV = "HYPERMAML_DATA_ROOT"
SPEC_FILE = "spec.json"  # in the study folder: the spec a study was started with
# Replicate seeds start here: far from the small seeds users pass with --seed, which tuning trains with.
REPLICATE_SEED_BASE = 1000


@dataclass(frozen=True)
class StudySpec:
    name: str = "hypermaml-vs-maml"
    preset: str = "default"
    dataset: str = "omniglot"
    data_root: str = ""
    cache_dir: str = ""
    way: int = 5
    shot: int = 1
    query: int = 15
    algorithms: tuple[str, ...] = ALGORITHMS
    trials: int = 8  # per algorithm
    epochs: int = 5  # per trial (ASHA's max_t)
    episodes_per_epoch: int = 240
    meta_batch: int = 8  # used when a space does not tune it
    val_episodes: int = 100
    test_episodes: int = 600
    test_repeats: int = 1  # test sets of test_episodes each (episode seeds eval_seed, eval_seed + 1, ...)
    replicate_top: int = 1  # candidates per algorithm retrained with fresh seeds (top-k by validation)
    replicate_seeds: int = 3  # fresh training seeds per candidate
    equivalence_margin: float = 1.0  # points: a CI inside +-margin means "equivalent"
    time_budget_s: float = 0.0  # 0 = none; else split equally between the algorithms
    searcher: str = "tpe"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    max_failures: int = 1
    seed: int = 0
    tracking_uri: str = ""  # default sqlite:///<cwd>/mlflow.db
    storage_path: str = ""  # default <cwd>/ray_results
    address: str = ""  # Ray cluster address ("auto", "ray://..."); empty = local
    spaces: dict[str, str] = field(default_factory=dict)  # algorithm -> .py / .yaml path

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def study_dir(self) -> str:
        """Where Ray Tune keeps this study (a local path or a pyarrow URI like s3://...)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def fixed_settings(self, algorithm: str) -> dict[str, Any]:
        """The run settings every trial of `algorithm` shares (the rest comes from its space)."""
        return {
            "algorithm": algorithm, "dataset": self.dataset, "data_root": self.data_root, "cache_dir": self.cache_dir,
            "way": self.way, "shot": self.shot, "query": self.query, "epochs": self.epochs,
            "meta_batch": self.meta_batch, "val_episodes": self.val_episodes, "test_episodes": self.test_episodes,
            "eval_seed": self.seed, "seed": self.seed, "device": self.device,
        }

    def replicate_seed_list(self) -> list[int]:
        """Fresh training seeds of the replicates: the same for every candidate and algorithm (common
        random numbers), never the tuning seed, and different for every study seed."""
        first = REPLICATE_SEED_BASE + 100 * self.seed
        return [first + i for i in range(self.replicate_seeds)]

    def budget(self) -> dict[str, Any]:
        """The equal budget each algorithm gets, as planned (the summary states what ran)."""
        resources = f"{self.cpus_per_trial:g} CPU" + (f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else "")
        return {
            "benchmark": f"{self.dataset} {self.way}-way {self.shot}-shot, {self.query} queries per class",
            "trials per algorithm": self.trials,
            "epochs per trial": self.epochs,
            "training episodes per epoch": self.episodes_per_epoch,
            "validation episodes": f"{self.val_episodes} (the same fixed set for every trial)",
            "replicates": f"top {self.replicate_top} configurations x {self.replicate_seeds} fresh seeds, full budget each",
            "test": f"{self.test_repeats * self.test_episodes} episodes (the same for every replicate of both algorithms)",
            "resources per trial": resources,
            "concurrent trials": self.max_concurrent,
            "searcher / scheduler": f"{self.searcher} (seed {self.seed}) / {self.scheduler}",
            "time budget": f"{self.time_budget_s:g} s in all" if self.time_budget_s else "none",
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # A few trials of a few short epochs: exercises everything (tests, CI).
    "smoke": dict(trials=4, epochs=3, episodes_per_epoch=24, meta_batch=4, query=5, val_episodes=40, test_episodes=60,
                  replicate_top=1, replicate_seeds=2),
    # This laptop-class machine, 2 CPU cores: about 20-30 minutes (see README).
    # The top configuration plus the reference, 3 fresh seeds each: 2 tuned candidates + the reference
    # x 3 seeds did not fit in 30 minutes at a budget where both algorithms learn (README).
    "default": dict(trials=8, epochs=5, episodes_per_epoch=240, meta_batch=8, val_episodes=100, test_episodes=600,
                    replicate_top=1, replicate_seeds=3, time_budget_s=1200),
    # The literature's scale, for a GPU cluster.
    "paper": dict(trials=50, epochs=40, episodes_per_epoch=3200, meta_batch=32, val_episodes=600, test_episodes=600,
                  replicate_top=3, replicate_seeds=5, gpus_per_trial=0.25, cpus_per_trial=2, max_concurrent=16,
                  max_failures=3),
}


def resolve(preset: str, overrides: dict[str, Any], cwd: Path | None = None) -> StudySpec:
    """Preset values, then explicit flags; fill the defaults that depend on the environment."""
    cwd = (cwd or Path.cwd()).resolve()
    values: dict[str, Any] = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}, "preset": preset}
    if not values.get("data_root"):
        values["data_root"] = os.environ.get(DATA_ROOT_ENV, "")
    if values.get("data_root"):
        values["data_root"] = str(Path(values["data_root"]).expanduser().resolve())
    if not values.get("storage_path"):
        values["storage_path"] = str(cwd / "ray_results")
    elif "://" not in values["storage_path"]:
        values["storage_path"] = str(Path(values["storage_path"]).expanduser().resolve())  # Ray needs absolute paths
    if not values.get("tracking_uri"):
        values["tracking_uri"] = f"sqlite:///{cwd / 'mlflow.db'}"
    return StudySpec(**values)
