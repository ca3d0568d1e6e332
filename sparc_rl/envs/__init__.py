"""Environments registered under the ``SparcRL/`` namespace and the non-stationarity wrappers."""

from __future__ import annotations

import gymnasium as gym

from sparc_rl.envs.cartpole import DriftingCartPoleEnv
from sparc_rl.envs.garden import SEASONS, GardenEnv
from sparc_rl.envs.wrappers import (
    WRAPPERS,
    AbruptTaskSwitch,
    CyclicTaskReturn,
    GradualDrift,
    HiddenTaskBoundaries,
    MinigridImageTask,
    PreviousActionRewardObservation,
    SuccessFromReturn,
)

__all__ = [
    "SEASONS",
    "WRAPPERS",
    "AbruptTaskSwitch",
    "CyclicTaskReturn",
    "DriftingCartPoleEnv",
    "GardenEnv",
    "GradualDrift",
    "HiddenTaskBoundaries",
    "MinigridImageTask",
    "PreviousActionRewardObservation",
    "SuccessFromReturn",
    "register_envs",
]


def register_envs() -> None:
    """Register the package's envs (variants are kwargs, e.g. ``gym.make("SparcRL/Garden-v0", season="winter")``)."""
    specs = {
        "SparcRL/Garden-v0": "sparc_rl.envs.garden:GardenEnv",
        "SparcRL/DriftingCartPole-v0": "sparc_rl.envs.cartpole:DriftingCartPoleEnv",
    }
    for env_id, entry_point in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
