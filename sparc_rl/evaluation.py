"""Evaluate a recurrent model on every task of a curriculum, episodes run side by side."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from sparc_rl.curriculum import Curriculum, TaskSpec
from sparc_rl.errors import ConfigError

#: steps after which an episode that has not ended is taken for one that never will: an env without a
#: time limit would otherwise stall evaluation for good
EPISODE_STEP_LIMIT = 100_000


def check_episode_lengths(lengths: np.ndarray, what: str) -> None:
    """Raise :class:`ConfigError` if an episode has run :data:`EPISODE_STEP_LIMIT` steps."""
    if int(np.max(lengths)) >= EPISODE_STEP_LIMIT:
        raise ConfigError(
            f"{what}: an episode ran {EPISODE_STEP_LIMIT} steps without ending. Give the env a time limit: "
            "'max_episode_steps: N' in the task's kwargs (gym.make adds a TimeLimit), or end its episodes."
        )


class RecurrentPredictor(Protocol):
    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]: ...


@dataclass(frozen=True)
class TaskScore:
    """Result of evaluating one task: success rate (the score) and mean return."""

    success_rate: float
    mean_return: float
    episodes: int


def evaluate_task(
    model: RecurrentPredictor,
    task: TaskSpec,
    n_episodes: int,
    seed: int,
    deterministic: bool = True,
    max_parallel: int = 10,
) -> TaskScore:
    """Run exactly ``n_episodes`` episodes, up to ``max_parallel`` at a time, each env doing its quota
    (so short episodes are not over-counted). The recurrent state is reset at every episode start.

    An episode succeeds when its final ``info["is_success"]`` is true. If no episode reports it, a
    warning names the task and the wrapper that adds it (the score would read 0 for want of information).
    """
    n_envs = min(n_episodes, max_parallel)
    quotas = np.full(n_envs, n_episodes // n_envs)
    quotas[: n_episodes % n_envs] += 1
    env = DummyVecEnv([task.make_env for _ in range(n_envs)])
    env.seed(seed)
    try:
        obs = env.reset()
        state = None
        starts = np.ones(n_envs, dtype=bool)
        done_counts = np.zeros(n_envs, dtype=int)
        returns = np.zeros(n_envs)
        lengths = np.zeros(n_envs, dtype=int)
        successes: list[float] = []
        episode_returns: list[float] = []
        reported = False
        evaluating = f"Evaluating task {task.name!r} ({task.env_id})"
        while (done_counts < quotas).any():
            actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=deterministic)
            obs, rewards, dones, infos = env.step(actions)
            returns += rewards
            lengths += 1
            for i in np.flatnonzero(dones):
                if done_counts[i] < quotas[i]:
                    reported = reported or "is_success" in infos[i]
                    successes.append(float(bool(infos[i].get("is_success", False))))
                    episode_returns.append(float(returns[i]))
                    done_counts[i] += 1
                returns[i] = 0.0
            lengths[dones] = 0
            check_episode_lengths(lengths, evaluating)
            starts = dones
    finally:
        env.close()
    if not reported:
        warnings.warn(
            f"Task {task.name!r} ({task.env_id}) reports no info['is_success'], so its score (the success "
            "rate) reads 0. Add the wrapper success-from-return to the task's wrappers: "
            "{name: success-from-return, kwargs: {threshold: <return that counts as success>}} "
            "(without kwargs, the env's registered reward_threshold).",
            stacklevel=2,
        )
    return TaskScore(float(np.mean(successes)), float(np.mean(episode_returns)), len(successes))


def evaluate_curriculum(
    model: RecurrentPredictor, curriculum: Curriculum, n_episodes: int, seed: int, deterministic: bool = True
) -> dict[str, TaskScore]:
    """Score every task (past, current and future) with fixed seeds per task."""
    return {
        task.name: evaluate_task(model, task, n_episodes, seed + 1000 * index, deterministic)
        for index, task in enumerate(curriculum.tasks)
    }
