"""CartPole with changeable physics and hidden velocities: the fast curriculum for tests and demos."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class DriftingCartPoleEnv(CartPoleEnv):
    """CartPole whose physics are set by kwargs (and may drift), with velocities hidden.

    ## Observation space
    ``Box(4)`` ``[x, x_dot, theta, theta_dot]``, or ``Box(2)`` ``[x, theta]`` when
    ``mask_velocity`` (the default): the policy must infer velocities from memory.

    ## Action space
    ``Discrete(2)``: push left, push right (swapped when ``reverse_actions``: the world looks the same,
    only the feedback differs).

    ## Rewards
    ``+1`` per step the pole stays up.

    ## Termination
    The pole falls or the cart leaves the track (termination), or ``max_steps`` pass (truncation).
    ``info["is_success"]`` is ``True`` when the episode lasted ``max_steps``.

    :param pole_length: half the pole's length (CartPole's ``length``)
    :param gravity: gravitational acceleration
    :param force_mag: push force
    :param reverse_actions: swap the meaning of the two actions
    :param mask_velocity: hide the two velocities
    :param max_steps: episode length for success
    """

    def __init__(
        self,
        pole_length: float = 0.5,
        gravity: float = 9.8,
        force_mag: float = 10.0,
        reverse_actions: bool = False,
        mask_velocity: bool = True,
        max_steps: int = 200,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        self.length = pole_length
        self.gravity = gravity
        self.force_mag = force_mag
        self.reverse_actions = reverse_actions
        self.mask_velocity = mask_velocity
        self.max_steps = max_steps
        self._steps = 0
        if mask_velocity:
            assert isinstance(self.observation_space, spaces.Box)
            high = self.observation_space.high[[0, 2]]
            self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    def _observe(self, full: np.ndarray) -> np.ndarray:
        return full[[0, 2]] if self.mask_velocity else full

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        # Derived quantities follow the (possibly drifted) physics at every episode start.
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length
        self._steps = 0
        obs, info = super().reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.reverse_actions:
            action = 1 - int(action)
        obs, reward, terminated, _, info = super().step(action)
        self._steps += 1
        truncated = not terminated and self._steps >= self.max_steps
        if terminated or truncated:
            info["is_success"] = bool(truncated)
        return self._observe(obs), float(reward), terminated, truncated, info
