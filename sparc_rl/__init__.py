"""sparc-rl: continual reinforcement learning with SPARC recurrent policies on Stable-Baselines3."""

from importlib.metadata import version as _version

from sparc_rl.cores import GRUCore, LSTMCore, RecurrentCore, SparcCore, make_core
from sparc_rl.errors import (
    CheckpointError,
    ConfigError,
    RunStoppedError,
    SpaceMismatchError,
    SparcError,
    TrainingDivergedError,
)
from sparc_rl.plugins import BehaviourCloning, ContinualPlugin, NoveltyBoundaryDetector, OnlineEWC
from sparc_rl.policies import CnnSparcPolicy, MinigridCNN, MlpSparcPolicy, SparcActorCriticPolicy
from sparc_rl.ppo import SparcPPO

__version__ = _version("sparc-rl")  # pyproject.toml's, the one place it is written

__all__ = [
    "BehaviourCloning",
    "CheckpointError",
    "CnnSparcPolicy",
    "ConfigError",
    "ContinualPlugin",
    "GRUCore",
    "LSTMCore",
    "MinigridCNN",
    "MlpSparcPolicy",
    "NoveltyBoundaryDetector",
    "OnlineEWC",
    "RecurrentCore",
    "RunStoppedError",
    "SpaceMismatchError",
    "SparcActorCriticPolicy",
    "SparcCore",
    "SparcError",
    "SparcPPO",
    "TrainingDivergedError",
    "make_core",
]

from sparc_rl.envs import register_envs as _register_envs  # noqa: E402

_register_envs()
