"""HyperMAML and MAML few-shot learners in pure PyTorch, vectorized over the tasks of a meta-batch."""

from .algorithms import MAML, HyperMAML
from .config import ConfigError, HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, from_flat, to_flat
from .data import DataError, Episodes, EpisodeSampler, FewShotSplit, fixed_episodes, load_split
from .flops import step_flops
from .training import EvalResult, FitResult, TrainingDiverged, evaluate, fit, load_checkpoint, load_learner, new_learner

__all__ = [
    "ConfigError",
    "DataError",
    "EpisodeSampler",
    "Episodes",
    "EvalResult",
    "FewShotSplit",
    "FitResult",
    "HyperMAML",
    "HyperMAMLConfig",
    "MAML",
    "MAMLConfig",
    "RunConfig",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "fixed_episodes",
    "from_flat",
    "load_checkpoint",
    "load_learner",
    "load_split",
    "new_learner",
    "step_flops",
    "to_flat",
]
