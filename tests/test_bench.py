import csv
import multiprocessing
import re
from pathlib import Path

import pytest
import torch as th
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparc_rl.bench import training_speed
from sparc_rl.cli import main
from tests.conftest import tiny_agent_data, tiny_curriculum_dict


def test_bench_compares_agents_over_seeds(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_curriculum_dict()))
    for core in ("sparc", "lstm"):
        (tmp_path / f"tiny-{core}.yaml").write_text(yaml.safe_dump(tiny_agent_data(core)))
    agents = f"{tmp_path / 'tiny-sparc.yaml'},{tmp_path / 'tiny-lstm.yaml'}"
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--curriculum",
                str(tmp_path / "c.yaml"),
                "--agents",
                agents,
                "--seeds",
                "2",
                "--jobs",
                "2",
                "--out",
                str(out),
                "--no-reference",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "bench: 100%" in printed.err and "4/4" in printed.err  # a bar of finished runs
    assert f"tensorboard --logdir {out / 'runs'}" in printed.out
    table = (out / "results.md").read_text()
    assert "| tiny-sparc | 2 |" in table and "| tiny-lstm | 2 |" in table
    assert "--seeds 2 --no-reference`" in table  # the command that reproduces it
    speed = re.search(r"Machine speed at the start: (\d+) env steps/s on stock MiniGrid DoorKey-5x5", table)
    assert speed and int(speed.group(1)) > 100  # the yardstick for comparing wall times across machines
    updates = re.search(r"and (\d+) recurrent updates/s of stock torch on one thread", table)
    assert updates and int(updates.group(1)) > 1  # the yardstick for the training that dominates a run
    rows = list(csv.DictReader((out / "results.csv").open()))
    metrics = {(r["agent"], r["metric"]) for r in rows}
    assert ("tiny-sparc", "forgetting") in metrics and ("tiny-lstm", "env_steps_per_s") in metrics
    for row in rows:
        if row["metric"] == "average_performance":
            assert float(row["low"]) <= float(row["mean"]) <= float(row["high"])
    assert (out / "retention_curves.png").stat().st_size > 0 and (out / "score_matrices.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "tiny-lstm-seed0",
        "tiny-lstm-seed1",
        "tiny-sparc-seed0",
        "tiny-sparc-seed1",
    ]


def test_bench_with_an_unknown_agent_fails_before_training(tmp_path, capsys):
    assert main(["bench", "--agents", "sparc,lstmm", "--out", str(tmp_path / "b")]) == 2
    assert "Unknown agent 'lstmm'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_failing_run_is_reported_and_the_others_are_kept(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_curriculum_dict()))
    (tmp_path / "crashing_plugins.py").write_text(
        "from sparc_rl.plugins import ContinualPlugin\n"
        "class CrashAtTaskEnd(ContinualPlugin):\n"
        "    def on_task_end(self, model, task):\n"
        "        raise RuntimeError('a bug in the plugin')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = tiny_agent_data("gru", name="good")
    bad = tiny_agent_data("gru", name="bad", plugins=[{"name": "crashing_plugins:CrashAtTaskEnd"}])
    for agent in (good, bad):
        (tmp_path / f"{agent['name']}.yaml").write_text(yaml.safe_dump(agent))
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--curriculum",
                str(tmp_path / "c.yaml"),
                "--agents",
                f"{tmp_path / 'good.yaml'},{tmp_path / 'bad.yaml'}",
                "--seeds",
                "1",
                "--jobs",
                "1",
                "--out",
                str(out),
                "--no-reference",
            ]
        )
        == 0
    )
    table = (out / "results.md").read_text()
    assert "| good | 1 |" in table and "bad.yaml seed 0: RuntimeError: a bug in the plugin" in table


def test_an_agent_that_cannot_train_on_the_curriculum_stops_the_bench_before_anything_runs(tmp_path, capsys):
    """Behaviour cloning refuses continuous actions when its model is built: before any run, not after all."""
    curriculum = {
        "name": "pendulum",
        "tasks": [
            {
                "name": "swing",
                "env": "Pendulum-v1",
                "wrappers": [{"name": "success-from-return", "kwargs": {"threshold": -200}}],
                "steps": 64,
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(curriculum))
    out = tmp_path / "bench"
    assert (
        main(["bench", "--curriculum", str(tmp_path / "c.yaml"), "--agents", "lstm,lstm-clone", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "Agent 'lstm-clone' cannot train on 'pendulum': The behaviour-cloning plugin" in err and "Discrete" in err
    assert "Traceback" not in err and not out.exists()


def test_every_agent_is_measured_against_the_same_references(tmp_path, monkeypatch):
    import json

    from sparc_rl.runner import ContinualRunner

    trained = []  # references are the shortest jobs: they come last, to fill the cores at the end
    for method in ("run", "_train_reference"):
        original = getattr(ContinualRunner, method)

        def spy(self, *args, _original=original, _method=method):
            trained.append(_method if _method == "run" else self.curriculum.tasks[args[1]].name)
            return _original(self, *args)

        monkeypatch.setattr(ContinualRunner, method, spy)
    data = tiny_curriculum_dict()
    data["tasks"].append({**data["tasks"][0], "name": "short-again"})  # a returning task: no new reference
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    for core in ("sparc", "lstm"):
        (tmp_path / f"tiny-{core}.yaml").write_text(yaml.safe_dump(tiny_agent_data(core)))
    out = tmp_path / "bench"
    agents = f"{tmp_path / 'tiny-sparc.yaml'},{tmp_path / 'tiny-lstm.yaml'}"
    args = ["bench", "--curriculum", str(tmp_path / "c.yaml"), "--agents", agents, "--seeds", "1", "--jobs", "1"]
    args += ["--eval-episodes", "2"]
    assert main([*args, "--out", str(out), "--reference-agent", str(tmp_path / "tiny-lstm.yaml")]) == 0
    cached = [json.loads(p.read_text()) for p in (out / "runs" / ".reference-cache").glob("*.json")]
    assert sorted(c["task"] for c in cached) == ["reversed", "short"]
    assert {c["key"]["agent"]["name"] for c in cached} == {"tiny-lstm"}
    for entry in cached:  # the learning curve behind each reference's AUC is kept
        steps, scores = zip(*entry["curve"], strict=True)
        assert list(steps) == sorted(steps) and len(steps) == data["eval_every"]
        assert entry["auc"] == sum(scores) / len(scores)
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 2
    references = [r["metrics"]["reference_auc"] for r in results]
    assert references[0] == references[1] and len(references[0]) == 3 and references[0][0] == references[0][2]
    assert all(r["metrics"]["forward_transfer"] is not None for r in results)
    assert trained[:2] == ["run", "run"] and sorted(trained[2:]) == ["reversed", "short"]  # each reference once
    for result in results:  # each run's own files carry the forward transfer measured after the references
        run_dir = Path(result["run_dir"])
        assert json.loads((run_dir / "metrics.json").read_text()) == result["metrics"]
        report = (run_dir / "report.md").read_text()
        assert f"| forward transfer | {result['metrics']['forward_transfer']:.3f} |" in report
        events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        events.Reload()
        [logged] = events.Scalars("continual/forward_transfer")
        assert logged.step == result["env_steps"]
        assert logged.value == pytest.approx(result["metrics"]["forward_transfer"])
    table = (out / "results.md").read_text()
    assert "against `tiny-lstm` trained from scratch" in table
    assert "--eval-episodes 2 --reference-agent" in table


def test_a_rerun_reuses_finished_runs_and_adds_agents_and_references(tmp_path):
    import json

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_curriculum_dict()))
    for core in ("sparc", "lstm"):
        (tmp_path / f"tiny-{core}.yaml").write_text(yaml.safe_dump(tiny_agent_data(core)))
    sparc, lstm = str(tmp_path / "tiny-sparc.yaml"), str(tmp_path / "tiny-lstm.yaml")
    out = tmp_path / "bench"
    common = ["--curriculum", str(tmp_path / "c.yaml"), "--seeds", "1", "--jobs", "1", "--eval-episodes", "2"]
    assert main(["bench", "--agents", sparc, *common, "--out", str(out), "--no-reference"]) == 0
    state = out / "runs" / "tiny-sparc-seed0" / "state.json"
    before = (state.read_text(), state.stat().st_mtime_ns)
    first = json.loads((out / "results.json").read_text())[0]
    assert first["metrics"]["forward_transfer"] is None and first["wall_time_s"] > 0

    assert main(["bench", "--agents", f"{sparc},{lstm}", *common, "--out", str(out)]) == 0
    assert (state.read_text(), state.stat().st_mtime_ns) == before  # reused, not trained again
    results = {r["agent"]: r for r in json.loads((out / "results.json").read_text())}
    reused = results[sparc]
    assert reused["metrics"]["matrix"] == first["metrics"]["matrix"] and reused["wall_time_s"] == first["wall_time_s"]
    assert reused["metrics"]["forward_transfer"] is not None  # the references were added afterwards
    assert results[lstm]["metrics"]["forward_transfer"] is not None
    table = (out / "results.md").read_text()
    assert "| tiny-sparc | 1 |" in table and "| tiny-lstm | 1 |" in table
    assert "(parallel jobs: 1; finished runs reused from an earlier invocation: 1)" in table

    # a third time, nothing new: each run's forward transfer stays one TensorBoard point
    assert main(["bench", "--agents", f"{sparc},{lstm}", *common, "--out", str(out)]) == 0
    again = {r["agent"]: r for r in json.loads((out / "results.json").read_text())}
    assert {a: r["metrics"] for a, r in again.items()} == {a: r["metrics"] for a, r in results.items()}
    for result in results.values():
        events = EventAccumulator(str(Path(result["run_dir"]) / "tb"), size_guidance={"scalars": 0})
        events.Reload()
        assert len(events.Scalars("continual/forward_transfer")) == 1


def test_a_bench_folder_holding_other_runs_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_curriculum_dict()))
    (tmp_path / "tiny-gru.yaml").write_text(yaml.safe_dump(tiny_agent_data("gru")))
    out = tmp_path / "bench"
    common = ["bench", "--curriculum", str(tmp_path / "c.yaml"), "--agents", str(tmp_path / "tiny-gru.yaml")]
    common += ["--seeds", "1", "--jobs", "1", "--no-reference", "--out", str(out)]
    assert main([*common, "--eval-episodes", "2"]) == 0
    results = (out / "results.json").read_text()
    assert main([*common, "--eval-episodes", "3"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == results
    (out / "runs" / "tiny-gru-seed0" / "state.json").write_text("{")  # a damaged run is refused the same way
    assert main([*common, "--eval-episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reuse its run in '{out / 'runs' / 'tiny-gru-seed0'}'" in err and "Traceback" not in err
    assert (out / "results.json").read_text() == results


def test_slow_agents_start_first_so_no_core_idles_at_the_end():
    from sparc_rl.bench import _start_early

    agents = ["sparc", "lstm", "lstm-clone", "recurrent-ppo"]
    assert sorted(agents, key=_start_early, reverse=True) == ["recurrent-ppo", "lstm-clone", "sparc", "lstm"]


def test_spawned_workers_import_the_users_env_and_plugin_modules(tmp_path, monkeypatch):
    """Where CUDA is present the bench's workers are spawned, not forked: fresh interpreters that must
    import the user's "module:Name" env and plugin again from the folder the command ran in."""
    import torch as th

    (tmp_path / "here_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('HereEnvs/Pole-v0', entry_point='sparc_rl.envs.cartpole:DriftingCartPoleEnv')\n"
    )
    (tmp_path / "here_plugins.py").write_text(
        "from sparc_rl.plugins import ContinualPlugin\nclass Quiet(ContinualPlugin): ...\n"
    )
    curriculum = tiny_curriculum_dict()
    for task in curriculum["tasks"]:
        task["env"] = "here_envs:HereEnvs/Pole-v0"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(curriculum))
    agent = tiny_agent_data("lstm", consolidate=False, plugins=["here_plugins:Quiet"])
    (tmp_path / "tiny-lstm.yaml").write_text(yaml.safe_dump(agent))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(th.cuda, "is_available", lambda: True)  # the bench spawns its workers then
    methods = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: methods.append(method) or get_context(method))
    args = ["bench", "--curriculum", "c.yaml", "--agents", "tiny-lstm.yaml", "--seeds", "2", "--jobs", "2"]
    assert main([*args, "--no-reference", "--no-progress", "--out", "b"]) == 0
    assert methods == ["spawn"]
    assert "| tiny-lstm | 2 |" in (tmp_path / "b" / "results.md").read_text()


def test_a_warning_every_run_gives_is_printed_once(tmp_path, capsys):
    curriculum = {
        "name": "stock-poles",
        "eval_episodes": 2,
        "eval_every": 1,
        "tasks": [{"name": name, "env": "CartPole-v1", "steps": 64} for name in ("first", "second")],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(curriculum))  # stock CartPole reports no is_success
    (tmp_path / "tiny-lstm.yaml").write_text(yaml.safe_dump(tiny_agent_data("lstm", consolidate=False)))
    args = ["bench", "--curriculum", str(tmp_path / "c.yaml"), "--agents", str(tmp_path / "tiny-lstm.yaml")]
    assert main([*args, "--seeds", "2", "--jobs", "2", "--no-reference", "--out", str(tmp_path / "b")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sparc-rl: warning:")]
    assert len(warned) == 2, warned  # one per task, not one per task and run
    assert "Task 'first' (CartPole-v1) reports no info['is_success']" in warned[0]
    assert "Task 'second' (CartPole-v1)" in warned[1]


def test_the_training_yardstick_leaves_the_callers_threads_and_random_state_alone() -> None:
    threads = th.get_num_threads()
    th.set_num_threads(3)
    try:
        th.manual_seed(7)
        expected = th.rand(3)
        th.manual_seed(7)
        assert training_speed(seconds=0.2) > 1
        assert th.get_num_threads() == 3
        assert th.equal(th.rand(3), expected)
    finally:
        th.set_num_threads(threads)
