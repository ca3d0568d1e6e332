"""Side-by-side continual benchmark: every agent x seed on one curriculum, then a comparison table."""

from __future__ import annotations

import builtins
import json
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from minigrid.wrappers import ImgObsWrapper
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn
from tqdm import tqdm

from sparc_rl.agents import load_agent
from sparc_rl.curriculum import Curriculum, load_curriculum
from sparc_rl.errors import CheckpointError, ConfigError, SparcError
from sparc_rl.io import atomic_write_text, versions
from sparc_rl.metrics import bootstrap_ci
from sparc_rl.runner import ContinualRunner, RunResult


@dataclass(frozen=True)
class BenchJob:
    curriculum: str
    agent: str
    seed: int
    run_dir: str
    steps_per_task: int | None
    eval_episodes: int | None
    #: set for a job that only trains ``agent`` from scratch on this task (a reference for forward transfer)
    reference_task: int | None = None


def _start_early(agent: str) -> tuple[bool, bool]:
    """Sort key that starts the external RecurrentPPO and agents with plugins (rehearsal, EWC) before
    the plain agents: a slow run started last would leave the other cores idle at the end."""
    spec = load_agent(agent)
    return spec.algorithm != "sparc-ppo", bool(spec.plugins)


def _run_job(job: BenchJob) -> dict[str, Any]:
    """One agent x seed; a failure is reported in the results instead of losing the other runs. The
    run's warnings are handed back under ``"warnings"`` (see :func:`_show_new_warnings`) instead of
    printed: every run of a bench would print the same ones."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            result = _run_one(job)
        except Exception as error:  # noqa: BLE001 - any failure of one run must not sink the benchmark
            result = {
                "agent": job.agent,
                "seed": job.seed,
                "run_dir": job.run_dir,
                "error": f"{type(error).__name__}: {error}",
            }
    # the category by name: a class from a module the main process lacks would not unpickle there
    result["warnings"] = list(
        dict.fromkeys((str(w.message), w.category.__name__, w.filename, w.lineno) for w in caught)
    )
    return result


def _show_new_warnings(result: dict[str, Any], shown: set[tuple[str, str]]) -> None:
    """Issue the warnings of a finished run that no earlier run of the bench gave."""
    for message, category, filename, lineno in result.pop("warnings"):
        if (message, category) not in shown:
            shown.add((message, category))
            found = getattr(builtins, category, None)
            is_warning = isinstance(found, type) and issubclass(found, Warning)
            warnings.warn_explicit(message, found if is_warning else UserWarning, filename, lineno)


def _runner(job: BenchJob) -> ContinualRunner:
    return ContinualRunner(
        job.curriculum,
        job.agent,
        steps_per_task=job.steps_per_task,
        seed=job.seed,
        run_dir=job.run_dir,
        eval_episodes=job.eval_episodes,
        progress=False,
        command="sparc-rl bench",
    )


def _run_one(job: BenchJob) -> dict[str, Any]:
    import torch

    # one thread per run, as `sparc-rl train`'s default: with two threads per run (two benches of one
    # job each on 2 cores) each run's second thread took half of its CPU time, spent waiting
    torch.set_num_threads(1)
    runner = _runner(job)
    if job.reference_task is not None:
        return {"reference_task": job.reference_task, "seed": job.seed, "auc": runner.reference_auc(job.reference_task)}
    result, reused = _reuse_or_run(runner)
    return {
        "agent": job.agent,
        "seed": job.seed,
        "run_dir": str(result.run_dir),
        "metrics": result.metrics,
        "wall_time_s": result.wall_time_s,
        "env_steps": result.env_steps,
        "history": result.history,
        "reused": reused,
    }


def _reuse_or_run(runner: ContinualRunner) -> tuple[RunResult, bool]:
    """A bench run directory that already holds this run is reused when finished and continued when
    interrupted, so a benchmark can be re-run with more agents or after a stop without losing work.

    :return: the result and whether it was reused as it was
    """
    if not (runner.run_dir / "state.json").is_file():
        return runner.run(), False
    saved = ContinualRunner.resume(runner.run_dir, progress=False)
    if saved.state.finished:
        return RunResult.load(runner.run_dir), True
    return saved.run(), False


def _check_saved_run(runner: ContinualRunner) -> None:
    saved = runner.run_dir / "state.json"
    if not saved.is_file():
        return
    try:
        found = ContinualRunner.resume(runner.run_dir, progress=False)
    except CheckpointError as error:
        raise ConfigError(f"The bench cannot reuse its run in {str(runner.run_dir)!r}: {error}") from None
    if found.experiment() != runner.experiment():
        raise ConfigError(
            f"{str(runner.run_dir)!r} holds a different run (another curriculum, agent, seed or number of "
            "evaluation episodes); use another --out folder or remove it."
        )


def machine_speed(seconds: float = 2.0, n_envs: int = 8) -> float:
    """How fast this machine is, as a yardstick for wall times measured on different machines: env
    steps per second of stock MiniGrid DoorKey-5x5 (image observations, ``n_envs`` envs in a
    DummyVecEnv, random actions), the design brief's "random actions" reference (about 10,000 there).
    Stock MiniGrid, not this package's faster views, so the number does not move with this code."""
    env = DummyVecEnv([lambda: ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0")) for _ in range(n_envs)])
    env.seed(0)
    env.reset()
    rng = np.random.default_rng(0)
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    for _ in range(50):  # warm-up: the first steps of a fresh process run slower
        env.step(rng.integers(n_actions, size=n_envs))
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        env.step(rng.integers(n_actions, size=n_envs))
        steps += n_envs
    env.close()
    return steps / elapsed


def training_speed(seconds: float = 2.0) -> float:
    """How fast this machine trains small recurrent networks, the yardstick :func:`machine_speed` misses:
    most of a bench's run time is PPO updates, and two draws of one machine type that stepped envs
    about as fast (7544 and 7098 steps/s) ran lstm-ewc through minigrid-skills in 420 and 316 s
    (seed 0, 2026-12-01). Updates per second of stock torch on one thread (as the bench's runs use),
    each a forward and backward pass of a GRU cell (980 inputs, minigrid-skills' one-hot views; hidden
    64) unrolled over 16 steps of 16 sequences, and an Adam step. Stock torch, not this package's
    cores, so the number does not move with this code."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    try:
        with th.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            th.manual_seed(0)
            cell = nn.GRUCell(980, 64)
            inputs = (th.rand(16, 16, 980) < 0.15).float()
        optimizer = th.optim.Adam(cell.parameters(), lr=1e-4)

        def update() -> None:
            hidden = th.zeros(16, 64)
            for step_inputs in inputs:
                hidden = cell(step_inputs, hidden)
            optimizer.zero_grad()
            hidden.pow(2).mean().backward()
            optimizer.step()

        for _ in range(5):  # warm-up
            update()
        updates, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            update()
            updates += 1
        return updates / elapsed
    finally:
        th.set_num_threads(threads)


def _first_of_kind(curriculum: Curriculum) -> list[int]:
    """For each task, the index of the first task with the same settings (a returning task shares its
    single-task reference)."""
    seen: dict[str, int] = {}
    return [
        seen.setdefault(json.dumps({k: v for k, v in task.items() if k != "name"}, sort_keys=True), index)
        for index, task in enumerate(curriculum.to_dict()["tasks"])
    ]


def _plasticity(metrics: dict[str, Any]) -> float:
    """Fraction of tasks whose own-stage score reached the threshold."""
    steps = metrics.get("plasticity_steps_to_threshold") or []
    return float(np.mean([s is not None for s in steps])) if steps else float("nan")


def run_bench(
    curriculum: str,
    agents: list[str],
    seeds: int,
    out_dir: Path,
    steps_per_task: int | None = None,
    eval_episodes: int | None = None,
    jobs: int | None = None,
    reference: bool = True,
    reference_agent: str | None = None,
    progress: bool = True,
) -> Path:
    """Run the benchmark and write ``results.md``, ``results.csv``, ``results.json`` and plots to ``out_dir``.

    Forward transfer compares every agent with the same single-task references: ``reference_agent``
    (default: the first agent) trained from scratch on each distinct task, per seed. Those runs are
    the shortest, so they are scheduled last, longest first, to fill the cores while the last agent
    runs finish; each run's forward transfer is measured when all have finished, and written to its
    ``metrics.json`` and ``report.md``. ``progress`` shows a bar of finished runs (references included)
    on stderr."""
    if not agents:
        raise ConfigError("--agents names no agent: give a comma-separated list, e.g. sparc,lstm.")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
    stems = [Path(agent).stem for agent in agents]
    for stem in dict.fromkeys(stems):
        named = [agent for agent in agents if Path(agent).stem == stem]
        if len(named) > 1 or stem == "reference":
            raise ConfigError(
                f"--agents: {', '.join(named)} would share the run folders '{stem}-seed<N>'"
                + (" with the references" if stem == "reference" else "")
                + ": give each agent once, and agent files distinct names."
            )
    loaded = load_curriculum(curriculum)
    reference_agent = reference_agent or agents[0]
    for agent in [*agents, reference_agent]:
        load_agent(agent)  # fail fast on a bad name, before any training
    jobs = jobs or max(1, min(os.cpu_count() or 1, len(agents) * seeds))
    common = dict(curriculum=curriculum, steps_per_task=steps_per_task, eval_episodes=eval_episodes)
    work = [
        BenchJob(
            agent=agent,
            seed=seed,
            run_dir=str(out_dir / "runs" / f"{Path(agent).stem}-seed{seed}"),
            **common,  # type: ignore[arg-type]
        )
        for agent in sorted(agents, key=_start_early, reverse=True)
        for seed in range(seeds)
    ]
    first_of_kind = _first_of_kind(loaded)
    if reference:
        by_budget = sorted(set(first_of_kind), key=lambda index: loaded.tasks[index].steps, reverse=True)
        work += [
            BenchJob(
                agent=reference_agent,
                seed=seed,
                run_dir=str(out_dir / "runs" / f"reference-seed{seed}"),
                reference_task=index,
                **common,  # type: ignore[arg-type]
            )
            for index in by_budget
            for seed in range(seeds)
        ]
    checked: set[str] = set()
    for job in work:  # before any training
        runner = _runner(job)
        if job.reference_task is None:
            _check_saved_run(runner)
        if job.agent not in checked:
            checked.add(job.agent)
            try:
                runner.check_model()
            except SparcError as error:
                raise ConfigError(f"Agent {job.agent!r} cannot train on {loaded.name!r}: {error}") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way, or no permission
        raise ConfigError(
            f"Cannot use {str(out_dir)!r} as the bench's --out folder: {error.strerror or error}."
        ) from None
    started = time.time()
    speed, update_speed = machine_speed(), training_speed()  # on idle cores, before the runs start
    results: list[dict[str, Any]] = []
    shown: set[tuple[str, str]] = set()
    with tqdm(total=len(work), unit="run", desc="bench", disable=not progress, dynamic_ncols=True) as bar:

        def collect(result: dict[str, Any]) -> None:
            _show_new_warnings(result, shown)
            results.append(result)
            bar.update()

        if jobs == 1:
            for job in work:
                collect(_run_job(job))
        else:
            # fork keeps the imported code (fast start), but where CUDA is present a forked child of a
            # process that has touched it fails ("CUDA error: initialization error") or hangs (both seen
            # on an H100 machine): spawn there
            method = "spawn" if th.cuda.is_available() else "fork"
            with multiprocessing.get_context(method).Pool(jobs) as pool:
                for result in pool.imap(_run_job, work, chunksize=1):
                    collect(result)
    failed = [r for r in results if "error" in r]
    references = {(r["seed"], r["reference_task"]): r["auc"] for r in results if "reference_task" in r}
    results = [r for r in results if "error" not in r and "reference_task" not in r]
    if reference:
        agent_jobs = {(job.agent, job.seed): job for job in work if job.reference_task is None}
        for result in results:
            keys = [(result["seed"], index) for index in first_of_kind]
            if all(key in references for key in keys):  # a failed reference is reported with the failed runs
                runner = _runner(agent_jobs[result["agent"], result["seed"]])
                aucs = [references[key] for key in keys]
                result["metrics"] = runner.record_forward_transfer(RunResult.load(runner.run_dir), aucs)
    rows = summarise_results(results, [Path(a).stem for a in agents])
    write_tables(
        out_dir,
        rows,
        loaded.name,
        curriculum,
        agents,
        seeds,
        steps_per_task,
        failed,
        reference_agent if reference else None,
        eval_episodes,
        elapsed_s=time.time() - started,
        jobs=jobs,
        reused=sum(bool(r.get("reused")) for r in results),
        machine_steps_per_s=speed,
        machine_updates_per_s=update_speed,
    )
    if results:
        plot_results(out_dir, results, loaded.task_names)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return out_dir


def summarise_results(results: list[dict[str, Any]], agents: list[str]) -> list[dict[str, Any]]:
    rows = []
    for agent in agents:
        runs = [r for r in results if Path(r["agent"]).stem == agent]
        if not runs:
            continue
        row: dict[str, Any] = {"agent": agent, "seeds": len(runs)}
        for key in ("average_performance", "forgetting", "forward_transfer"):
            row[key] = bootstrap_ci([r["metrics"].get(key) for r in runs])
        row["plasticity"] = bootstrap_ci([_plasticity(r["metrics"]) for r in runs])
        timed = [r for r in runs if r["wall_time_s"] > 0] or [{"wall_time_s": np.nan, "env_steps": np.nan}]
        row["wall_time_s"] = float(np.mean([r["wall_time_s"] for r in timed]))
        row["steps_per_s"] = float(np.mean([r["env_steps"] / r["wall_time_s"] for r in timed]))
        rows.append(row)
    return rows


def _ci(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def write_tables(
    out_dir: Path,
    rows: list[dict[str, Any]],
    name: str,
    curriculum: str,
    agents: list[str],
    seeds: int,
    steps_per_task: int | None,
    failed: list[dict[str, Any]],
    reference_agent: str | None,
    eval_episodes: int | None = None,
    elapsed_s: float = float("nan"),
    jobs: int = 1,
    reused: int = 0,
    machine_steps_per_s: float = float("nan"),
    machine_updates_per_s: float = float("nan"),
) -> None:
    info = versions()
    command = f"sparc-rl bench --curriculum {curriculum} --agents {','.join(agents)} --seeds {seeds}"
    if steps_per_task:
        command += f" --steps-per-task {steps_per_task}"
    if eval_episodes:
        command += f" --eval-episodes {eval_episodes}"
    if reference_agent is None:
        command += " --no-reference"
    elif reference_agent != agents[0]:
        command += f" --reference-agent {reference_agent}"
    transfer = (
        f"Forward transfer: own-stage AUC against `{Path(reference_agent).stem}` trained from scratch on each task "
        "(same budget and seed), `(AUC - AUC_ref) / (1 - AUC_ref)`."
        if reference_agent
        else "Forward transfer: not measured (`--no-reference`)."
    )
    lines = [
        f"# Continual benchmark: {name}",
        "",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Machine: {os.cpu_count()} CPU cores, "
        f"{info['platform']}, torch {info['torch']}. Command: `{command}`.",
        "",
        f"Bench wall time: {elapsed_s / 60:.1f} min (parallel jobs: {jobs}"
        + (f"; finished runs reused from an earlier invocation: {reused})." if reused else ").")
        + f" Machine speed at the start: {machine_steps_per_s:.0f} env steps/s on stock MiniGrid DoorKey-5x5 with "
        "random actions (8 envs; the design brief's table: about 10,000), and "
        f"{machine_updates_per_s:.0f} recurrent updates/s of stock torch on one thread (`training_speed()`).",
        "",
        "Mean and 90% bootstrap interval over seeds. Plasticity = fraction of tasks reaching 0.9 success in "
        "their own stage. No task id is given to any agent at evaluation. " + transfer,
        "",
        "| agent | seeds | avg performance | forgetting | forward transfer | plasticity | wall time (s) "
        "| env steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    csv = ["agent,seeds,metric,mean,low,high"]
    for row in rows:
        lines.append(
            f"| {row['agent']} | {row['seeds']} | {_ci(row['average_performance'])} | {_ci(row['forgetting'])} | "
            f"{_ci(row['forward_transfer'])} | {_ci(row['plasticity'])} | {row['wall_time_s']:.0f} | "
            f"{row['steps_per_s']:.0f} |"
        )
        for key in ("average_performance", "forgetting", "forward_transfer", "plasticity"):
            mean, low, high = row[key]
            csv.append(f"{row['agent']},{row['seeds']},{key},{mean:.4f},{low:.4f},{high:.4f}")
        csv.append(f"{row['agent']},{row['seeds']},wall_time_s,{row['wall_time_s']:.1f},,")
        csv.append(f"{row['agent']},{row['seeds']},env_steps_per_s,{row['steps_per_s']:.1f},,")
    lines += [f"\n**Run failed**: {r['agent']} seed {r['seed']}: {r['error']}" for r in failed]
    lines += ["", "![retention curves](retention_curves.png)", "", "![score matrices](score_matrices.png)"]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "results.csv", "\n".join(csv) + "\n")


def plot_results(out_dir: Path, results: list[dict[str, Any]], tasks: list[str]) -> None:
    import matplotlib.pyplot as plt

    agents = sorted({Path(r["agent"]).stem for r in results})
    fig, axes = plt.subplots(1, len(agents), figsize=(4 * len(agents), 3.2), squeeze=False, sharey=True)
    mats, mat_axes = plt.subplots(1, len(agents), figsize=(3.2 * len(agents), 3.2), squeeze=False)
    for column, agent in enumerate(agents):
        runs = [r for r in results if Path(r["agent"]).stem == agent]
        curves = np.array([[row[2] for row in r["history"]] for r in runs])  # seeds x evals x tasks
        mean = curves.mean(axis=0)
        ax = axes[0, column]
        for j, task in enumerate(tasks):
            ax.plot(mean[:, j], label=task)
        ax.set_title(agent)
        ax.set_xlabel("evaluation")
        ax.set_ylim(-0.05, 1.05)
        matrix = np.mean([r["metrics"]["matrix"] for r in runs], axis=0)
        mat_axes[0, column].imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        mat_axes[0, column].set_title(agent)
        mat_axes[0, column].set_xticks(range(len(tasks)), tasks, rotation=60, fontsize=6)
        mat_axes[0, column].set_yticks(range(len(tasks)), tasks, fontsize=6)
    axes[0, 0].set_ylabel("success rate")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    mats.tight_layout()
    fig.savefig(out_dir / "retention_curves.png", dpi=90)
    mats.savefig(out_dir / "score_matrices.png", dpi=90)
    plt.close(fig)
    plt.close(mats)
