"""Learning checks (slow): SparcPPO with the SPARC core solves a task that needs memory."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl import SparcPPO
from sparc_rl.evaluation import evaluate_task


class CueMemoryEnv(gym.Env):
    """A cue (+1 or -1) is shown at the first step only; after ``delay`` blank steps the agent must
    answer with the action matching the cue (0 for -1, 1 for +1). A memoryless policy can only guess
    (success 0.5)."""

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 4, render_mode=None):
        self.delay = delay
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        self.t = 0
        return np.array([2.0 * self.cue - 1.0, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            return np.array([0.0, 0.0], np.float32), 0.0, False, False, {}
        success = int(action) == self.cue
        return np.array([0.0, 1.0], np.float32), 1.0 if success else -1.0, True, False, {"is_success": success}


gym.register("Test/CueMemory-v0", entry_point=CueMemoryEnv)


class _Task:
    name = "cue"
    env_id = "Test/CueMemory-v0"

    @staticmethod
    def make_env():
        return gym.make(_Task.env_id)


@pytest.mark.slow
def test_sparc_solves_a_memory_task_that_feed_forward_ppo_cannot():
    budget = 30_000
    env = make_vec_env("Test/CueMemory-v0", n_envs=8, seed=0)
    sparc = SparcPPO("MlpSparcPolicy", env, n_steps=64, seed=0, policy_kwargs={"hidden_size": 32})
    best = 0.0
    while sparc.num_timesteps < budget and best < 0.95:
        sparc.learn(4096, reset_num_timesteps=False)
        best = max(best, evaluate_task(sparc, _Task, 100, seed=7).success_rate)
    assert best >= 0.95, f"SPARC reached only {best:.2f} success in {sparc.num_timesteps} steps"

    feed_forward = PPO(
        "MlpPolicy", make_vec_env("Test/CueMemory-v0", n_envs=8, seed=0), n_steps=64, seed=0, device="cpu"
    )
    feed_forward.learn(budget)
    baseline = evaluate_task(feed_forward, _Task, 200, seed=7).success_rate
    assert baseline < 0.7, f"a memoryless policy should only guess, got {baseline:.2f}"
