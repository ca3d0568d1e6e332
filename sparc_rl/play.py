"""Run a saved policy in a registered env for a few episodes, optionally recording an animation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import gymnasium as gym

from sparc_rl.curriculum import NAMED_WRAPPERS, TaskSpec, check_env_id, load_curriculum
from sparc_rl.errors import ConfigError
from sparc_rl.inference import SparcAgent
from sparc_rl.io import task_of_checkpoint


def make_play_env(env_id: str, env_kwargs: dict[str, Any], wrappers: list[str], render_mode: str | None) -> gym.Env:
    check_env_id(env_id, "--env")
    unknown = [w for w in wrappers if w not in NAMED_WRAPPERS]
    if unknown:
        raise ConfigError(f"Unknown wrapper(s) {unknown}; choose from {sorted(NAMED_WRAPPERS)}.")
    try:
        env = gym.make(env_id, render_mode=render_mode, **env_kwargs)
    except Exception as error:  # a bad kwarg name or value: the env's own reason, not a traceback
        raise ConfigError(f"Cannot make {env_id!r} with kwargs {env_kwargs}: {error}") from None
    for name in wrappers:
        try:
            env = NAMED_WRAPPERS[name](env)
        except TypeError as error:  # a wrapper that needs settings, which --wrappers cannot give
            raise ConfigError(
                f"Wrapper {name!r} needs settings ({error}); play a curriculum task with its wrappers "
                "and their settings instead: --task NAME."
            ) from None
    return env


def task_for_checkpoint(model_path: str | Path, task_name: str | None, curriculum: str | Path | None) -> TaskSpec:
    """The curriculum task to play a checkpoint in: ``task_name`` (default: the task a
    ``task-<i>-<name>.zip`` checkpoint ended) of ``curriculum`` (default: the run's)."""
    from sparc_rl.runner import run_curriculum

    loaded = load_curriculum(curriculum) if curriculum is not None else run_curriculum(model_path)
    if loaded is None:
        raise ConfigError(
            f"{str(model_path)!r} is not in a run folder (RUN_DIR/checkpoints/): give --env, or --task "
            "with --curriculum."
        )
    if task_name is None:
        index = task_of_checkpoint(Path(model_path))
        if index is None or index >= len(loaded.tasks):
            raise ConfigError(f"Name the task to play with --task: one of {loaded.task_names}.")
        return loaded.tasks[index]
    for task in loaded.tasks:
        if task.name == task_name:
            return task
    raise ConfigError(f"Curriculum {loaded.name!r} has no task {task_name!r}; its tasks: {loaded.task_names}.")


def play(
    model_path: str | Path,
    env_id: str | None,
    episodes: int,
    env_kwargs: dict[str, Any],
    wrappers: list[str],
    record: str | None = None,
    seed: int = 0,
    deterministic: bool = True,
    task: str | None = None,
    curriculum: str | Path | None = None,
) -> list[float]:
    """Episode returns of the policy; frames go to ``record`` (.gif or .mp4) when given.

    :param env_id: the env to play in, with ``env_kwargs`` and ``wrappers``; ``None``: a curriculum
        task's env, as :func:`task_for_checkpoint` finds it from ``task`` and ``curriculum``
    """
    if episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}.")
    if seed < 0:
        raise ConfigError(f"--seed must not be negative, got {seed}.")
    if record is not None and Path(record).suffix not in (".gif", ".mp4"):
        raise ConfigError(f"--record must end in .gif or .mp4, got {record!r}.")
    if record is not None and not Path(record).resolve().parent.is_dir():
        raise ConfigError(f"--record {record!r}: its folder does not exist; create it first or record elsewhere.")
    if record is not None and record.endswith(".mp4") and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ConfigError(
            f"--record {record!r}: writing .mp4 needs imageio's ffmpeg plugin: pip install imageio-ffmpeg "
            "(or record a .gif, which always works)."
        )
    render_mode = "rgb_array" if record else None
    if env_id is not None:
        if task is not None or curriculum is not None:
            raise ConfigError("Give --env (with --env-kwargs and --wrappers) or --task (with --curriculum), not both.")
        env = make_play_env(env_id, env_kwargs, wrappers, render_mode)
    else:
        if env_kwargs or wrappers:
            raise ConfigError("--env-kwargs and --wrappers go with --env; a --task brings its own.")
        env = task_for_checkpoint(model_path, task, curriculum).make_env(render_mode)
    agent = SparcAgent.load(model_path, env=env, deterministic=deterministic)
    frames: list[Any] = []
    returns: list[float] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        agent.reset()
        total, done = 0.0, False
        while not done:
            if record:
                frames.append(env.render())
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    if record:
        import imageio.v2 as imageio

        try:
            imageio.mimsave(record, frames, duration=0.1) if record.endswith(".gif") else imageio.mimsave(
                record, frames, fps=10
            )
        except (ValueError, RuntimeError, ImportError, OSError) as error:
            reason = " ".join(str(error).split())  # one line: imageio's messages span several
            raise ConfigError(f"Cannot write {record!r}: {reason}") from None
    return returns
