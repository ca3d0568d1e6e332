from __future__ import annotations

import copy
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pytest  # noqa: E402

from sparc_rl.agents import AgentSpec  # noqa: E402
from sparc_rl.curriculum import Curriculum, parse_curriculum  # noqa: E402

TINY_TASKS = [
    {
        "name": "short",
        "env": "SparcRL/DriftingCartPole-v0",
        "kwargs": {"max_steps": 30},
        "wrappers": ["previous-action-reward"],
        "steps": 256,
    },
    {
        "name": "reversed",
        "env": "SparcRL/DriftingCartPole-v0",
        "kwargs": {"max_steps": 30, "reverse_actions": True},
        "wrappers": ["previous-action-reward"],
        "steps": 256,
    },
]


def tiny_curriculum_dict() -> dict:
    return copy.deepcopy(
        {"name": "tiny", "boundary": "announced", "eval_episodes": 4, "eval_every": 2, "tasks": TINY_TASKS}
    )


@pytest.fixture
def tiny_curriculum() -> Curriculum:
    return parse_curriculum(tiny_curriculum_dict(), "tiny")


@pytest.fixture
def tiny_agent() -> AgentSpec:
    return AgentSpec(
        name="tiny-sparc",
        policy_kwargs={"core": "sparc", "hidden_size": 16, "n_slots": 2},
        algorithm_kwargs={
            "n_steps": 32,
            "batch_size": 64,
            "n_epochs": 2,
            "seq_len": 16,
            "consolidation_threshold": None,
        },
        n_envs=2,
    )
