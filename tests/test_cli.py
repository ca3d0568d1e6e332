import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparc_rl.cli import main
from tests.conftest import tiny_curriculum_dict

# a bench that trains little if a check under test stopped working and let it run
TINY_BENCH = [
    "--seeds",
    "1",
    "--agents",
    "lstm",
    "--no-reference",
    "--curriculum",
    "cartpole-drift",
    "--steps-per-task",
    "256",
]


def test_list_shows_curricula_agents_and_envs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("garden-seasons", "minigrid-skills", "cartpole-drift", "sparc-no-memory", "SparcRL/Garden-v0"):
        assert name in out
    agents_dir = re.search(r"Agents \(--agent; the files are in (.+)\):", out)
    assert agents_dir and (Path(agents_dir.group(1)) / "sparc.yaml").is_file()  # to copy and edit
    # every name a curriculum's wrappers or an agent's plugins take, with what it does
    assert re.search(r"\n  success-from-return +Reports info\[\"is_success\"\] at each episode's end", out)
    assert re.search(r"\n  minigrid-one-hot +MiniGrid's OneHotPartialObsWrapper .{20,} \.\.\.\n", out)
    assert re.search(r"\n  ewc +Online EWC on all trainable policy parameters", out)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--curriculum", "nope"], "Unknown curriculum 'nope'"),
        (["train", "--agent", "lstn"], "Unknown agent 'lstn'. Did you mean 'lstm'"),
        (["train", "--steps-per-task", "-3"], "--steps-per-task must be positive"),
        (["eval", "--model", "missing.zip"], "Checkpoint 'missing.zip' does not exist"),
        (["play", "--model", "missing.zip", "--env", "CartPole-v9"], "--env: unknown env id 'CartPole-v9'"),
        (["train", "--resume", "."], "is not a sparc-rl run directory"),
        (
            ["train", "--resume", ".", "--steps-per-task", "64", "--agent", "lstm"],
            "--resume continues the run in '.' as its config.json says; --agent, --steps-per-task cannot change it",
        ),
        (["train", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["train", "--seed", "-1"], "--seed must be from 0 to 400000, got -1"),
        (
            ["train", "--eval-episodes", "0", "--curriculum", "cartpole-drift", "--steps-per-task", "256"],
            "--eval-episodes must be positive, got 0",
        ),
        (
            ["bench", "--seeds", "0", "--curriculum", "cartpole-drift", "--steps-per-task", "256"],
            "--seeds must be at least 1, got 0",
        ),
        (
            ["bench", "--jobs", "0", *TINY_BENCH],
            "--jobs must be at least 1, got 0",
        ),
        (["bench", "--agents", ","], "--agents names no agent"),
        (
            ["bench", *TINY_BENCH, "--agents", "lstm,gru,lstm"],
            "--agents: lstm, lstm would share the run folders 'lstm-seed<N>': give each agent once",
        ),
        (["bench", *TINY_BENCH, "--agents", "gru,reference.yaml"], "'reference-seed<N>' with the references"),
        (["eval", "--model", "missing.zip", "--episodes", "0"], "--episodes must be positive, got 0"),
        (
            ["play", "--model", "missing.zip", "--env", "CartPole-v1", "--env-kwargs", "{season: winter}"],
            "--env-kwargs is not valid JSON (Expecting property name",
        ),
        (
            ["play", "--model", "missing.zip", "--env", "SparcRL/Garden-v0", "--env-kwargs", '{"season": "monsoon"}'],
            "Cannot make 'SparcRL/Garden-v0' with kwargs {'season': 'monsoon'}: Unknown season 'monsoon'",
        ),
        (["play", "--model", "missing.zip", "--env", "CartPole-v1", "--seed", "-2"], "--seed must not be negative"),
        (
            ["play", "--model", "missing.zip", "--env", "CartPole-v1", "--record", "no/such/folder/run.gif"],
            "--record 'no/such/folder/run.gif': its folder does not exist",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_message_and_write_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_broken_curriculum_file_from_the_command_line(tmp_path):
    data = tiny_curriculum_dict()
    data["tasks"][0]["env"] = "NoSuchEnv-v0"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    before = path.read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "sparc_rl.cli", "train", "--curriculum", str(path), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown env id 'NoSuchEnv-v0'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and path.read_text() == before


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    assert main(["train", "--run-dir", str(run_dir)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]


def test_a_file_given_as_output_folder(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    assert main(["train", "--run-dir", str(blocker)]) == 2
    assert "is a file; choose another --run-dir" in capsys.readouterr().err
    assert main(["bench", "--out", str(blocker), *TINY_BENCH]) == 2
    err = capsys.readouterr().err
    assert "Cannot use" in err and "--out folder" in err and "Traceback" not in err
    assert blocker.read_text() == "mine"


def test_a_run_folder_given_as_model_names_its_last_task_checkpoint(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("task-2-heavy.zip", "task-10-late.zip", "task-notes.zip", "step-512.zip"):
        (checkpoints / name).write_text("")
    assert main(["eval", "--model", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a checkpoint" in err and str(checkpoints / "task-10-late.zip") in err


def test_an_interrupted_bench_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sparc_rl.bench.run_bench", interrupted)
    assert main(["bench", "--out", str(tmp_path / "b")]) == 130
    err = capsys.readouterr().err
    assert "the same command continues it" in err and str(tmp_path / "b") in err and err.count("\n") == 1


def test_unwritable_run_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--run-dir", str(blocker / "run")]) == 2
    assert "Cannot write to run directory" in capsys.readouterr().err


def test_an_agent_setting_the_policy_rejects_leaves_the_run_dir_reusable(tmp_path, capsys):
    curriculum = tmp_path / "tiny.yaml"
    curriculum.write_text(yaml.safe_dump(tiny_curriculum_dict()))
    agent = {"name": "typo", "policy_kwargs": {"core": "sparc", "core_kwargs": {"gate_sped": 3}}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(agent))
    argv = ["train", "--curriculum", str(curriculum), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, "--agent", str(tmp_path / "typo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "gate_sped" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # removed again: the fixed agent can use the same run directory


def test_a_curriculum_on_the_users_own_env_trains_from_the_command(tmp_path):
    """examples/beacon.yaml names its env as "examples.custom_env:MyProject/Beacon-v0" and
    examples/lstm-l2.yaml its plugin as "examples.l2_anchor:L2Anchor": the command imports both."""
    repo = Path(__file__).resolve().parents[1]
    script = Path(sys.executable).parent / "sparc-rl"
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--curriculum",
        "examples/beacon.yaml",
        "--agent",
        "examples/lstm-l2.yaml",
        "--steps-per-task",
        "512",
    ]
    proc = subprocess.run(
        [str(script), *args, "--eval-episodes", "2", "--run-dir", str(run_dir), "--no-progress"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    matrix = json.loads((run_dir / "metrics.json").read_text())["matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["agent"]["plugins"] == [{"name": "examples.l2_anchor:L2Anchor", "kwargs": {"strength": 1.0}}]


def test_env_modules_are_imported_from_the_current_folder(tmp_path):
    """A "module:EnvId" curriculum may name a module in the folder the command
    runs in (the installed script's sys.path does not hold it)."""
    (tmp_path / "pole_envs_here.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('HerePoles/Pole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n"
    )
    data = tiny_curriculum_dict()
    for task in data["tasks"]:
        task["env"], task["kwargs"], task["wrappers"] = "pole_envs_here:HerePoles/Pole-v0", {}, []
    (tmp_path / "here.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "sparc-rl"), "train", "--curriculum", "here.yaml", "--steps-per-task", "256"]
        + ["--eval-episodes", "2", "--run-dir", "run", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_recording_mp4_without_ffmpeg_is_refused_before_playing(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else find_spec(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    assert main(["play", "--model", "missing.zip", "--env", "CartPole-v1", "--record", "run.mp4"]) == 2
    err = capsys.readouterr().err
    assert "writing .mp4 needs imageio's ffmpeg plugin: pip install imageio-ffmpeg" in err and err.count("\n") == 1


def test_version(capsys):
    import sparc_rl

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"sparc-rl {sparc_rl.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", sparc_rl.__version__)


def test_the_packages_warnings_are_one_line_each_like_its_errors(tmp_path, capsys):
    import warnings

    import yaml

    curriculum = {"name": "stock", "eval_episodes": 2, "tasks": [{"name": "pole", "env": "CartPole-v1", "steps": 64}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(curriculum))
    shown_before = warnings.showwarning
    argv = ["train", "--curriculum", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "sparc-rl: warning: Budgets under one rollout" in err
    assert "sparc-rl: warning: Task 'pole' (CartPole-v1) reports no info['is_success']" in err
    assert "UserWarning" not in err and "runner.py" not in err
    assert warnings.showwarning is shown_before  # put back for whoever called main
