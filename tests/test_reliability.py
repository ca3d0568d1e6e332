import copy
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl import SparcPPO
from sparc_rl.agents import parse_agent
from sparc_rl.cli import main
from sparc_rl.curriculum import parse_curriculum
from sparc_rl.errors import CheckpointError, RunStoppedError
from sparc_rl.io import atomic_write_text
from sparc_rl.runner import ContinualRunner, RunResult
from sparc_rl.snapshot import load_snapshot, save_snapshot
from tests.conftest import tiny_agent_data, tiny_curriculum_dict

TINY_AGENT = tiny_agent_data(
    policy_kwargs={"core": "sparc", "hidden_size": 16, "n_slots": 4, "core_kwargs": {"write_only_novel": False}}
)


def _train_command(folder: Path, curriculum: dict, run_dir: Path) -> list[str]:
    """Write the curriculum and the tiny agent to ``folder``; the CLI command that trains them."""
    (folder / "c.yaml").write_text(yaml.safe_dump(curriculum))
    (folder / "a.yaml").write_text(yaml.safe_dump(TINY_AGENT))
    return [
        sys.executable,
        "-m",
        "sparc_rl.cli",
        "train",
        "--curriculum",
        str(folder / "c.yaml"),
        "--agent",
        str(folder / "a.yaml"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]


def _files_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sigkill_mid_task_then_resume_keeps_every_evaluation_once_and_the_memory(tmp_path):
    curriculum = tiny_curriculum_dict()
    curriculum["eval_every"] = 4
    curriculum["tasks"].append({**curriculum["tasks"][0], "name": "third"})
    for task in curriculum["tasks"]:
        task["steps"] = 1024
    run_dir = tmp_path / "run"
    command = [*_train_command(tmp_path, curriculum, run_dir), "--seed", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = run_dir / "state.json"
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state["stage"] == 1 and state["steps_in_stage"] > 0:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = state
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed mid-task"
    task0 = SparcPPO.load(run_dir / "checkpoints" / "task-0-short.zip")

    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    final = json.loads(state_path.read_text())
    assert final["finished"]
    keys = [(stage, steps) for stage, steps, _ in final["history"]]
    assert len(keys) == len(set(keys)) == 3 * 4  # every evaluation exactly once
    assert [k for k in keys if k[0] == 0] == [
        k for k, *_ in [(tuple(r[:2]),) for r in killed_at["history"]] if k[0] == 0
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["matrix"]) == 3
    # time and steps add up over both sessions, and the result reads back from the folder
    assert final["wall_time_s"] > killed_at["wall_time_s"] > 0
    assert final["env_steps"] >= 3 * 1024 > killed_at["env_steps"] > 0
    result = RunResult.load(run_dir)
    assert result.matrix == metrics["matrix"] and result.wall_time_s == final["wall_time_s"]
    final_model = SparcPPO.load(run_dir / "checkpoints" / "task-2-third.zip")
    before, after = task0.policy.actor_core, final_model.policy.actor_core
    assert int(after.n_filled) == 3
    rows = 3 * before.hidden_size
    assert th.equal(before.slot_weight_in[:rows], after.slot_weight_in[:rows])
    assert th.equal(before.slot_weight_hh[0], after.slot_weight_hh[0])
    assert th.equal(before.key_mean[0], after.key_mean[0])


def _tiny_run(run_dir: Path) -> ContinualRunner:
    agent = parse_agent(TINY_AGENT)
    runner = ContinualRunner(
        parse_curriculum(tiny_curriculum_dict(), "tiny"), agent, seed=5, run_dir=run_dir, progress=False
    )
    runner.run()
    return runner


def assert_same_run(first: ContinualRunner, second: ContinualRunner) -> None:
    """Same evaluations (scores and returns) and bit-identical final parameters."""
    assert first.state.history == second.state.history
    assert first.state.returns_history == second.state.returns_history
    for (name, p1), (_, p2) in zip(
        first.model.policy.state_dict().items(), second.model.policy.state_dict().items(), strict=True
    ):
        assert th.equal(p1, p2), name


def test_same_seed_same_score_matrix(tmp_path):
    first, second = _tiny_run(tmp_path / "a"), _tiny_run(tmp_path / "b")
    assert first.state.matrix == second.state.matrix
    assert_same_run(first, second)


@pytest.mark.parametrize("stop_at", [0, 1], ids=["before-the-first-task", "before-the-second-task"])
def test_a_run_resumed_at_a_task_boundary_continues_exactly_like_the_uninterrupted_one(tmp_path, monkeypatch, stop_at):
    uninterrupted = _tiny_run(tmp_path / "whole")
    run_stage = ContinualRunner._run_stage

    def stop_before_the_task(self, stage, *args):
        if stage == stop_at:
            raise KeyboardInterrupt
        run_stage(self, stage, *args)

    monkeypatch.setattr(ContinualRunner, "_run_stage", stop_before_the_task)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "split")
    monkeypatch.setattr(ContinualRunner, "_run_stage", run_stage)
    resumed = ContinualRunner.resume(tmp_path / "split", progress=False)
    assert resumed.state.stage == stop_at and resumed.state.steps_in_stage == 0
    resumed.run()
    assert resumed.state.matrix == uninterrupted.state.matrix
    assert_same_run(uninterrupted, resumed)


TINY_RECURRENT_PPO = {
    "name": "tiny-recurrent-ppo",
    "algorithm": "recurrent-ppo",
    "policy_kwargs": {"lstm_hidden_size": 8, "n_lstm_layers": 1},
    "algorithm_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 2},
    "n_envs": 2,
    "consolidate": False,
}


#: image observations: SB3 wraps the training envs in a VecTransposeImage
TINY_IMAGE_CURRICULUM = {
    "name": "tiny-images",
    "eval_episodes": 2,
    "tasks": [
        {"name": name, "env": env, "kwargs": {"agent_view_size": 5}, "wrappers": ["minigrid-image"], "steps": 256}
        for name, env in (("empty", "MiniGrid-Empty-5x5-v0"), ("lava", "MiniGrid-LavaGapS5-v0"))
    ],
}


def _run_of(agent_data: dict, run_dir: Path, eval_every: int = 4, curriculum: dict | None = None) -> ContinualRunner:
    curriculum = copy.deepcopy(curriculum) if curriculum is not None else tiny_curriculum_dict()
    curriculum["eval_every"] = eval_every
    return ContinualRunner(
        parse_curriculum(curriculum, "tiny"), parse_agent(agent_data), seed=3, run_dir=run_dir, progress=False
    )


@pytest.mark.parametrize(
    ("agent_data", "curriculum"),
    [
        pytest.param(TINY_AGENT, None, marks=pytest.mark.slow, id="sparc"),
        pytest.param(tiny_agent_data("lstm"), None, id="lstm"),
        pytest.param(TINY_RECURRENT_PPO, None, marks=pytest.mark.slow, id="recurrent-ppo"),
        pytest.param(tiny_agent_data("lstm"), TINY_IMAGE_CURRICULUM, id="lstm-on-images"),
    ],
)
def test_a_run_resumed_inside_a_task_continues_exactly_like_the_uninterrupted_one(
    tmp_path, monkeypatch, agent_data, curriculum
):
    assert_same_run(*run_whole_and_resumed_inside_a_task(tmp_path, monkeypatch, agent_data, curriculum))


def run_whole_and_resumed_inside_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_data: dict, curriculum: dict | None = None
) -> tuple[ContinualRunner, ContinualRunner]:
    """Train ``agent_data`` once without a stop and once stopped inside the second task and resumed."""
    uninterrupted = _run_of(agent_data, tmp_path / "whole", curriculum=curriculum)
    uninterrupted.run()
    commit = ContinualRunner._commit

    def stop_after_the_second_evaluation_of_the_second_task(self, model):
        commit(self, model)
        if self.state.stage == 1 and len([row for row in self.state.history if row[0] == 1]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ContinualRunner, "_commit", stop_after_the_second_evaluation_of_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        _run_of(agent_data, tmp_path / "split", curriculum=curriculum).run()
    monkeypatch.setattr(ContinualRunner, "_commit", commit)
    # one step checkpoint and its snapshot are kept, older ones are dropped
    step_files = sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step-*"))
    assert len(step_files) == 2 and step_files[0].endswith(".snapshot.pkl") and step_files[1].endswith(".zip")

    resumed = ContinualRunner.resume(tmp_path / "split", progress=False)
    assert resumed.state.stage == 1 and resumed.state.steps_in_stage > 0
    resumed.run()
    return uninterrupted, resumed


def test_a_damaged_snapshot_is_a_clear_error_and_deleting_it_resumes_with_fresh_draws(tmp_path, monkeypatch, capsys):
    commit = ContinualRunner._commit

    def stop_inside_the_first_task(self, model):
        commit(self, model)
        raise KeyboardInterrupt

    monkeypatch.setattr(ContinualRunner, "_commit", stop_inside_the_first_task)
    with pytest.raises(KeyboardInterrupt):
        _run_of(TINY_AGENT, tmp_path / "run").run()
    monkeypatch.setattr(ContinualRunner, "_commit", commit)
    (snapshot,) = (tmp_path / "run" / "checkpoints").glob("step-*.snapshot.pkl")
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    before = _files_snapshot(tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "snapshot" in err and "damaged" in err and "delete it" in err and "Traceback" not in err
    assert _files_snapshot(tmp_path / "run") == before
    snapshot.unlink()
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text())["finished"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": 2, "random": {}, "env": None, "loop": {}}, "has version 2, this sparc-rl reads 1"),
        ({"version": 1, "env": None}, "is damaged (no loop, random)"),
        (5, "is damaged (TypeError"),
    ],
)
def test_a_snapshot_of_another_version_or_shape_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "step-32.snapshot.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(CheckpointError, match=re.escape(message) + ".*delete it to resume"):
        load_snapshot(path)


def test_envs_that_cannot_be_pickled_skip_the_snapshot_with_a_warning(tmp_path):
    class HoldsALock(gym.Wrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.lock = threading.Lock()

    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, wrapper_class=HoldsALock)
    model = SparcPPO("MlpSparcPolicy", env, n_steps=16, batch_size=32, policy_kwargs={"core": "lstm", "hidden_size": 8})
    path = tmp_path / "step-32.snapshot.pkl"
    with pytest.warns(UserWarning, match="cannot be pickled.*fresh random draws"):
        assert save_snapshot(model, path) is False
    assert not path.exists() and not list(tmp_path.iterdir())


def test_resume_with_a_truncated_checkpoint_is_a_clear_error_and_changes_nothing(tmp_path, capsys):
    runner = _tiny_run(tmp_path / "run")
    state = json.loads((runner.run_dir / "state.json").read_text())
    state["finished"] = False
    (runner.run_dir / "state.json").write_text(json.dumps(state))
    checkpoint = runner.run_dir / state["checkpoint"]
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    before = _files_snapshot(runner.run_dir)
    assert main(["train", "--resume", str(runner.run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "Traceback" not in err
    assert _files_snapshot(runner.run_dir) == before


def test_resume_of_an_incompatible_state_version(tmp_path, capsys):
    runner = _tiny_run(tmp_path / "run")
    state = json.loads((runner.run_dir / "state.json").read_text())
    state["version"] = 99
    (runner.run_dir / "state.json").write_text(json.dumps(state))
    assert main(["train", "--resume", str(runner.run_dir)]) == 2
    assert "state.json has version 99" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("state.json", lambda text: text[:10], r"/state.json' cannot be read \(Expecting"),
        ("state.json", lambda text: "[1]", r"/state.json' is damaged \(a JSON list, not an object\)"),
        ("state.json", lambda text: text.replace('"matrix"', '"matrx"'), r"/state.json' is damaged \(no 'matrix'\)"),
        ("config.json", lambda text: "{}", r"/config.json' is damaged \(no 'curriculum'\)"),
        (
            "config.json",
            lambda text: text.replace('"seed": 5', '"seed": "five"'),
            r"/config.json' is damaged \(invalid",
        ),
        ("config.json", lambda text: text.replace('"agent": {', '"agent": [{', 1), r"/config.json' cannot be read"),
    ],
    ids=["truncated-state", "state-not-an-object", "state-without-a-key", "empty-config", "bad-seed", "bad-json"],
)
def test_a_damaged_run_file_is_named_in_one_message_and_nothing_changes(tmp_path, capsys, file, damage, message):
    runner = _tiny_run(tmp_path / "run")
    state = json.loads((runner.run_dir / "state.json").read_text())
    state["finished"] = False
    (runner.run_dir / "state.json").write_text(json.dumps(state))
    path = runner.run_dir / file
    path.write_text(damage(path.read_text()))
    before = _files_snapshot(runner.run_dir)
    assert main(["train", "--resume", str(runner.run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "train it again in a new or emptied folder" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _files_snapshot(runner.run_dir) == before


def test_a_run_without_state_json_says_there_is_nothing_to_resume(tmp_path, capsys):
    runner = _tiny_run(tmp_path / "run")
    (runner.run_dir / "state.json").unlink()
    assert main(["train", "--resume", str(runner.run_dir)]) == 2
    assert "stopped before it started training (it has no state.json): there is nothing to resume" in (
        capsys.readouterr().err
    )


def test_eval_of_a_model_with_other_spaces(tmp_path, capsys):
    runner = _tiny_run(tmp_path / "run")
    assert (
        main(
            [
                "eval",
                "--model",
                str(runner.run_dir / "checkpoints" / "task-1-reversed.zip"),
                "--curriculum",
                "garden-seasons",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "The policy expects observations Box(shape=(5,), dtype=float32) but the env gives Box(shape=(988,)" in err
    assert err.count("\n") == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import gymnasium as gym

    from sparc_rl.envs.cartpole import DriftingCartPoleEnv
    from sparc_rl.errors import TrainingDivergedError

    class NaNAfter(DriftingCartPoleEnv):
        calls = 0

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            NaNAfter.calls += 1
            return obs, float("nan") if NaNAfter.calls > 300 else reward, terminated, truncated, info

    gym.register("Test/NaNCartPole-v0", entry_point=NaNAfter)
    data = tiny_curriculum_dict()
    data["tasks"][0]["env"] = data["tasks"][1]["env"] = "Test/NaNCartPole-v0"
    runner = ContinualRunner(
        parse_curriculum(data, "nan"), parse_agent(TINY_AGENT), seed=0, run_dir=tmp_path / "run", progress=False
    )
    with pytest.raises(TrainingDivergedError, match="Non-finite .*Last good checkpoint") as caught:
        runner.run()
    last_good = str(caught.value).split("Last good checkpoint (before the fault): ")[1].split(";")[0]
    model = SparcPPO.load(tmp_path / "run" / last_good)
    assert np.isfinite(model.policy.parameters_to_vector()).all()


@pytest.mark.slow
def test_ctrl_c_writes_a_final_checkpoint_and_a_partial_report(tmp_path):
    curriculum = tiny_curriculum_dict()
    for task in curriculum["tasks"]:
        task["steps"] = 4096
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _train_command(tmp_path, curriculum, run_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background jobs ignore SIGINT and children inherit that: restore Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "partial report" in err and "--resume" in err and "Traceback" not in err
    assert (run_dir / "checkpoints" / "interrupted.zip").is_file()
    assert "Partial" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["partial"] is True
    # and the run can be resumed to the end
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["partial"] is False


@pytest.mark.parametrize("where", ["configure", "tqdm"])
def test_a_ctrl_c_that_leaves_a_commit_also_leaves_the_final_checkpoint(tmp_path, monkeypatch, where):
    """A Ctrl-C while the run sets up its logger and bar: either nothing is committed yet, or the stop
    gets what the message promises (once state.json existed before the logger: a race in CI)."""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"sparc_rl.runner.{where}", interrupt)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run_of(tiny_agent_data("lstm"), run_dir).run()
    if (run_dir / "state.json").exists():
        assert (run_dir / "checkpoints" / "interrupted.zip").is_file()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_written_through_a_temporary_file_get_the_usual_permissions(tmp_path, umask, mode):
    """Not mkstemp's owner-only 0o600 whatever the umask: a teammate or a shared TensorBoard may read runs."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "text")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_full_disk_stops_the_run_with_one_message_and_resume_continues_it_exactly(tmp_path, monkeypatch, capsys):
    agent = tiny_agent_data("lstm")
    uninterrupted = _run_of(agent, tmp_path / "whole")
    uninterrupted.run()
    commit = ContinualRunner._commit
    commits = []

    def disk_fills_up_at_the_third_commit(self, model):
        commits.append(model.num_timesteps)
        if len(commits) == 3:
            raise OSError(28, "No space left on device")
        commit(self, model)

    monkeypatch.setattr(ContinualRunner, "_commit", disk_fills_up_at_the_third_commit)
    stopped = _run_of(agent, tmp_path / "split")
    with pytest.raises(
        RunStoppedError, match=r"OSError: \[Errno 28\] No space left on device \(at .*test_reliability\.py:\d+\)"
    ) as caught:
        stopped.run()
    message = str(caught.value)
    assert "last committed evaluation is kept (checkpoints/step-" in message
    assert f"sparc-rl train --resume {tmp_path / 'split'}" in message and "\n" not in message
    monkeypatch.setattr(ContinualRunner, "_commit", commit)
    resumed = ContinualRunner.resume(tmp_path / "split", progress=False)
    resumed.run()
    assert_same_run(uninterrupted, resumed)


def test_subprocess_envs_give_the_same_run_and_close_their_processes(tmp_path):
    import multiprocessing

    agent = tiny_agent_data("lstm")
    in_process = _run_of(agent, tmp_path / "dummy")
    in_process.run()
    curriculum = tiny_curriculum_dict()
    curriculum["eval_every"] = 4
    subprocesses = ContinualRunner(
        parse_curriculum(curriculum, "tiny"),
        parse_agent(agent),
        seed=3,
        run_dir=tmp_path / "subproc",
        progress=False,
        vec_env="subproc",
    )
    with pytest.warns(UserWarning, match="cannot be pickled"):  # no exact resume inside a task
        subprocesses.run()
    assert_same_run(in_process, subprocesses)
    assert not multiprocessing.active_children()
    assert json.loads((tmp_path / "subproc" / "config.json").read_text())["vec_env"] == "subproc"
    assert ContinualRunner.resume(tmp_path / "subproc").vec_env == "subproc"
