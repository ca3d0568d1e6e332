"""Continual training runner: trains one agent through a curriculum, evaluating every task as it goes.

A run directory holds::

    config.json        resolved curriculum, agent, seed, command and package versions
    state.json         progress (stage, steps, evaluation history): the commit point for --resume
    checkpoints/       task-<i>-<name>.zip at each task end, step-<n>.zip at each evaluation with
                       step-<n>.snapshot.pkl (random generators, training envs, recurrent state)
    tb/                one TensorBoard run (per-task scores, continual metrics, SPARC internals, figures)
    metrics.json, retention.csv, retention.png, learning_curves.png, report.md

Typical use::

    from sparc_rl.runner import ContinualRunner
    result = ContinualRunner("cartpole-drift", "sparc", steps_per_task=20_000, seed=0).run()
    print(result.metrics["average_performance"])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Figure, Logger, TensorBoardOutputFormat, configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from tqdm.auto import tqdm

from sparc_rl import metrics as metric_fns
from sparc_rl.agents import AgentSpec, load_agent, parse_agent
from sparc_rl.curriculum import Curriculum, TaskSpec, check_task_spaces, load_curriculum, parse_curriculum
from sparc_rl.errors import CheckpointError, ConfigError, RunStoppedError, TrainingDivergedError
from sparc_rl.evaluation import evaluate_curriculum, evaluate_task
from sparc_rl.inference import check_spaces, load_saved_model
from sparc_rl.io import (
    atomic_write_json,
    atomic_write_text,
    check_checkpoint_file,
    save_model_atomically,
    task_checkpoint_path,
    versions,
)
from sparc_rl.plugins import NoveltyBoundaryDetector
from sparc_rl.ppo import SparcPPO
from sparc_rl.reporting import learning_curve_figure, retention_figure, write_report
from sparc_rl.snapshot import load_snapshot, restore_snapshot, save_snapshot, snapshot_path

STATE_VERSION = 1
#: the largest run seed: the seeds derived from it for each task's training and evaluation
#: (``seed * 10007 + ...``) must stay below 2**32 for numpy
MAX_SEED = 400_000
#: how the training envs of a run are stepped: one after another in this process (SB3's DummyVecEnv),
#: or each in its own process (SubprocVecEnv, meant for slow envs on machines with cores to spare; the
#: same results)
VEC_ENVS: dict[str, type[DummyVecEnv] | type[SubprocVecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
HistoryRow = tuple[int, int, list[float]]


@dataclass
class RunState:
    """Progress of a run; saved atomically with a checkpoint at every evaluation."""

    stage: int = 0
    steps_in_stage: int = 0
    history: list[HistoryRow] = field(default_factory=list)
    returns_history: list[list[float]] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    checkpoint: str | None = None
    finished: bool = False
    #: training and evaluation time up to the last commit, summed over resumed sessions
    wall_time_s: float = 0.0
    env_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "stage": self.stage,
            "steps_in_stage": self.steps_in_stage,
            "history": [list(row) for row in self.history],
            "returns_history": self.returns_history,
            "matrix": self.matrix,
            "checkpoint": self.checkpoint,
            "finished": self.finished,
            "wall_time_s": self.wall_time_s,
            "env_steps": self.env_steps,
        }

    @classmethod
    def read(cls, path: Path) -> RunState:
        """:raise CheckpointError: naming ``path`` if it is damaged or from another version"""
        data = read_run_file(path)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{str(path)!r} is damaged ({_what_is_wrong(error)}); {RUN_FILE_FIX}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        if data.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"state.json has version {data.get('version')!r}; this sparc-rl reads {STATE_VERSION}."
            )
        return cls(
            stage=int(data["stage"]),
            steps_in_stage=int(data["steps_in_stage"]),
            history=[(int(s), int(n), [float(x) for x in scores]) for s, n, scores in data["history"]],
            returns_history=[[float(x) for x in row] for row in data["returns_history"]],
            matrix=[[float(x) for x in row] for row in data["matrix"]],
            checkpoint=data.get("checkpoint"),
            finished=bool(data.get("finished", False)),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            env_steps=int(data.get("env_steps", 0)),
        )


@dataclass
class RunResult:
    run_dir: Path
    tasks: list[str]
    matrix: list[list[float]]
    metrics: dict[str, Any]
    wall_time_s: float
    env_steps: int
    history: list[HistoryRow] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """The result of a finished run, read back from its directory."""
        run_dir = Path(run_dir)
        state = RunState.read(run_dir / "state.json")
        if not state.finished:
            raise CheckpointError(f"Run {str(run_dir)!r} has not finished; continue it with --resume {run_dir}.")
        metrics_path = run_dir / "metrics.json"
        metrics = read_run_file(metrics_path)
        if not isinstance(metrics.get("tasks"), list):
            raise CheckpointError(f"{str(metrics_path)!r} is damaged (no list of 'tasks'); {RUN_FILE_FIX}")
        return cls(run_dir, metrics["tasks"], state.matrix, metrics, state.wall_time_s, state.env_steps, state.history)


#: what to do about a damaged run file: the run cannot continue, but its checkpoints are intact
RUN_FILE_FIX = (
    "the run cannot continue: train it again in a new or emptied folder "
    "(its checkpoints/*.zip still load, with SparcPPO.load or sparc-rl eval)."
)


def read_run_file(path: Path) -> dict[str, Any]:
    """One of a run directory's JSON files, as a mapping.

    :raise CheckpointError: naming the file if it cannot be read or is not a JSON object
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} cannot be read ({_what_is_wrong(error)}); {RUN_FILE_FIX}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} is damaged (a JSON {type(data).__name__}, not an object); {RUN_FILE_FIX}")
    return data


def _what_is_wrong(error: Exception) -> str:
    return f"no {error}" if isinstance(error, KeyError) else str(error)


class _ProgressCallback(BaseCallback):
    """Moves the run's progress bar after each rollout."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.bar.update(self.num_timesteps - self.last)
        self.last = self.num_timesteps


def _checked_agent(agent: str | Path | AgentSpec | dict[str, Any]) -> AgentSpec:
    """An agent by preset name or file, as the dict its file holds, or built in Python: checked alike."""
    if isinstance(agent, AgentSpec):
        return parse_agent(agent.to_dict(), repr(agent.name))
    if isinstance(agent, dict):
        return parse_agent(agent)
    return load_agent(agent)


def default_run_dir(curriculum: str, agent: str, seed: int, root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{curriculum}-{agent}-seed{seed}-{stamp}"


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"Run directory {str(run_dir)!r} is a file; choose another --run-dir.")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"Run directory {str(run_dir)!r} already holds files; resume it with --resume {run_dir}, "
            "or choose another --run-dir."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"Cannot write to run directory {str(run_dir)!r}: {error.strerror or error}.") from None


class ContinualRunner:
    """Train one agent through a curriculum and measure what it keeps.

    :param curriculum: built-in name, path, a :class:`Curriculum`, or the dict a curriculum file holds
        (checked alike)
    :param agent: built-in name, path, an :class:`AgentSpec`, or the dict an agent file holds (checked alike)
    :param steps_per_task: overrides every task's budget
    :param seed: seeds the model, the training envs and the evaluation episodes (0 to :data:`MAX_SEED`)
    :param run_dir: output folder (default ``runs/<curriculum>-<agent>-seed<seed>-<time>``)
    :param eval_episodes: episodes per task per evaluation (default: the curriculum's)
    :param reference: also train single-task references (cached) so forward transfer is measured
    :param reference_agent: the agent trained from scratch on each task for those references, in any form
        ``agent`` takes (default: ``agent``; a benchmark gives every agent the same one, as Continual World does)
    :param progress: show a progress bar
    """

    def __init__(
        self,
        curriculum: str | Path | Curriculum | dict[str, Any] = "cartpole-drift",
        agent: str | Path | AgentSpec | dict[str, Any] = "sparc",
        steps_per_task: int | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
        eval_episodes: int | None = None,
        reference: bool = False,
        reference_agent: str | Path | AgentSpec | dict[str, Any] | None = None,
        progress: bool = True,
        command: str | None = None,
        vec_env: str = "dummy",
    ) -> None:
        # dicts as the files hold them, and objects built in Python, are checked as files are
        if isinstance(curriculum, Curriculum):
            curriculum = parse_curriculum(curriculum.to_dict(), curriculum.source or "<Curriculum>")
        elif isinstance(curriculum, dict):
            curriculum = parse_curriculum(curriculum)
        if isinstance(curriculum, Curriculum):
            check_task_spaces(curriculum)  # as load_curriculum does for a name or file
            self.curriculum = curriculum
        else:
            self.curriculum = load_curriculum(curriculum)
        if steps_per_task is not None:
            self.curriculum = self.curriculum.with_steps_per_task(steps_per_task)
        self.agent = _checked_agent(agent)
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed must be from 0 to {MAX_SEED}, got {seed}.")
        self.seed = seed
        self.eval_episodes = self.curriculum.eval_episodes if eval_episodes is None else eval_episodes
        if self.eval_episodes <= 0:
            raise ConfigError(f"--eval-episodes must be positive, got {self.eval_episodes}.")
        self.reference = reference
        self.reference_agent = self.agent if reference_agent is None else _checked_agent(reference_agent)
        self.progress = progress
        self.command = command or " ".join(shlex.quote(arg) for arg in sys.argv)
        if vec_env not in VEC_ENVS:
            raise ConfigError(f"--vec-env must be one of {list(VEC_ENVS)}, got {vec_env!r}.")
        self.vec_env = vec_env
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(self.curriculum.name, self.agent.name, seed)
        self.model: BaseAlgorithm | None = None
        self.state = RunState()
        self._resuming = False
        #: set when the training envs cannot be pickled: step snapshots are then skipped, with one warning
        self._snapshots_unavailable = False
        #: the last commit's snapshot, read before any file is written and applied when training resumes
        self._snapshot: dict[str, Any] | None = None
        self._env_stage = 0
        self._clock = time.time()

    # -- construction from a run directory ---------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True) -> ContinualRunner:
        """Continue an interrupted run from its last committed evaluation."""
        run_dir = Path(run_dir)
        config_path, state_path = run_dir / "config.json", run_dir / "state.json"
        if config_path.is_file() and not state_path.is_file():
            raise ConfigError(
                f"The run in {str(run_dir)!r} stopped before it started training (it has no state.json): "
                "there is nothing to resume; train it again in a new or emptied folder."
            )
        if not config_path.is_file() or not state_path.is_file():
            raise ConfigError(f"{str(run_dir)!r} is not a sparc-rl run directory (no config.json / state.json).")
        config, state = read_run_file(config_path), RunState.read(state_path)
        try:
            curriculum, agent = config["curriculum"], config["agent"]
            reference_agent = config.get("reference_agent")
            if not all(isinstance(data, dict) for data in (curriculum, agent, reference_agent or {})):
                raise TypeError("the curriculum and agents must be JSON objects")
            seed, eval_episodes = int(config["seed"]), int(config["eval_episodes"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{str(config_path)!r} is damaged ({_what_is_wrong(error)}); {RUN_FILE_FIX}"
            ) from None
        runner = cls(
            parse_curriculum(curriculum, curriculum.get("name", "run")),
            parse_agent(agent, agent.get("name", "run")),
            seed=seed,
            run_dir=run_dir,
            eval_episodes=eval_episodes,
            reference=bool(config.get("reference", False)),
            reference_agent=parse_agent(reference_agent, "reference agent") if reference_agent else None,
            progress=progress,
            command=config.get("command"),
            vec_env=config.get("vec_env", "dummy"),
        )
        runner.state = state
        runner._resuming = True
        return runner

    # -- helpers -------------------------------------------------------------------------------
    def _stage_seed(self, stage: int) -> int:
        """Seed of task ``stage``'s training envs and of the random draws while training on it."""
        return self.seed * 7919 + 101 * (stage + 1)

    def _make_train_env(self, stage: int) -> Any:
        task = self.curriculum.tasks[stage]
        return make_vec_env(
            task.make_env, n_envs=self.agent.n_envs, seed=self._stage_seed(stage), vec_env_cls=VEC_ENVS[self.vec_env]
        )

    def _eval_seed(self) -> int:
        return self.seed * 10007 + 1

    def experiment(self) -> dict[str, Any]:
        """What defines this run's results: curriculum, agent, seed and evaluation episodes (as saved in
        its ``config.json``)."""
        return json.loads(
            json.dumps(
                {
                    "curriculum": self.curriculum.to_dict(),
                    "agent": self.agent.to_dict(),
                    "seed": self.seed,
                    "eval_episodes": self.eval_episodes,
                }
            )
        )

    def _config(self) -> dict[str, Any]:
        return {
            **self.experiment(),
            "reference": self.reference,
            "reference_agent": self.reference_agent.to_dict(),
            "vec_env": self.vec_env,
            "command": self.command,
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _eval_points(self, budget: int, rollout: int) -> list[int]:
        """Steps into a stage at which every task is evaluated, rounded up to whole rollouts."""
        every = self.curriculum.eval_every
        return sorted({math.ceil(budget * k / every / rollout) * rollout for k in range(1, every + 1)})

    def _commit(self, model: BaseAlgorithm) -> None:
        """Checkpoint and its snapshot, then the state that points at them (the commit), then drop older
        step files."""
        checkpoint_dir = self.run_dir / "checkpoints"
        checkpoint = checkpoint_dir / f"step-{model.num_timesteps}.zip"
        save_model_atomically(model, checkpoint)
        snapshot = snapshot_path(checkpoint)
        if not self._snapshots_unavailable:
            self._snapshots_unavailable = not save_snapshot(model, snapshot)
        self.state.checkpoint = f"checkpoints/{checkpoint.name}"
        self._save_state(model)
        for old in checkpoint_dir.glob("step-*"):
            if old not in (checkpoint, snapshot):
                old.unlink(missing_ok=True)

    def _save_state(self, model: BaseAlgorithm) -> None:
        now = time.time()
        self.state.wall_time_s += now - self._clock
        self._clock = now
        self.state.env_steps = int(model.num_timesteps)
        atomic_write_json(self.run_dir / "state.json", self.state.to_dict())

    def _log_evaluation(
        self, logger: Logger, scores: dict[str, Any], diagnostics: dict[str, dict[str, float]], step: int
    ) -> None:
        for task, score in scores.items():
            logger.record(f"retention/{task}/success", score.success_rate)
            logger.record(f"retention/{task}/return", score.mean_return)
            gate = diagnostics.get(task, {}).get("gate_mean")
            if gate is not None:
                logger.record(f"sparc/gate_mean/{task}", gate)
        logger.dump(step)

    def _partial_metrics(self) -> dict[str, Any]:
        matrix = self.state.matrix
        if not matrix:
            return {}
        square = [row[: len(matrix)] for row in matrix]
        return metric_fns.summarise(square, [r for r in self.state.history if r[0] < len(matrix)])

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train through every task; on Ctrl-C write a final checkpoint and a partial report, then re-raise."""
        self._clock = time.time()
        if self._resuming and self.state.finished:
            raise ConfigError(f"Run {str(self.run_dir)!r} already finished; see its report.md.")
        created = not self._resuming and not self.run_dir.exists()
        if not self._resuming:
            _prepare_run_dir(self.run_dir)
        set_random_seed(self.seed)
        # before any file is written: a bad agent setting or checkpoint leaves the run directory as it was
        try:
            model = self._load_or_build_model()
        except Exception:
            if created:
                with contextlib.suppress(OSError):  # removed only while still empty
                    self.run_dir.rmdir()
            raise
        rollout = _rollout_size(model)
        short = [f"{task.name} ({task.steps})" for task in self.curriculum.tasks if task.steps < rollout]
        if short:
            warnings.warn(
                f"Budgets under one rollout ({rollout} env steps = n_steps x n_envs) train one whole rollout, "
                f"evaluated once: {', '.join(short)}.",
                stacklevel=2,
            )
        logger = configure(str(self.run_dir / "tb"), ["tensorboard"])
        _add_retention_charts(logger)
        model.set_logger(logger)
        self.model = model
        total = sum(task.steps for task in self.curriculum.tasks)
        done_before = sum(t.steps for t in self.curriculum.tasks[: self.state.stage]) + self.state.steps_in_stage
        bar = tqdm(total=total, initial=done_before, disable=not self.progress, unit="step", dynamic_ncols=True)
        if not self._resuming:
            atomic_write_json(self.run_dir / "config.json", self._config())
            # the first commit, of nothing trained yet: a stop after it resumes. Right before the try, so
            # a Ctrl-C once state.json exists always gets the final checkpoint and the partial report.
            self._save_state(model)
        try:
            for stage in range(self.state.stage, len(self.curriculum.tasks)):
                self._run_stage(stage, model, logger, bar)
            self.state.finished = True
            self._save_state(model)
        except FloatingPointError as error:
            bar.close()
            last = self.state.checkpoint or "none yet"
            raise TrainingDivergedError(
                f"Training stopped: {error} Last good checkpoint (before the fault): {last}; "
                f"lower the learning rate in the agent file, then start a new run or resume {self.run_dir}."
            ) from None
        except OSError as error:
            bar.close()
            where = traceback.extract_tb(error.__traceback__)[-1]
            raise RunStoppedError(
                f"The run stopped on {type(error).__name__}: {error} (at {where.filename}:{where.lineno}). Its "
                f"last committed evaluation is kept ({self.state.checkpoint or 'no checkpoint yet'}): fix the "
                f"cause, then continue with `sparc-rl train --resume {self.run_dir}`."
            ) from None
        except KeyboardInterrupt:
            bar.close()
            save_model_atomically(model, self.run_dir / "checkpoints" / "interrupted.zip")
            self._write_outputs(logger, partial=True)
            print(
                f"\nInterrupted: partial report in {self.run_dir / 'report.md'}; continue with "
                f"`sparc-rl train --resume {self.run_dir}`.",
                file=sys.stderr,
            )
            raise
        finally:
            if self.vec_env == "subproc":  # their processes end with them
                model.get_env().close()  # type: ignore[union-attr]
        bar.close()
        metrics = self._write_outputs(logger, partial=False)
        logger.close()
        return RunResult(
            self.run_dir,
            self.curriculum.task_names,
            self.state.matrix,
            metrics,
            self.state.wall_time_s,
            self.state.env_steps,
            self.state.history,
        )

    def _build_model(self, env: Any) -> BaseAlgorithm:
        return self.agent.build(
            env,
            seed=self.seed,
            hidden_boundaries=self.curriculum.boundary == "hidden",
            algorithm_overrides=self.curriculum.algorithm_kwargs,
        )

    def _device(self) -> str:
        """The torch device the agent trains on: as its settings and the curriculum's say, else the CPU."""
        return str({**self.agent.algorithm_kwargs, **self.curriculum.algorithm_kwargs}.get("device", "cpu"))

    def check_model(self) -> None:
        """Build the agent's model on the first task, as :meth:`run` would, and drop it: an agent whose
        settings or plugins refuse this curriculum (behaviour cloning on continuous actions) stops here,
        before anything is trained or written."""
        model = self._build_model(self._make_train_env(0))
        model.get_env().close()  # type: ignore[union-attr]

    def _load_or_build_model(self) -> BaseAlgorithm:
        stage = self.state.stage
        self._env_stage = min(stage, len(self.curriculum.tasks) - 1)
        env = self._make_train_env(self._env_stage)
        if self.state.checkpoint is None:
            return self._build_model(env)
        path = self.run_dir / self.state.checkpoint
        check_checkpoint_file(path)
        snapshot = snapshot_path(path)
        if self.state.steps_in_stage > 0 and snapshot.is_file():
            self._snapshot = load_snapshot(snapshot)
        try:
            model = self.agent.algorithm_class.load(path, env=env, device=self._device())
        except Exception as error:
            raise CheckpointError(f"Cannot load checkpoint {str(path)!r}: {error}") from None
        return model

    def _run_stage(self, stage: int, model: BaseAlgorithm, logger: Logger, bar: tqdm) -> None:
        task = self.curriculum.tasks[stage]
        announced = self.curriculum.boundary == "announced"
        resuming_inside = self.state.steps_in_stage > 0
        if stage != self._env_stage:
            previous = model.get_env()
            model.set_env(self._make_train_env(stage))
            if previous is not None:
                previous.close()  # subprocess envs would keep their processes
            self._env_stage = stage
        if not resuming_inside:
            # each task starts from its own seed, so a run resumed at a task boundary continues exactly
            # as the uninterrupted run would
            model.set_random_seed(self._stage_seed(stage))
        elif self._snapshot is not None:
            # inside a task, the snapshot of the last commit makes the rest of the task exact too
            restore_snapshot(model, self._snapshot)
            self._snapshot = None
        if announced and isinstance(model, SparcPPO) and not resuming_inside:
            model.start_task(task.name)
        callback = _ProgressCallback(bar)
        points = self._eval_points(task.steps, _rollout_size(model))
        recorded = {steps for row_stage, steps, _ in self.state.history if row_stage == stage}
        for point in points:
            if point in recorded:
                continue
            if point > self.state.steps_in_stage:
                stage_start = model.num_timesteps
                model.learn(point - self.state.steps_in_stage, callback=callback, reset_num_timesteps=False)
                self.state.steps_in_stage += model.num_timesteps - stage_start
            last = point == points[-1]
            if last and announced and isinstance(model, SparcPPO):
                consolidated = model.end_task(consolidate=self.agent.consolidate)
                logger.record(f"sparc/consolidated/{task.name}", float(consolidated))
            elif last and stage == len(self.curriculum.tasks) - 1 and _detects_boundaries(model):
                # training is over, which tells nothing of tasks: the skill being learned is closed as a
                # detected boundary would close it, or nothing would protect the last task
                logger.record(f"sparc/consolidated/{task.name}", float(model.close_skill()))
            scores, diagnostics = self._evaluate_all(model)
            success = [scores[name].success_rate for name in self.curriculum.task_names]
            self.state.history.append((stage, point, success))
            self.state.returns_history.append([scores[name].mean_return for name in self.curriculum.task_names])
            if last:
                self.state.matrix.append(success)
                # stages end on whole rollouts, past their budget: the bar's total follows, to end at 100%
                bar.total += self.state.steps_in_stage - task.steps
                self.state.stage, self.state.steps_in_stage = stage + 1, 0
                # before the commit, so a committed task end always has its checkpoint
                save_model_atomically(model, task_checkpoint_path(self.run_dir, stage, task.name))
            self._commit(model)
            self._log_evaluation(logger, scores, diagnostics, model.num_timesteps)
            if last and self.progress:  # one line per task that stays above the bar: retention as it goes
                bar.write(
                    f"after {task.name} ({stage + 1}/{len(self.curriculum.tasks)}): "
                    + ", ".join(f"{name} {s:.2f}" for name, s in zip(self.curriculum.task_names, success, strict=True))
                )
            bar.set_postfix_str(
                f"task {task.name} ({stage + 1}/{len(self.curriculum.tasks)}) " + " ".join(f"{s:.2f}" for s in success)
            )
        if isinstance(model, SparcPPO):
            for name, value in model.policy.diagnostics().items():
                logger.record(f"sparc/{name}", value)
        partial = self._partial_metrics()
        for key in ("average_performance", "forgetting", "backward_transfer"):
            if partial.get(key) is not None:
                logger.record(f"continual/{key}", partial[key])
        logger.dump(model.num_timesteps)

    def _evaluate_all(self, model: BaseAlgorithm) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        scores, diagnostics = {}, {}
        for index, task in enumerate(self.curriculum.tasks):
            if isinstance(model, SparcPPO):
                model.policy.diagnostics()  # restart the gate averages for this task
            scores[task.name] = evaluate_task(model, task, self.eval_episodes, self._eval_seed() + 1000 * index)
            if isinstance(model, SparcPPO):
                diagnostics[task.name] = model.policy.diagnostics()
        return scores, diagnostics

    # -- single-task references (forward transfer) ---------------------------------------------
    def reference_aucs(self) -> list[float]:
        """:meth:`reference_auc` of every task."""
        return [self.reference_auc(index) for index in range(len(self.curriculum.tasks))]

    def reference_auc(self, index: int) -> float:
        """Mean score of the reference agent trained from scratch on task ``index`` alone (its AUC),
        cached next to the run directory: a task that returns, or another run with the same reference
        agent and seed, reuses it."""
        task = self.curriculum.tasks[index]
        task_data = {k: v for k, v in self.curriculum.to_dict()["tasks"][index].items() if k != "name"}
        key_data = {
            "task": task_data,
            "agent": self.reference_agent.to_dict(),
            "algorithm_kwargs": self.curriculum.algorithm_kwargs,
            "seed": self.seed,
            "episodes": self.eval_episodes,
            "every": self.curriculum.eval_every,
            "versions": {k: v for k, v in versions().items() if k != "platform"},
        }
        key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
        cached = self.run_dir.parent / ".reference-cache" / f"{key}.json"
        if cached.is_file():
            try:
                return float(json.loads(cached.read_text())["auc"])
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                # a cache entry holds nothing that cannot be trained again
                warnings.warn(
                    f"Reference cache {str(cached)!r} is unreadable ({error}); training it again.", stacklevel=2
                )
        curve = self._train_reference(task, index)
        auc = float(np.mean([score for _, score in curve]))
        atomic_write_json(cached, {"task": task.name, "auc": auc, "curve": curve, "key": key_data})
        return auc

    def _train_reference(self, task: TaskSpec, index: int) -> list[tuple[int, float]]:
        """Train the reference agent on one task from scratch: (steps, success) at each evaluation."""
        env = make_vec_env(task.make_env, n_envs=self.reference_agent.n_envs, seed=self._stage_seed(index))
        model = self.reference_agent.build(env, seed=self.seed, algorithm_overrides=self.curriculum.algorithm_kwargs)
        model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes a /tmp folder per learn()
        curve = []
        done = 0
        for point in self._eval_points(task.steps, _rollout_size(model)):
            start = model.num_timesteps
            model.learn(point - done, reset_num_timesteps=False)
            done += model.num_timesteps - start
            score = evaluate_task(model, task, self.eval_episodes, self._eval_seed() + 1000 * index).success_rate
            curve.append((done, score))
        env.close()
        return curve

    def record_forward_transfer(self, result: RunResult, reference_aucs: Sequence[float]) -> dict[str, Any]:
        """The metrics of this finished run with its forward transfer against references trained
        elsewhere (one AUC per task, as :meth:`reference_aucs` gives), written to its ``metrics.json``,
        ``report.md`` and TensorBoard: how a benchmark measures every agent against the same references.
        A run whose ``metrics.json`` (``result.metrics``) already holds them (a bench run again) is left as it is."""
        metrics = {
            "tasks": result.tasks,
            "matrix": result.matrix,
            **metric_fns.summarise(result.matrix, result.history, reference_aucs),
            "partial": False,
        }
        stored = _json_safe(metrics)
        if result.metrics == json.loads(json.dumps(stored)):
            return metrics  # an earlier bench recorded it: TensorBoard would show the point twice
        atomic_write_json(self.run_dir / "metrics.json", stored)
        write_report(self.run_dir, self.curriculum, self.agent, self.seed, metrics, partial=False)
        logger = Logger(folder=None, output_formats=[TensorBoardOutputFormat(str(self.run_dir / "tb"))])
        logger.record("continual/forward_transfer", metrics["forward_transfer"])
        logger.dump(result.env_steps)  # at the run's last step, as its other end-of-run metrics
        logger.close()
        return metrics

    # -- outputs -------------------------------------------------------------------------------
    def _write_outputs(self, logger: Logger, partial: bool) -> dict[str, Any]:
        tasks = self.curriculum.task_names
        history = self.state.history
        if partial or len(self.state.matrix) < len(tasks):
            metrics = {**self._partial_metrics(), "partial": True}
        else:
            reference = self.reference_aucs() if self.reference else None
            metrics = metric_fns.summarise(self.state.matrix, history, reference)
            metrics["partial"] = False
        metrics = {"tasks": tasks, "matrix": self.state.matrix, **metrics}
        atomic_write_json(self.run_dir / "metrics.json", _json_safe(metrics))
        lines = ["stage,task_trained,steps_into_stage," + ",".join(tasks)]
        for stage, steps, scores in history:
            lines.append(f"{stage},{tasks[stage]},{steps}," + ",".join(f"{s:.4f}" for s in scores))
        atomic_write_text(self.run_dir / "retention.csv", "\n".join(lines) + "\n")
        heatmap = retention_figure(tasks, self.state.matrix)
        curves = learning_curve_figure(tasks, history, [t.steps for t in self.curriculum.tasks])
        heatmap.savefig(self.run_dir / "retention.png", dpi=100, bbox_inches="tight")
        curves.savefig(self.run_dir / "learning_curves.png", dpi=100, bbox_inches="tight")
        step = self.model.num_timesteps if self.model is not None else 0
        for key in ("average_performance", "forgetting", "backward_transfer", "forward_transfer"):
            if metrics.get(key) is not None:
                logger.record(f"continual/{key}", metrics[key])
        logger.record("retention/heatmap", Figure(heatmap, close=True), exclude=("stdout", "log", "json", "csv"))
        logger.record("retention/learning_curves", Figure(curves, close=True), exclude=("stdout", "log", "json", "csv"))
        logger.dump(step)
        write_report(self.run_dir, self.curriculum, self.agent, self.seed, metrics, partial)
        return metrics


def _add_retention_charts(logger: Logger) -> None:
    """TensorBoard's Custom Scalars dashboard: every task's success (and return, and SPARC's gate) in one
    chart each, where forgetting shows as one line falling while the next rises."""
    layout = {
        "retention": {
            "success of every task": ["Multiline", [r"retention/.*/success"]],
            "return of every task": ["Multiline", [r"retention/.*/return"]],
        },
        "continual": {"metrics so far": ["Multiline", [r"continual/.*"]]},
        "sparc": {"gate mean on every task": ["Multiline", [r"sparc/gate_mean/.*"]]},
    }
    for output in logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            output.writer.add_custom_scalars(layout)


def _detects_boundaries(model: BaseAlgorithm) -> TypeGuard[SparcPPO]:
    return isinstance(model, SparcPPO) and any(isinstance(plugin, NoveltyBoundaryDetector) for plugin in model.plugins)


def _rollout_size(model: BaseAlgorithm) -> int:
    """Env steps per rollout of an on-policy model (evaluations fall on whole rollouts)."""
    return int(model.n_steps) * model.n_envs  # type: ignore[attr-defined]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def run_curriculum(model_path: str | Path) -> Curriculum | None:
    """The curriculum of the run a checkpoint belongs to (``RUN_DIR/checkpoints/<name>.zip``, read from
    ``RUN_DIR/config.json``), or ``None`` for a checkpoint outside a run directory."""
    path = Path(model_path)
    config_path = path.parent.parent / "config.json"
    if path.parent.name != "checkpoints" or not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())["curriculum"]
        curriculum = parse_curriculum(data, str(config_path))
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as error:
        raise ConfigError(
            f"Cannot read the curriculum of the run {str(path.parent.parent)!r} from its config.json ({error}); "
            "name one with --curriculum."
        ) from None
    check_task_spaces(curriculum)
    return curriculum


def evaluate_saved_model(
    model_path: str | Path, curriculum: str | Path | Curriculum | None, episodes: int | None, seed: int
) -> tuple[Curriculum, dict[str, Any]]:
    """Load a saved model (SparcPPO, or RecurrentPPO's) and score it on every task of a curriculum.

    :param curriculum: a curriculum, its built-in name or file; ``None``: the one the checkpoint's run
        trained on (:func:`run_curriculum`), else ``cartpole-drift``
    """
    if episodes is not None and episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}.")
    if seed < 0:
        raise ConfigError(f"--seed must not be negative, got {seed}.")
    if isinstance(curriculum, Curriculum):
        loaded = curriculum
    elif curriculum is None:
        loaded = run_curriculum(model_path) or load_curriculum("cartpole-drift")
    else:
        loaded = load_curriculum(curriculum)
    path = Path(model_path)
    model = load_saved_model(path)
    task_env = loaded.tasks[0].make_env()
    try:
        check_spaces(model.observation_space, model.action_space, task_env)
    finally:
        task_env.close()
    return loaded, evaluate_curriculum(model, loaded, loaded.eval_episodes if episodes is None else episodes, seed)
