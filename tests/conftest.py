from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


from sparc_rl.agents import AgentSpec, parse_agent  # noqa: E402
from sparc_rl.curriculum import Curriculum, parse_curriculum  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def sb3_log_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SB3 makes a fresh ``/tmp/SB3-<time>`` folder for every ``learn()`` without a logger: keep them
    in pytest's own temporary folder, which pytest prunes."""
    os.environ.setdefault("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))


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


def tiny_agent_data(core: str = "sparc", **overrides: object) -> dict:
    """A tiny agent file's content: 2 envs, short rollouts, always consolidating (learning is not tested here)."""
    data = {
        "name": f"tiny-{core}",
        "policy_kwargs": {"core": core, "hidden_size": 16, "n_slots": 2, "core_kwargs": {"write_only_novel": False}}
        if core == "sparc"
        else {"core": core, "hidden_size": 8},
        "algorithm_kwargs": {
            "n_steps": 32,
            "batch_size": 64,
            "n_epochs": 2,
            "seq_len": 16,
            "consolidation_threshold": None,
        },
        "n_envs": 2,
    }
    data.update(overrides)
    return data


def tiny_agent(core: str = "sparc", **overrides: object) -> AgentSpec:
    return parse_agent(tiny_agent_data(core, **overrides), "tiny")


def tiny_curriculum() -> Curriculum:
    return parse_curriculum(tiny_curriculum_dict(), "tiny")
