"""Non-stationarity wrappers, one concern each, named by what they change.

* :class:`AbruptTaskSwitch` — switches between tasks after a number of steps;
* :class:`CyclicTaskReturn` — cycles through tasks so old ones come back;
* :class:`GradualDrift` — moves a physics parameter linearly over many steps;
* :class:`HiddenTaskBoundaries` — removes the task announcements the switching wrappers add;
* :class:`MinigridImageTask` — gives MiniGrid tasks one observation and action space;
* :class:`PreviousActionRewardObservation` — appends the previous action and reward to the observation;
* :class:`SuccessFromReturn` — reports ``info["is_success"]`` from the episode's return.

Switching wrappers change task only at episode starts and announce it in ``info`` as
``task_index`` and ``task_switched``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _check_same_spaces(envs: Sequence[gym.Env]) -> None:
    first = envs[0]
    for index, env in enumerate(envs[1:], start=1):
        if env.observation_space != first.observation_space or env.action_space != first.action_space:
            raise ValueError(
                f"Task {index} has spaces {env.observation_space} / {env.action_space} but task 0 has "
                f"{first.observation_space} / {first.action_space}; wrap them to share spaces "
                "(e.g. with MinigridImageTask)."
            )


class _TaskSequence(gym.Env):
    """Delegates to one of several envs with the same spaces; subclasses choose which, per episode."""

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        if not envs:
            raise ValueError("Give at least one task env.")
        _check_same_spaces(envs)
        self.envs = list(envs)
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.metadata = self.envs[0].metadata
        self.render_mode = self.envs[0].render_mode
        self.total_steps = 0
        self.task_index = 0

    def _task_for(self, total_steps: int) -> int:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        new_index = self._task_for(self.total_steps)
        switched = new_index != self.task_index
        self.task_index = new_index
        obs, info = self.envs[self.task_index].reset(seed=seed, options=options)
        return obs, {**info, "task_index": self.task_index, "task_switched": switched}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.total_steps += 1
        obs, reward, terminated, truncated, info = self.envs[self.task_index].step(action)
        return obs, float(reward), terminated, truncated, {**info, "task_index": self.task_index}

    def render(self) -> Any:
        return self.envs[self.task_index].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()


class AbruptTaskSwitch(_TaskSequence):
    """Runs ``envs[0]`` for ``steps_per_task`` steps, then ``envs[1]``, ...; stays on the last one.

    :param envs: task envs with identical spaces
    :param steps_per_task: steps before switching (checked at episode starts)
    """

    def __init__(self, envs: Sequence[gym.Env], steps_per_task: int) -> None:
        super().__init__(envs)
        if steps_per_task <= 0:
            raise ValueError(f"steps_per_task must be positive, got {steps_per_task}.")
        self.steps_per_task = steps_per_task

    def _task_for(self, total_steps: int) -> int:
        return min(total_steps // self.steps_per_task, len(self.envs) - 1)


class CyclicTaskReturn(_TaskSequence):
    """Cycles ``envs[0], envs[1], ..., envs[0], ...`` every ``period`` steps, so old tasks return.

    :param envs: task envs with identical spaces
    :param period: steps spent on each task per visit
    """

    def __init__(self, envs: Sequence[gym.Env], period: int) -> None:
        super().__init__(envs)
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}.")
        self.period = period

    def _task_for(self, total_steps: int) -> int:
        return (total_steps // self.period) % len(self.envs)


class GradualDrift(gym.Wrapper):
    """Moves ``env.unwrapped.<parameter>`` linearly from ``start`` to ``end`` over ``steps`` steps.

    The value is applied at each episode start (envs such as DriftingCartPole re-derive their
    physics there) and reported as ``info["drift_value"]``.

    :param env: env with the attribute
    :param parameter: attribute name, e.g. ``"length"`` or ``"gravity"``
    :param start: value at step 0
    :param end: value from step ``steps`` on
    :param steps: length of the drift
    """

    def __init__(self, env: gym.Env, parameter: str, start: float, end: float, steps: int) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, parameter):
            raise ValueError(f"{type(env.unwrapped).__name__} has no parameter {parameter!r} to drift.")
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}.")
        self.parameter, self.start, self.end, self.steps = parameter, start, end, steps
        self.total_steps = 0

    def current_value(self) -> float:
        fraction = min(self.total_steps / self.steps, 1.0)
        return self.start + fraction * (self.end - self.start)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        setattr(self.env.unwrapped, self.parameter, self.current_value())
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "drift_value": self.current_value()}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        self.total_steps += 1
        return self.env.step(action)


class HiddenTaskBoundaries(gym.Wrapper):
    """Removes ``task_index`` and ``task_switched`` from ``info``: the agent is not told of switches."""

    HIDDEN_KEYS = ("task_index", "task_switched")

    def _strip(self, info: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in info.items() if key not in self.HIDDEN_KEYS}

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._strip(info)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._strip(info)


class MinigridImageTask(gym.Wrapper):
    """One space for all MiniGrid tasks: the 7x7x3 egocentric image and ``Discrete(n_actions)``.

    Also reports ``info["is_success"]`` at episode end (reaching the goal gives a positive reward in
    stock MiniGrid tasks) unless the env reports it itself.

    :param env: a MiniGrid env with a dict observation holding ``image``
    :param n_actions: size of the shared action space (MiniGrid's full set is 7)
    """

    def __init__(self, env: gym.Env, n_actions: int = 7) -> None:
        super().__init__(env)
        obs_space = env.observation_space
        if not isinstance(obs_space, spaces.Dict) or "image" not in obs_space.spaces:
            raise ValueError(f"MinigridImageTask needs a MiniGrid dict observation with 'image', got {obs_space}.")
        self.observation_space = obs_space.spaces["image"]
        self.action_space = spaces.Discrete(n_actions)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs["image"], info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and "is_success" not in info:
            info["is_success"] = bool(terminated and float(reward) > 0)
        return obs["image"], reward, terminated, truncated, info


class PreviousActionRewardObservation(gym.ObservationWrapper):
    """Appends the one-hot previous action and the previous reward to a flat observation.

    Lets a recurrent policy infer the task from feedback when the world looks the same.

    :param env: env with a ``Box`` observation (flattened) and a ``Discrete`` action space
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Discrete) or not isinstance(env.observation_space, spaces.Box):
            raise ValueError(
                "PreviousActionRewardObservation needs a Box observation and a Discrete action space, got "
                f"{env.observation_space} and {env.action_space}."
            )
        self.n_actions = int(env.action_space.n)
        low = np.concatenate(
            [env.observation_space.low.ravel().astype(np.float32), np.zeros(self.n_actions), [-np.inf]]
        )
        high = np.concatenate(
            [env.observation_space.high.ravel().astype(np.float32), np.ones(self.n_actions), [np.inf]]
        )
        self.observation_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self._previous = np.zeros(self.n_actions + 1, dtype=np.float32)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._previous = np.zeros(self.n_actions + 1, dtype=np.float32)
        return super().reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._previous = np.zeros(self.n_actions + 1, dtype=np.float32)
        self._previous[int(action)] = 1.0
        self._previous[-1] = float(reward)
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: Any) -> np.ndarray:
        return np.concatenate([np.asarray(observation, dtype=np.float32).ravel(), self._previous])


class SuccessFromReturn(gym.Wrapper):
    """Reports ``info["is_success"]`` at each episode's end: whether its return reached ``threshold``.

    A task's score is its success rate; envs that do not report success themselves (most of
    Gymnasium's) need this, or every score reads 0. The value replaces any the env reports.

    :param env: any env
    :param threshold: the return that counts as success; default: the env's registered
        ``reward_threshold`` (CartPole-v1: 475)
    """

    def __init__(self, env: gym.Env, threshold: float | None = None) -> None:
        super().__init__(env)
        if threshold is None:
            threshold = env.spec.reward_threshold if env.spec is not None else None
            if threshold is None:
                raise ValueError(
                    f"{env.spec.id if env.spec is not None else type(env.unwrapped).__name__} has no registered "
                    "reward_threshold: give SuccessFromReturn a threshold."
                )
        self.threshold = float(threshold)
        self._return = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._return = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if terminated or truncated:
            info["is_success"] = self._return >= self.threshold
        return obs, reward, terminated, truncated, info


WRAPPERS: dict[str, type[gym.Wrapper]] = {
    "minigrid-image": MinigridImageTask,
    "previous-action-reward": PreviousActionRewardObservation,
    "gradual-drift": GradualDrift,
    "hidden-task-boundaries": HiddenTaskBoundaries,
    "success-from-return": SuccessFromReturn,
}
"""Wrappers a curriculum file can name, applied in order around one task's env."""
