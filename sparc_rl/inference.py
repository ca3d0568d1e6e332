"""Run a trained policy in any Gymnasium env: the recurrent state is kept and reset for you."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.save_util import json_to_data
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage

from sparc_rl.errors import CheckpointError, SpaceMismatchError
from sparc_rl.io import check_checkpoint_file
from sparc_rl.ppo import SparcPPO
from sparc_rl.space_checks import describe_space


def _space_hint(env_space: spaces.Space, model_space: spaces.Space, model_actions: spaces.Space) -> str:
    if isinstance(env_space, spaces.Dict) and "image" in env_space.spaces:
        return (
            " MiniGrid envs give a dict observation: wrap the env with "
            "sparc_rl.envs.MinigridImageTask (and FlattenObservation / PreviousActionRewardObservation if the "
            "model was trained on those, as the garden curriculum does)."
        )
    if (
        isinstance(env_space, spaces.Box)
        and isinstance(model_space, spaces.Box)
        and isinstance(model_actions, spaces.Discrete)
        and int(np.prod(env_space.shape)) + int(model_actions.n) + 1 == int(np.prod(model_space.shape))
    ):
        return (
            f" The model expects {int(model_actions.n) + 1} more inputs: was it trained with "
            "PreviousActionRewardObservation (previous action and reward appended)?"
        )
    return ""


def _as_the_policy_sees_it(observation_space: spaces.Space) -> spaces.Space:
    """An env's observation space as SB3 hands it to the policy: channels-last images transposed, as
    SB3 wraps training envs in ``VecTransposeImage`` and ``predict`` transposes observations."""
    if is_image_space(observation_space) and not is_image_space_channels_first(observation_space):  # type: ignore[arg-type]
        return VecTransposeImage.transpose_space(observation_space)  # type: ignore[arg-type]
    return observation_space


def _observations_fit(env_space: spaces.Space, model_space: spaces.Space) -> bool:
    """Whether the policy can read the env's observations: the same space, or the same box of floats in
    another precision (the policy reads observations as float32 tensors either way)."""
    seen = _as_the_policy_sees_it(env_space)
    if seen == model_space:
        return True
    return (
        isinstance(seen, spaces.Box)
        and isinstance(model_space, spaces.Box)
        and seen.shape == model_space.shape
        and np.issubdtype(seen.dtype, np.floating)
        and np.issubdtype(model_space.dtype, np.floating)
        and np.array_equal(seen.low.astype(model_space.dtype), model_space.low)
        and np.array_equal(seen.high.astype(model_space.dtype), model_space.high)
    )


def check_spaces(model_obs: spaces.Space, model_act: spaces.Space, env: gym.Env | VecEnv) -> None:
    """Raise :class:`SpaceMismatchError` naming both spaces if the env does not fit the policy."""
    if not _observations_fit(env.observation_space, model_obs):
        raise SpaceMismatchError(
            f"The policy expects observations {describe_space(model_obs)} but the env gives "
            f"{describe_space(env.observation_space)}." + _space_hint(env.observation_space, model_obs, model_act)
        )
    if env.action_space != model_act:
        raise SpaceMismatchError(
            f"The policy acts in {describe_space(model_act)} but the env expects actions in "
            f"{describe_space(env.action_space)}."
        )


def load_saved_model(path: Path, device: str = "cpu") -> BaseAlgorithm:
    """Load a saved model, with one clear error for a broken or incompatible file: a SparcPPO one, or
    sb3-contrib's RecurrentPPO as the ``recurrent-ppo`` preset saves (told apart by the saved policy class).

    :param path: the checkpoint zip
    :param device: where to put the model
    """
    check_checkpoint_file(path)
    try:
        return _saved_algorithm(path).load(path, device=device)
    except Exception as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError):
            hint = (
                f" it was saved with your own code from module {error.name!r} (a plugin or an env),"
                " which cannot be imported here: run from the folder that holds it, or install it."
            )
        elif "state_dict" in str(error):
            hint = (
                " The saved network does not match this sparc-rl version's SPARC policy (saved by an"
                " older version?): load it with the version that saved it, or train it again."
            )
        raise CheckpointError(f"Cannot load model {str(path)!r}:{hint} {error}") from None


def _saved_algorithm(path: Path) -> type[BaseAlgorithm]:
    with zipfile.ZipFile(path) as archive:
        policy_class = json_to_data(archive.read("data").decode()).get("policy_class")
    if isinstance(policy_class, type) and issubclass(policy_class, RecurrentActorCriticPolicy):
        return RecurrentPPO
    return SparcPPO


class SparcAgent:
    """A trained recurrent policy ready to act; it carries the recurrent state between calls.

    Single env::

        agent = SparcAgent.load("model.zip", env=env)
        obs, _ = env.reset(); agent.reset()
        while True:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
            if terminated or truncated:
                obs, _ = env.reset(); agent.reset()

    VecEnv: ``actions = agent.act(obs)``, then ``agent.episode_done(dones)`` after ``venv.step``.

    :param model: a trained :class:`SparcPPO` (or sb3-contrib ``RecurrentPPO``)
    :param deterministic: take the most likely action
    """

    def __init__(self, model: BaseAlgorithm, deterministic: bool = True) -> None:
        self.model = model
        self.deterministic = deterministic
        self._state: Any = None  # SparcPPO's state is one array, RecurrentPPO's an (h, c) pair
        self._starts: np.ndarray | None = None

    @classmethod
    def load(
        cls, path: str | Path, env: gym.Env | VecEnv | None = None, deterministic: bool = True, device: str = "cpu"
    ) -> SparcAgent:
        """Load a saved model (CPU by default); with ``env``, check its spaces first."""
        path = Path(path)
        if path.suffix != ".zip" and not path.exists():
            path = path.with_suffix(".zip")
        agent = cls(load_saved_model(path, device), deterministic)
        if env is not None:
            agent.check_env(env)
        return agent

    @property
    def observation_space(self) -> spaces.Space:
        return self.model.observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self.model.action_space

    def check_env(self, env: gym.Env | VecEnv) -> None:
        check_spaces(self.observation_space, self.action_space, env)

    def reset(self) -> None:
        """Forget the recurrent state (call at every episode start of a single env)."""
        self._state = None
        self._starts = None

    def episode_done(self, dones: np.ndarray) -> None:
        """VecEnv: mark the envs whose episode just ended, so their state resets at the next act."""
        self._starts = np.asarray(dones, dtype=bool)

    def act(self, observation: Any, episode_start: np.ndarray | None = None) -> Any:
        """Action(s) for an observation of one env or a batch from a VecEnv."""
        starts = episode_start if episode_start is not None else self._starts
        action, self._state = self.model.predict(observation, self._state, starts, self.deterministic)
        self._starts = None
        return action.item() if isinstance(self.action_space, spaces.Discrete) and action.ndim == 0 else action
