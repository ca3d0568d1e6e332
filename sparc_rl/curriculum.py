"""Curricula as data: ordered tasks (env id, kwargs, wrappers, budget) validated on load."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import FlattenObservation

from sparc_rl.config import (
    builtin_names,
    check_keys,
    check_settings,
    file_safe_name,
    import_named_module,
    read_yaml_mapping,
    resolve_file,
)
from sparc_rl.envs import WRAPPERS
from sparc_rl.envs.minigrid_view import OneHotPartialObs, install_fast_view
from sparc_rl.errors import ConfigError
from sparc_rl.space_checks import check_flat_observations, describe_space

BOUNDARY_MODES = ("announced", "hidden")
CURRICULUM_KEYS = {"name", "description", "boundary", "eval_episodes", "eval_every", "algorithm_kwargs", "tasks"}
# PPO settings a curriculum may fix for every agent trained on it (both algorithms take them)
CURRICULUM_ALGORITHM_KEYS = {
    "n_steps",
    "batch_size",
    "n_epochs",
    "learning_rate",
    "ent_coef",
    "vf_coef",
    "gamma",
    "gae_lambda",
    "clip_range",
    "max_grad_norm",
}
TASK_KEYS = {"name", "env", "kwargs", "wrappers", "steps"}
# Wrappers a curriculum can name: the package's own, gymnasium's flattening and minigrid's one-hot view
# (one-hot cells make "which objects and colours are in view" a direction in observation space),
# vectorised.
NAMED_WRAPPERS: dict[str, Any] = {
    **WRAPPERS,
    "flatten-observation": FlattenObservation,
    "minigrid-one-hot": OneHotPartialObs,
}


@dataclass(frozen=True)
class WrapperSpec:
    """A wrapper by name with its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a curriculum.

    :param name: unique name, used in logs and tags
    :param env_id: registered Gymnasium id, or ``"module:EnvId"`` to import the module that registers it
    :param kwargs: keyword arguments for ``gym.make``
    :param wrappers: wrappers applied in order
    :param steps: training budget in env steps
    """

    name: str
    env_id: str
    kwargs: dict[str, Any]
    wrappers: tuple[WrapperSpec, ...]
    steps: int

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        kwargs = dict(self.kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        env = gym.make(self.env_id, **kwargs)
        install_fast_view(env)
        for wrapper in self.wrappers:
            env = NAMED_WRAPPERS[wrapper.name](env, **wrapper.kwargs)
        return env


@dataclass(frozen=True)
class Curriculum:
    """An ordered list of tasks with how boundaries are handled and how often all tasks are evaluated.

    :param boundary: ``announced`` (the agent is told when a task ends: it consolidates) or ``hidden``
        (the agent is not told; SPARC must detect novelty itself)
    :param eval_every: evaluations per task stage (every ``steps / eval_every`` steps)
    :param algorithm_kwargs: PPO settings every agent trains with on this curriculum (as RL Zoo's
        per-environment hyperparameters); they override the agent's own
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    boundary: str = "announced"
    description: str = ""
    eval_episodes: int = 20
    eval_every: int = 10
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def with_steps_per_task(self, steps: int) -> Curriculum:
        """The same curriculum with every task's budget set to ``steps``."""
        if steps <= 0:
            raise ConfigError(f"--steps-per-task must be positive, got {steps}.")
        return dataclasses.replace(self, tasks=tuple(dataclasses.replace(t, steps=steps) for t in self.tasks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "boundary": self.boundary,
            "eval_episodes": self.eval_episodes,
            "eval_every": self.eval_every,
            "algorithm_kwargs": self.algorithm_kwargs,
            "tasks": [
                {
                    "name": t.name,
                    "env": t.env_id,
                    "kwargs": t.kwargs,
                    "wrappers": [{"name": w.name, "kwargs": w.kwargs} for w in t.wrappers],
                    "steps": t.steps,
                }
                for t in self.tasks
            ],
        }


def list_curricula() -> list[str]:
    return builtin_names("envs")


def load_curriculum(name_or_path: str | Path, check_spaces: bool = True) -> Curriculum:
    """Load and validate a built-in curriculum by name or a YAML file by path.

    :raises ConfigError: with one message saying what is wrong and how to fix it
    """
    path = resolve_file(name_or_path, "envs", "curriculum")
    curriculum = parse_curriculum(read_yaml_mapping(path, "Curriculum"), str(path))
    if check_spaces:
        check_task_spaces(curriculum)
    return curriculum


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: '{key}' must be a positive integer, got {value!r}.")
    return value


def _parse_wrapper(entry: Any, where: str) -> WrapperSpec:
    kwargs: Any
    if isinstance(entry, str):
        name, kwargs = entry, {}
    elif isinstance(entry, dict) and "name" in entry and set(entry) <= {"name", "kwargs"}:
        name, kwargs = entry["name"], entry.get("kwargs") or {}
    else:
        raise ConfigError(f"{where}: a wrapper is a name or a mapping with 'name' and 'kwargs', got {entry!r}.")
    if name not in NAMED_WRAPPERS:
        raise ConfigError(f"{where}: unknown wrapper {name!r}; choose from {sorted(NAMED_WRAPPERS)}.")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: kwargs of wrapper {name!r} must be a mapping, got {kwargs!r}.")
    return WrapperSpec(name, dict(kwargs))


def check_env_id(env_id: Any, where: str) -> str:
    """Check that ``env_id`` names a registered env. Gymnasium's ``"module:EnvId"`` form is imported
    first (the module registers its envs when imported), so curricula can name the user's own envs."""
    import sparc_rl  # noqa: F401  (registers the SparcRL/ envs)

    if not isinstance(env_id, str):
        raise ConfigError(f"{where}: the env id must be text, got {env_id!r}.")
    module, _, name = env_id.rpartition(":")
    if module:
        import_named_module(module, env_id, where)
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else " See gymnasium.pprint_registry() for the ids."
        registers = f" (importing {module!r} did not register it)" if module else ""
        raise ConfigError(f"{where}: unknown env id {name!r}{registers}.{hint}")
    return env_id


def parse_curriculum(data: dict[str, Any], source: str = "<dict>") -> Curriculum:
    """Validate a curriculum mapping (as read from YAML) into a :class:`Curriculum`."""
    where = f"Curriculum {source}"
    check_keys(data, CURRICULUM_KEYS, {"name", "tasks"}, where)
    boundary = data.get("boundary", "announced")
    if boundary not in BOUNDARY_MODES:
        raise ConfigError(f"{where}: 'boundary' must be one of {list(BOUNDARY_MODES)}, got {boundary!r}.")
    raw_tasks = data["tasks"]
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ConfigError(f"{where}: 'tasks' must be a non-empty list.")
    tasks = []
    for index, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: task {index} must be a mapping, got {raw!r}.")
        task_where = f"{where}, task {raw.get('name', index)!r}"
        check_keys(raw, TASK_KEYS, {"name", "env", "steps"}, task_where)
        kwargs = raw.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{task_where}: 'kwargs' must be a mapping, got {kwargs!r}.")
        wrappers = raw.get("wrappers") or []
        if not isinstance(wrappers, list):
            raise ConfigError(f"{task_where}: 'wrappers' must be a list.")
        tasks.append(
            TaskSpec(
                name=file_safe_name(raw["name"], task_where, "the task name"),
                env_id=check_env_id(raw["env"], task_where),
                kwargs=dict(kwargs),
                wrappers=tuple(_parse_wrapper(w, task_where) for w in wrappers),
                steps=_positive_int(raw["steps"], task_where, "steps"),
            )
        )
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{where}: task names must be unique, repeated: {duplicates}.")
    algorithm_kwargs = data.get("algorithm_kwargs") or {}
    if not isinstance(algorithm_kwargs, dict):
        raise ConfigError(f"{where}: 'algorithm_kwargs' must be a mapping, got {algorithm_kwargs!r}.")
    unknown = sorted(set(algorithm_kwargs) - CURRICULUM_ALGORITHM_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: 'algorithm_kwargs' cannot set {unknown}; a curriculum may set "
            f"{sorted(CURRICULUM_ALGORITHM_KEYS)} (other settings belong in the agent file)."
        )
    from sparc_rl.ppo import SparcPPO  # both algorithms take these settings, with the same types

    check_settings(algorithm_kwargs, SparcPPO, set(), f"{where}: algorithm_kwargs")
    return Curriculum(
        name=file_safe_name(data["name"], where, "the curriculum's name"),
        tasks=tuple(tasks),
        boundary=boundary,
        description=str(data.get("description", "")),
        eval_episodes=_positive_int(data.get("eval_episodes", 20), where, "eval_episodes"),
        eval_every=_positive_int(data.get("eval_every", 10), where, "eval_every"),
        algorithm_kwargs=dict(algorithm_kwargs),
        source=source,
    )


def check_task_spaces(curriculum: Curriculum) -> None:
    """Build each task's env once and check all tasks share observation and action spaces."""
    first: tuple[str, gym.Space, gym.Space] | None = None
    for task in curriculum.tasks:
        try:
            env = task.make_env()
        except Exception as error:  # a bad kwarg or wrapper setting: report it against the task
            raise ConfigError(
                f"Curriculum {curriculum.name!r}, task {task.name!r}: cannot build the env: {error}"
            ) from None
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
        if first is None:
            try:
                check_flat_observations(obs_space)
            except ConfigError as error:
                raise ConfigError(f"Curriculum {curriculum.name!r}, task {task.name!r}: {error}") from None
            first = (task.name, obs_space, act_space)
            continue
        name, first_obs, first_act = first
        if obs_space != first_obs:
            raise ConfigError(
                f"Curriculum {curriculum.name!r}: task {task.name!r} has observation space "
                f"{describe_space(obs_space)} but task {name!r} has {describe_space(first_obs)}; "
                "add wrappers (e.g. minigrid-image) so every task shares one space."
            )
        if act_space != first_act:
            raise ConfigError(
                f"Curriculum {curriculum.name!r}: task {task.name!r} has action space "
                f"{describe_space(act_space)} but task {name!r} has {describe_space(first_act)}; "
                "add wrappers (e.g. minigrid-image) so every task shares one space."
            )
