"""Observation and action spaces in user-facing messages, and which observations the policies take."""

from __future__ import annotations

from gymnasium import spaces

from sparc_rl.errors import ConfigError

#: what the recurrent policies take: one array per step (SB3 one-hot encodes the discrete ones)
FLAT_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def describe_space(space: spaces.Space) -> str:
    """A one-line description (a Box's full bounds can run over many lines)."""
    if isinstance(space, spaces.Box):
        return f"Box(shape={space.shape}, dtype={space.dtype})"
    if isinstance(space, spaces.Dict):
        return "Dict(" + ", ".join(f"{key}: {describe_space(sub)}" for key, sub in space.spaces.items()) + ")"
    return str(space)


def check_flat_observations(space: spaces.Space) -> None:
    """One clear error, with the wrapper that fixes it, for observations the policies cannot take
    (a dict or tuple of parts), instead of a failure deep inside the rollout buffer."""
    if isinstance(space, FLAT_OBSERVATION_SPACES):
        return
    if isinstance(space, spaces.Dict) and "image" in space.spaces:
        fix = (
            "for MiniGrid, add the wrappers minigrid-one-hot, minigrid-image and flatten-observation "
            "(sparc_rl.envs.MinigridImageTask, then gymnasium's FlattenObservation), as the built-in curricula do"
        )
    else:
        fix = (
            "wrap the env in gymnasium.wrappers.FlattenObservation (in a curriculum file: add "
            "flatten-observation to the task's wrappers)"
        )
    raise ConfigError(
        f"The recurrent policies take Box, Discrete, MultiDiscrete or MultiBinary observations, got "
        f"{describe_space(space)}: {fix}."
    )
