import io
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl import SparcPPO
from sparc_rl.cli import main
from sparc_rl.errors import CheckpointError, SpaceMismatchError
from sparc_rl.inference import SparcAgent


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    env = make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=2, seed=0, env_kwargs={"max_steps": 40})
    model = SparcPPO(
        "MlpSparcPolicy",
        env,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        seq_len=16,
        seed=0,
        policy_kwargs=dict(hidden_size=16, n_slots=2),
    )
    model.learn(64)
    model.consolidate()
    path = tmp_path_factory.mktemp("model") / "model.zip"
    model.save(path)
    return path


def test_agent_matches_predict_with_state_passed_by_hand(saved_model):
    env = gym.make("SparcRL/DriftingCartPole-v0", max_steps=40)
    agent = SparcAgent.load(saved_model, env=env)
    model = SparcPPO.load(saved_model)
    obs, _ = env.reset(seed=1)
    agent.reset()
    state, start = None, np.ones(1)
    for _ in range(60):
        expected, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        action = agent.act(obs)
        assert action == int(expected)
        obs, _, terminated, truncated, _ = env.step(action)
        start = np.zeros(1)
        if terminated or truncated:
            obs, _ = env.reset()
            agent.reset()
            state, start = None, np.ones(1)


def test_agent_on_a_vec_env(saved_model):
    venv = make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=3, seed=0, env_kwargs={"max_steps": 40})
    agent = SparcAgent.load(saved_model, env=venv)
    obs = venv.reset()
    for _ in range(50):
        actions = agent.act(obs)
        assert actions.shape == (3,)
        obs, _, dones, _ = venv.step(actions)
        agent.episode_done(dones)


def test_mismatched_spaces_name_both_and_suggest_a_wrapper(saved_model):
    with pytest.raises(
        SpaceMismatchError,
        match=r"expects observations Box\(shape=\(2,\).* env gives Dict\(.*image: Box\(shape=\(7, 7.*MinigridImageTask",
    ):
        SparcAgent.load(saved_model, env=gym.make("SparcRL/Garden-v0"))
    with pytest.raises(
        SpaceMismatchError, match=r"expects observations .* but the env gives Box\(shape=\(4,\), dtype=float32\)\.$"
    ):
        SparcAgent.load(saved_model, env=gym.make("CartPole-v1"))


def test_an_env_with_float64_observations_of_the_same_box_is_played_alike(saved_model):
    """The policy reads float32 tensors either way; other bounds or shapes are still refused."""
    single = gym.make("SparcRL/DriftingCartPole-v0", max_steps=40)
    box = single.observation_space
    double = gym.wrappers.TransformObservation(
        gym.make("SparcRL/DriftingCartPole-v0", max_steps=40),
        lambda obs: obs.astype(np.float64),
        gym.spaces.Box(box.low.astype(np.float64), box.high.astype(np.float64), dtype=np.float64),
    )
    agents = SparcAgent.load(saved_model, env=single), SparcAgent.load(saved_model, env=double)
    observations = single.reset(seed=1)[0], double.reset(seed=1)[0]
    for _ in range(40):  # max_steps: one episode
        actions = [agent.act(obs) for agent, obs in zip(agents, observations, strict=True)]
        assert actions[0] == actions[1]
        (obs, _, done, _, _), (obs64, _, _, _, _) = single.step(actions[0]), double.step(actions[1])
        np.testing.assert_array_equal(obs, obs64)
        if done:
            break
        observations = obs, obs64
    wider = gym.spaces.Box(-100.0, 100.0, box.shape, dtype=np.float64)
    with pytest.raises(SpaceMismatchError, match=r"expects observations Box\(shape=\(2,\), dtype=float32"):
        SparcAgent.load(saved_model, env=gym.wrappers.TransformObservation(single, lambda obs: obs, wider))


def test_a_model_trained_with_the_previous_action_and_reward_says_so_on_the_bare_env(tmp_path):
    from sparc_rl.envs import PreviousActionRewardObservation

    def bare():
        return gym.make("SparcRL/DriftingCartPole-v0", max_steps=20)

    env = make_vec_env(lambda: PreviousActionRewardObservation(bare()), n_envs=2, seed=0)
    SparcPPO("MlpSparcPolicy", env, n_steps=16, batch_size=32, policy_kwargs=dict(hidden_size=8)).save(tmp_path / "m")
    with pytest.raises(SpaceMismatchError, match=r"expects 3 more inputs: was it trained with PreviousActionReward"):
        SparcAgent.load(tmp_path / "m.zip", env=bare())


def test_corrupt_and_truncated_checkpoints(saved_model, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(saved_model.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SparcAgent.load(truncated)
    text = tmp_path / "notes.zip"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SparcAgent.load(text)


def test_a_checkpoint_of_another_network_layout_says_so(saved_model, tmp_path):
    """A model saved by a version with other SPARC buffers must fail with a hint, not a bare key list."""
    older = tmp_path / "older.zip"
    with zipfile.ZipFile(saved_model) as source, zipfile.ZipFile(older, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "policy.pth":
                weights = th.load(io.BytesIO(data), weights_only=True)
                weights["actor_core.slot_output_norm"] = weights.pop("actor_core.slot_output_weight")
                buffer = io.BytesIO()
                th.save(weights, buffer)
                data = buffer.getvalue()
            target.writestr(item, data)
    with pytest.raises(CheckpointError, match="older version"):
        SparcAgent.load(older)


def test_play_prints_returns_and_records_a_gif(saved_model, tmp_path, capsys):
    gif = tmp_path / "play.gif"
    code = main(
        [
            "play",
            "--model",
            str(saved_model),
            "--env",
            "SparcRL/DriftingCartPole-v0",
            "--env-kwargs",
            '{"max_steps": 20}',
            "--episodes",
            "2",
            "--record",
            str(gif),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "episode 0: return" in out and "episode 1: return" in out
    assert gif.stat().st_size > 1000


def test_play_with_mismatched_env_is_a_clear_error(saved_model, capsys):
    assert main(["play", "--model", str(saved_model), "--env", "CartPole-v1"]) == 2
    assert "expects observations" in capsys.readouterr().err


def test_eval_prints_the_score_table(saved_model, tmp_path, capsys):
    import yaml

    from tests.conftest import tiny_curriculum_dict

    data = tiny_curriculum_dict()
    for task in data["tasks"]:
        task["wrappers"] = []
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["eval", "--model", str(saved_model), "--curriculum", str(path), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "short" in out and "reversed" in out and "average" in out


def test_a_recurrent_ppo_checkpoint_is_evaluated_and_played_like_a_sparc_one(tmp_path, capsys):
    from sb3_contrib import RecurrentPPO

    from sparc_rl.lstm_policies import MlpLstmPolicy

    env = make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=2, seed=0, env_kwargs={"max_steps": 40})
    model = RecurrentPPO(MlpLstmPolicy, env, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    path = tmp_path / "rppo.zip"
    model.save(path)
    agent = SparcAgent.load(path, env=gym.make("SparcRL/DriftingCartPole-v0", max_steps=40))
    assert isinstance(agent.model, RecurrentPPO)
    single = gym.make("SparcRL/DriftingCartPole-v0", max_steps=40)
    obs, _ = single.reset(seed=1)
    action = agent.act(obs)
    expected, state = model.predict(obs, None, np.array([True]), deterministic=True)
    assert action == expected.item()
    obs, *_ = single.step(action)
    assert agent.act(obs) == model.predict(obs, state, np.array([False]), deterministic=True)[0].item()
    argv = ["play", "--model", str(path), "--env", "SparcRL/DriftingCartPole-v0", "--episodes", "1"]
    assert main([*argv, "--env-kwargs", '{"max_steps": 40}']) == 0
    assert "mean return over 1 episodes" in capsys.readouterr().out


def test_a_checkpoint_that_needs_a_module_missing_here_says_which(tmp_path, monkeypatch):
    (tmp_path / "gone_plugins.py").write_text(
        "from sparc_rl.plugins import ContinualPlugin\nclass Noop(ContinualPlugin): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_plugins

    env = make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=2, seed=0)
    model = SparcPPO("MlpSparcPolicy", env, n_steps=32, batch_size=64, plugins=[gone_plugins.Noop()])
    path = tmp_path / "model.zip"
    model.save(path)
    monkeypatch.delitem(sys.modules, "gone_plugins")
    (tmp_path / "gone_plugins.py").unlink()
    with pytest.raises(
        CheckpointError, match="saved with your own code from module 'gone_plugins'.*run from the folder"
    ):
        SparcAgent.load(path)


def test_an_image_run_is_evaluated_on_its_own_curriculum_and_played_in_the_raw_env(tmp_path, capsys):
    """SB3 trains image policies on channels-first views of channels-last envs: eval, play and SparcAgent
    take the env as it is (they used to refuse it as a space mismatch). ``eval`` without
    ``--curriculum`` uses the one the checkpoint's run trained on (it used to default to cartpole-drift)."""
    from sparc_rl.curriculum import parse_curriculum
    from sparc_rl.envs import MinigridImageTask
    from sparc_rl.runner import ContinualRunner
    from tests.conftest import tiny_agent

    curriculum = {
        "name": "grids",
        "eval_episodes": 2,
        "eval_every": 1,
        "tasks": [
            {
                "name": "empty",
                "env": "MiniGrid-Empty-5x5-v0",
                "kwargs": {"agent_view_size": 5},
                "wrappers": ["minigrid-image"],
                "steps": 64,
            }
        ],
    }
    run = tmp_path / "run"
    ContinualRunner(parse_curriculum(curriculum), tiny_agent("lstm"), run_dir=run, progress=False).run()
    checkpoint = run / "checkpoints" / "task-0-empty.zip"
    assert main(["eval", "--model", str(checkpoint), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert f"curriculum: grids ({run / 'config.json'})" in out and "empty" in out
    env = MinigridImageTask(gym.make("MiniGrid-Empty-5x5-v0", agent_view_size=5))
    agent = SparcAgent.load(checkpoint, env=env)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5, 5, 3) and agent.act(obs) in range(7)
    argv = ["play", "--model", str(checkpoint), "--env", "MiniGrid-Empty-5x5-v0", "--wrappers", "minigrid-image"]
    assert main([*argv, "--env-kwargs", '{"agent_view_size": 5}', "--episodes", "1"]) == 0
    (run / "config.json").write_text("{")
    assert main(["eval", "--model", str(checkpoint)]) == 2
    assert "Cannot read the curriculum of the run" in capsys.readouterr().err


def test_play_takes_a_task_of_the_checkpoints_run_with_its_kwargs_and_wrappers(tmp_path, capsys):
    import yaml

    from sparc_rl.runner import ContinualRunner
    from tests.conftest import tiny_agent, tiny_curriculum, tiny_curriculum_dict

    run = tmp_path / "run"
    ContinualRunner(tiny_curriculum(), tiny_agent("lstm"), run_dir=run, progress=False).run()
    # the tiny tasks append the previous action and reward: the bare env would not fit the model
    second = str(run / "checkpoints" / "task-1-reversed.zip")
    assert main(["play", "--model", second, "--episodes", "1", "--record", str(tmp_path / "r.gif")]) == 0
    assert "mean return over 1 episodes" in capsys.readouterr().out and (tmp_path / "r.gif").stat().st_size > 0
    assert main(["play", "--model", second, "--task", "short", "--episodes", "1"]) == 0
    for argv, message in (
        (["--task", "long"], "Curriculum 'tiny' has no task 'long'; its tasks: ['short', 'reversed']"),
        (["--task", "short", "--env", "CartPole-v1"], "Give --env (with --env-kwargs and --wrappers) or --task"),
        (["--curriculum", "cartpole-drift", "--env", "CartPole-v1"], "or --task (with --curriculum), not both"),
        (["--wrappers", "previous-action-reward"], "--env-kwargs and --wrappers go with --env"),
        (["--env", "CartPole-v1", "--wrappers", "gradual-drift"], "Wrapper 'gradual-drift' needs settings"),
    ):
        assert main(["play", "--model", second, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    loose = tmp_path / "loose.zip"
    loose.write_bytes(Path(second).read_bytes())
    assert main(["play", "--model", str(loose)]) == 2
    assert "is not in a run folder (RUN_DIR/checkpoints/): give --env, or --task" in capsys.readouterr().err
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_curriculum_dict()))
    argv = ["play", "--model", str(loose), "--task", "short", "--curriculum", str(tmp_path / "tiny.yaml")]
    assert main([*argv, "--episodes", "1"]) == 0
