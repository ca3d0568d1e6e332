"""RecurrentPPO's LSTM over whole sequences computes what sb3-contrib's step-by-step loop does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch as th
from minigrid.wrappers import ImgObsWrapper
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from sparc_rl.agents import load_agent
from sparc_rl.lstm_policies import CnnLstmPolicy, MlpLstmPolicy, process_sequence


def _inputs(starts_inside: bool) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor], th.Tensor, nn.LSTM]:
    th.manual_seed(0)
    n_seq, length, features, hidden = 5, 7, 4, 6
    lstm = nn.LSTM(features, hidden)
    x = th.randn(n_seq * length, features, requires_grad=True)
    states = (th.randn(1, n_seq, hidden), th.randn(1, n_seq, hidden))
    starts = th.zeros(n_seq, length)
    starts[[0, 3], 0] = 1.0  # as RecurrentPPO's buffer cuts them: episodes start at a sequence's first step
    if starts_inside:
        starts[1, 4] = 1.0
    return x, states, starts.flatten(), lstm


@pytest.mark.parametrize("starts_inside", [False, True])
def test_matches_sb3_contrib_outputs_states_and_gradients(starts_inside: bool) -> None:
    x, states, starts, lstm = _inputs(starts_inside)
    ours, ours_states = process_sequence(x, states, starts, lstm)
    (ours_grad,) = th.autograd.grad(ours.square().sum(), x)
    theirs, theirs_states = RecurrentActorCriticPolicy._process_sequence(x, states, starts, lstm)
    (theirs_grad,) = th.autograd.grad(theirs.square().sum(), x)
    assert ours.shape == theirs.shape == (35, 6)
    assert th.allclose(ours, theirs, atol=1e-6)
    assert th.allclose(ours_grad, theirs_grad, atol=1e-5)
    for mine, reference in zip(ours_states, theirs_states, strict=True):
        assert th.allclose(mine, reference, atol=1e-6)


def test_episode_start_at_the_first_step_resets_the_state() -> None:
    x, states, starts, lstm = _inputs(starts_inside=False)
    output, _ = process_sequence(x, states, starts, lstm)
    no_starts = th.zeros_like(starts)
    zeroed = (states[0].clone(), states[1].clone())
    zeroed[0][:, [0, 3]], zeroed[1][:, [0, 3]] = 0.0, 0.0
    assert th.allclose(output, process_sequence(x, zeroed, no_starts, lstm)[0], atol=1e-6)
    carried_on, _ = process_sequence(x, states, no_starts, lstm)
    assert not th.allclose(output[:7], carried_on[:7], atol=1e-3)  # sequence 0 started an episode
    assert th.allclose(output[7:14], carried_on[7:14], atol=1e-6)  # sequence 1 did not


def test_recurrent_ppo_agent_uses_whole_sequence_policy(tmp_path: Path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = load_agent("recurrent-ppo").build(env, seed=0)
    assert isinstance(model.policy, MlpLstmPolicy)
    model.learn(256)
    model.save(tmp_path / "model.zip")
    assert isinstance(RecurrentPPO.load(tmp_path / "model.zip").policy, MlpLstmPolicy)


def test_recurrent_ppo_agent_on_images_uses_whole_sequence_cnn_policy() -> None:
    env = make_vec_env("MiniGrid-Empty-5x5-v0", n_envs=2, seed=0, wrapper_class=ImgObsWrapper)
    model = load_agent("recurrent-ppo").build(env, seed=0)
    assert isinstance(model.policy, CnnLstmPolicy)
    model.learn(256)
