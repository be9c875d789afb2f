"""HyperMAML and MAML few-shot learners in pure PyTorch, vectorized over the tasks of a meta-batch."""

from .algorithms import MAML, HyperMAML
from .config import ConfigError, DataError, HyperMAMLConfig, MAMLConfig, RunConfig, TrainConfig, from_flat, to_flat
from .datasets import load_split
from .episodes import Episodes, EpisodeSampler, FewShotSplit, fixed_episodes
from .fitting import EvalResult, FitResult, TrainingDiverged, evaluate, fit, load_checkpoint, load_learner, new_learner
from .flops import step_flops

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
