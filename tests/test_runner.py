import dataclasses
import json
import re
import tempfile

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparc_rl.curriculum import parse_curriculum
from sparc_rl.errors import ConfigError
from sparc_rl.runner import ContinualRunner
from tests.conftest import tiny_agent, tiny_agent_data, tiny_curriculum, tiny_curriculum_dict


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    runner = ContinualRunner(tiny_curriculum(), tiny_agent(), seed=3, run_dir=run_dir, progress=False)
    return runner, runner.run()


def test_run_writes_every_output(finished_run):
    runner, result = finished_run
    names = {p.name for p in result.run_dir.iterdir()}
    assert {
        "config.json",
        "state.json",
        "metrics.json",
        "retention.csv",
        "retention.png",
        "learning_curves.png",
        "report.md",
        "tb",
        "checkpoints",
    } <= names
    checkpoints = {p.name for p in (result.run_dir / "checkpoints").iterdir()}
    assert {"task-0-short.zip", "task-1-reversed.zip"} <= checkpoints
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["seed"] == 3 and config["versions"]["torch"] and config["command"]
    assert "Score matrix" in (result.run_dir / "report.md").read_text()


def test_metrics_json_matches_the_logged_matrix(finished_run):
    runner, result = finished_run
    data = json.loads((result.run_dir / "metrics.json").read_text())
    for key in ("tasks", "matrix", "average_performance", "forgetting", "backward_transfer", "forward_transfer"):
        assert key in data
    assert data["tasks"] == ["short", "reversed"]
    assert np.asarray(data["matrix"]).shape == (2, 2)
    assert data["average_performance"] == pytest.approx(np.mean(data["matrix"][-1]))

    events = EventAccumulator(str(result.run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for task in ("short", "reversed"):
        assert f"retention/{task}/success" in tags["scalars"]
    for key in ("average_performance", "forgetting", "backward_transfer"):
        assert f"continual/{key}" in tags["scalars"]
    assert "sparc/gate_mean/short" in tags["scalars"] and "sparc/slots_filled" in tags["scalars"]
    assert "retention/heatmap" in tags["images"] and "retention/learning_curves" in tags["images"]
    # the event file's per-task scores, at the end of each stage, are the matrix rows
    rows = [row for row in runner.state.history if row[1] == max(r[1] for r in runner.state.history if r[0] == row[0])]
    for stage, (_, _, scores) in enumerate(rows):
        assert scores == pytest.approx(data["matrix"][stage])
    logged = [e.value for e in events.Scalars("retention/reversed/success")]
    assert logged[-1] == pytest.approx(data["matrix"][-1][1])
    assert len(logged) == len(runner.state.history)
    # the Custom Scalars dashboard draws every task's success in one chart
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    events = EventAccumulator(str(result.run_dir / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout.FromString(events.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["success of every task"] == ["retention/.*/success"]
    assert all(re.fullmatch(charts["success of every task"][0], f"retention/{task}/success") for task in data["tasks"])


def test_memory_was_written_once_per_announced_task(finished_run):
    runner, _ = finished_run
    assert int(runner.model.policy.actor_core.n_filled) == 2


def test_hidden_boundaries_are_not_announced_and_sparc_detects_them_itself(tmp_path):
    from sparc_rl.curriculum import parse_curriculum
    from sparc_rl.plugins import NoveltyBoundaryDetector

    data = {**tiny_curriculum_dict(), "boundary": "hidden"}
    runner = ContinualRunner(
        parse_curriculum(data, "hidden"), tiny_agent(), seed=0, run_dir=tmp_path / "run", progress=False
    )
    runner.run()
    assert runner.model.current_task is None  # never told
    assert [type(p) for p in runner.model.plugins] == [NoveltyBoundaryDetector]
    detector = runner.model.plugins[0]
    # each detected boundary, and the end of training, closed a skill (this tiny agent writes every one)
    assert int(runner.model.policy.actor_core.n_consolidations) == detector.detected + 1


def test_reference_runs_give_forward_transfer_and_are_cached(tmp_path, monkeypatch):
    agent = tiny_agent("gru")
    curriculum = tiny_curriculum()
    monkeypatch.delenv("SB3_LOGDIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = ContinualRunner(curriculum, agent, seed=0, run_dir=tmp_path / "a", reference=True, progress=False).run()
    assert not list(tmp_path.glob("SB3-*"))  # no stray SB3 log folder in the temp dir
    cached = sorted((tmp_path / ".reference-cache").glob("*.json"))
    assert len(cached) == 2
    assert first.metrics["forward_transfer"] is not None
    assert len(first.metrics["reference_auc"]) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    second = ContinualRunner(curriculum, agent, seed=0, run_dir=tmp_path / "b", reference=True, progress=False).run()
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read from the cache, not trained again
    assert second.metrics["reference_auc"] == first.metrics["reference_auc"]
    cached[0].write_text('{"auc": ')  # damaged (a disk full, a hand edit): trained again, with a warning
    with pytest.warns(UserWarning, match="Reference cache .* is unreadable"):
        third = ContinualRunner(curriculum, agent, seed=0, run_dir=tmp_path / "c", reference=True, progress=False).run()
    assert third.metrics["reference_auc"] == first.metrics["reference_auc"]
    assert json.loads(cached[0].read_text())["auc"] in first.metrics["reference_auc"]


@pytest.mark.parametrize("plugin", ["ewc", "behaviour-cloning"])
def test_continual_plugins_run_through_a_curriculum(tmp_path, plugin):
    agent = tiny_agent("lstm", consolidate=False, plugins=[{"name": plugin}])
    runner = ContinualRunner(tiny_curriculum(), agent, seed=0, run_dir=tmp_path / "run", progress=False)
    runner.run()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    # the plugin's loss joined training once the first task had ended
    assert "train/auxiliary_loss" in events.Tags()["scalars"]
    assert all(np.isfinite(e.value) for e in events.Scalars("train/auxiliary_loss"))


@pytest.mark.parametrize("core", ["sparc", "lstm"])
def test_curriculum_algorithm_settings_override_the_agents_in_runs_and_references(tmp_path, core):
    curriculum = dataclasses.replace(tiny_curriculum(), algorithm_kwargs={"n_epochs": 3})
    agent = tiny_agent(core)
    assert agent.algorithm_kwargs["n_epochs"] == 2
    runner = ContinualRunner(curriculum, agent, seed=0, run_dir=tmp_path / "run", reference=True, progress=False)
    runner.run()
    assert runner.model is not None and runner.model.n_epochs == 3
    assert runner.model.batch_size == agent.algorithm_kwargs["batch_size"]  # what the curriculum leaves alone
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["curriculum"]["algorithm_kwargs"] == {"n_epochs": 3}
    cached = [json.loads(p.read_text()) for p in (tmp_path / ".reference-cache").glob("*.json")]
    assert cached and all(entry["key"]["algorithm_kwargs"] == {"n_epochs": 3} for entry in cached)


def test_an_agent_file_can_name_the_users_own_plugin(tmp_path, monkeypatch):
    """A plugin given as "module:ClassName" is imported, its settings checked, and its hooks called
    through the whole run, also after a resume from the saved run folder."""
    (tmp_path / "task_log_plugin.py").write_text(
        "from sparc_rl.plugins import ContinualPlugin\n"
        "CALLS = []\n"
        "class TaskLog(ContinualPlugin):\n"
        "    def __init__(self, tag: str = 'x') -> None:\n"
        "        self.tag = tag\n"
        "    def on_task_start(self, model, task):\n"
        "        CALLS.append((self.tag, 'start', task))\n"
        "    def on_task_end(self, model, task):\n"
        "        CALLS.append((self.tag, 'end', task))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import task_log_plugin

    agent = tiny_agent(plugins=[{"name": "task_log_plugin:TaskLog", "kwargs": {"tag": "mine"}}])
    result = ContinualRunner(tiny_curriculum(), agent, seed=0, run_dir=tmp_path / "run", progress=False).run()
    assert task_log_plugin.CALLS == [
        ("mine", "start", "short"),
        ("mine", "end", "short"),
        ("mine", "start", "reversed"),
        ("mine", "end", "reversed"),
    ]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["agent"]["plugins"] == [{"name": "task_log_plugin:TaskLog", "kwargs": {"tag": "mine"}}]
    assert ContinualRunner.resume(result.run_dir, progress=False).agent.plugins == agent.plugins


def test_a_model_the_agent_cannot_build_leaves_no_run_folder(tmp_path):
    """The rehearsal baseline distils categorical actions: on a Box-action curriculum it stops with one
    message before anything is written, and the run folder it had made is removed again."""
    data = tiny_curriculum_dict()
    for task in data["tasks"]:
        task["env"], task["kwargs"], task["wrappers"] = "Pendulum-v1", {}, []
    runner = ContinualRunner(parse_curriculum(data), "lstm-clone", run_dir=tmp_path / "runs" / "x", progress=False)
    with pytest.raises(ConfigError, match="needs a Discrete action space, got Box"):
        runner.run()
    assert list((tmp_path / "runs").iterdir()) == []


def test_each_finished_task_prints_one_line_of_scores_above_the_bar(tmp_path, capsys):
    ContinualRunner(tiny_curriculum(), tiny_agent("gru"), seed=0, run_dir=tmp_path / "run", progress=True).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("after ")]
    assert len(lines) == 2
    assert re.fullmatch(r"after short \(1/2\): short \d\.\d\d, reversed \d\.\d\d", lines[0])
    assert lines[1].startswith("after reversed (2/2): short ")


def test_a_budget_under_one_rollout_is_announced(tmp_path, capsys):
    curriculum = tiny_curriculum_dict()
    curriculum["tasks"][1]["steps"] = 16  # the tiny agent's rollout: 32 steps x 2 envs
    runner = ContinualRunner(parse_curriculum(curriculum), tiny_agent("gru"), run_dir=tmp_path / "r", progress=True)
    with pytest.warns(UserWarning, match=r"Budgets under one rollout \(64 env steps.*: reversed \(16\)\."):
        result = runner.run()
    assert result.env_steps == 256 + 64
    assert "100%|" in capsys.readouterr().err.split("\r")[-1]  # the bar counts the whole rollout it trained


def test_a_runner_takes_the_curriculum_and_agent_as_the_dicts_their_files_hold(tmp_path):
    curriculum, agent = tiny_curriculum_dict(), tiny_agent_data("gru")
    result = ContinualRunner(curriculum, agent, run_dir=tmp_path / "run", progress=False).run()
    assert result.tasks == ["short", "reversed"] and len(result.matrix) == 2
    with pytest.raises(ConfigError, match=r"Curriculum <dict>, task 'short': 'steps' must be a positive integer"):
        ContinualRunner({**curriculum, "tasks": [{**curriculum["tasks"][0], "steps": 0}]}, agent)
    with pytest.raises(ConfigError, match=r"Agent <dict>: unknown key\(s\) \['n_env'\]"):
        ContinualRunner(curriculum, {**agent, "n_env": 2})


def test_curricula_and_agents_built_in_python_are_checked_as_their_files_are(tmp_path):
    curriculum, agent = tiny_curriculum(), tiny_agent("gru")
    no_budget = dataclasses.replace(curriculum, tasks=(dataclasses.replace(curriculum.tasks[0], steps=0),))
    with pytest.raises(ConfigError, match=r"Curriculum tiny, task 'short': 'steps' must be a positive integer"):
        ContinualRunner(no_budget, agent)
    in_a_folder = dataclasses.replace(curriculum, tasks=(dataclasses.replace(curriculum.tasks[0], name="a/b"),))
    with pytest.raises(ConfigError, match=r"task 'a/b'.*the task name"):
        ContinualRunner(in_a_folder, agent)
    typo = dataclasses.replace(agent, algorithm_kwargs={"n_epoch": 3})
    with pytest.raises(ConfigError, match=r"Agent 'tiny-gru': algorithm_kwargs: unknown setting 'n_epoch'"):
        ContinualRunner(curriculum, typo)
    with pytest.raises(ConfigError, match=r"Agent 'tiny-gru': algorithm_kwargs"):
        ContinualRunner(curriculum, agent, reference=True, reference_agent=typo)
    runner = ContinualRunner(curriculum, agent, run_dir=tmp_path / "run", progress=False)
    assert runner.curriculum == curriculum and runner.agent == agent  # checking changes nothing
