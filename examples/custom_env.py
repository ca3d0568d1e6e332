"""Bring your own Gymnasium env: define it, register it, train SparcPPO, switch to a changed variant
(continual learning), check what was kept, and run the policy with SparcAgent.

    python examples/custom_env.py --steps 20000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl import SparcPPO
from sparc_rl.inference import SparcAgent


class BeaconEnv(gym.Env):
    """Walk along a corridor of ``length`` cells to the beacon's end.

    Observation ``Box(2)``: ``[position / length, lamp]``; ``lamp`` is 1 when the beacon is on the left.
    Actions ``Discrete(3)``: left, stay, right. Reward +1 (success) at the beacon's end, -1 at the other
    end, -0.01 per step; episodes end at either end or after ``3 * length`` steps.

    :param beacon: ``"right"`` or ``"left"``: the two variants
    :param length: corridor length
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, beacon: str = "right", length: int = 8, render_mode: str | None = None) -> None:
        if beacon not in ("right", "left"):
            raise ValueError(f"beacon must be 'right' or 'left', got {beacon!r}")
        self.beacon, self.length, self.render_mode = beacon, length, render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.position, self.steps = length // 2, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position / self.length, float(self.beacon == "left")], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = int(self.np_random.integers(2, self.length - 1))
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        self.position = int(np.clip(self.position + int(action) - 1, 0, self.length))
        self.steps += 1
        at_right, at_left = self.position == self.length, self.position == 0
        terminated = at_right or at_left
        success = (at_right and self.beacon == "right") or (at_left and self.beacon == "left")
        reward = 1.0 if success else -1.0 if terminated else -0.01
        truncated = not terminated and self.steps >= 3 * self.length
        info = {"is_success": success} if terminated or truncated else {}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """A strip of cells: the robot in white, the beacon's end in green."""
        image = np.zeros((16, 16 * (self.length + 1), 3), np.uint8)
        goal = self.length if self.beacon == "right" else 0
        image[:, 16 * goal : 16 * (goal + 1), 1] = 160
        image[4:12, 16 * self.position + 4 : 16 * self.position + 12] = 255
        return image


gym.register("MyProject/Beacon-v0", entry_point=BeaconEnv)


def success_rate(agent: SparcAgent, beacon: str, episodes: int = 20) -> float:
    env = gym.make("MyProject/Beacon-v0", beacon=beacon)
    wins = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        agent.reset()
        while True:
            obs, _, terminated, truncated, info = env.step(agent.act(obs))
            if terminated or truncated:
                wins += info["is_success"]
                break
    return wins / episodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20000, help="training steps per variant")
    args = parser.parse_args()

    right = make_vec_env("MyProject/Beacon-v0", n_envs=8, seed=0, env_kwargs={"beacon": "right"})
    model = SparcPPO("MlpSparcPolicy", right, seed=0, policy_kwargs={"hidden_size": 32, "n_slots": 4})
    model.start_task("right")
    model.learn(args.steps)
    model.end_task()  # consolidate: the "right" skill goes into a protected memory slot

    left = make_vec_env("MyProject/Beacon-v0", n_envs=8, seed=1, env_kwargs={"beacon": "left"})
    model.set_env(left)
    model.start_task("left")
    model.learn(args.steps, reset_num_timesteps=False)
    model.end_task()

    path = Path(tempfile.mkdtemp()) / "beacon.zip"
    model.save(path)
    agent = SparcAgent.load(path, env=gym.make("MyProject/Beacon-v0"))
    print(
        f"success after both variants: right {success_rate(agent, 'right'):.2f}, left {success_rate(agent, 'left'):.2f}"
    )


if __name__ == "__main__":
    main()
