"""SparcPPO on a CUDA device: skipped where none is present (CI has none; run on a GPU machine)."""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl import SparcPPO
from sparc_rl.agents import parse_agent
from sparc_rl.curriculum import parse_curriculum
from sparc_rl.runner import ContinualRunner
from tests.conftest import tiny_agent_data
from tests.test_reliability import (
    TINY_AGENT,
    TINY_IMAGE_CURRICULUM,
    TINY_RECURRENT_PPO,
    assert_same_run,
    run_whole_and_resumed_inside_a_task,
)

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")


def _cuda_model() -> SparcPPO:
    env = make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=2, seed=0, env_kwargs={"max_steps": 40})
    return SparcPPO(
        "MlpSparcPolicy",
        env,
        seed=0,
        device="cuda",
        n_steps=32,
        batch_size=64,
        n_epochs=2,
        seq_len=16,
        policy_kwargs=dict(core="sparc", hidden_size=16, n_slots=2),
    )


def test_sparc_trains_consolidates_and_acts_on_cuda():
    model = _cuda_model()
    model.learn(128)
    model.consolidate()  # memory, keys and calibration are written on the GPU
    model.learn(128, reset_num_timesteps=False)
    assert int(model.policy.actor_core.n_filled) == 1
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert all(b.device.type == "cuda" for b in model.policy.buffers())
    obs = model.env.reset()
    actions, state = model.predict(obs, None, np.ones(2, dtype=bool), deterministic=True)
    assert actions.shape == (2,) and state.shape == (2, model.policy.state_size)
    assert np.isfinite(state).all()


def test_a_cuda_model_loads_on_cpu_and_acts_the_same(tmp_path):
    model = _cuda_model()
    model.learn(128)
    model.consolidate()
    model.save(tmp_path / "model.zip")
    on_cpu = SparcPPO.load(tmp_path / "model.zip", device="cpu")
    obs = np.stack([model.env.observation_space.sample() for _ in range(2)])
    starts = np.ones(2, dtype=bool)
    gpu_actions, gpu_state = model.predict(obs, None, starts, deterministic=True)
    cpu_actions, cpu_state = on_cpu.predict(obs, None, starts, deterministic=True)
    np.testing.assert_array_equal(gpu_actions, cpu_actions)
    np.testing.assert_allclose(gpu_state, cpu_state, atol=1e-4)


@pytest.mark.parametrize(
    "agent_data", [TINY_AGENT, TINY_RECURRENT_PPO, tiny_agent_data("lstm")], ids=["sparc", "recurrent-ppo", "lstm"]
)
def test_a_cuda_run_resumed_inside_a_task_stays_on_cuda_and_continues_exactly(tmp_path, monkeypatch, agent_data):
    on_cuda = copy.deepcopy(agent_data)
    on_cuda["algorithm_kwargs"]["device"] = "cuda"
    uninterrupted, resumed = run_whole_and_resumed_inside_a_task(tmp_path, monkeypatch, on_cuda)
    assert all(p.device.type == "cuda" for p in resumed.model.policy.parameters())
    assert_same_run(uninterrupted, resumed)


def test_small_minigrid_views_train_on_cuda(tmp_path):
    curriculum = parse_curriculum(TINY_IMAGE_CURRICULUM, "tiny images")
    agent = parse_agent(tiny_agent_data("sparc", algorithm_kwargs={"n_steps": 32, "batch_size": 64, "device": "cuda"}))
    runner = ContinualRunner(curriculum, agent, seed=0, run_dir=tmp_path / "run", progress=False)
    result = runner.run()
    assert all(p.device.type == "cuda" for p in runner.model.policy.parameters())
    assert len(result.matrix) == len(curriculum.tasks)
