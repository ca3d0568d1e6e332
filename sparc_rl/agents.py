"""Agent presets as data: which algorithm, core, settings and continual plugins an agent uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from sparc_rl.config import (
    builtin_names,
    check_keys,
    check_settings,
    file_safe_name,
    import_named_module,
    read_yaml_mapping,
    resolve_file,
)
from sparc_rl.errors import ConfigError, SparcError
from sparc_rl.plugins import BehaviourCloning, ContinualPlugin, NoveltyBoundaryDetector, OnlineEWC
from sparc_rl.policies import MinigridCNN, SparcActorCriticPolicy, is_pixel_image

ALGORITHMS = ("sparc-ppo", "recurrent-ppo")
#: the algorithms' arguments that the agent's other fields or the runner give, not ``algorithm_kwargs``
SET_BY_THE_AGENT = {"policy", "env", "seed", "policy_kwargs", "plugins", "tensorboard_log"}
#: the policies' arguments that the algorithm gives, not ``policy_kwargs``
SET_BY_THE_ALGORITHM = {"observation_space", "action_space", "lr_schedule", "use_sde"}
PLUGINS: dict[str, type[ContinualPlugin]] = {
    "ewc": OnlineEWC,
    "behaviour-cloning": BehaviourCloning,
    "novelty-boundaries": NoveltyBoundaryDetector,
}
AGENT_KEYS = {
    "name",
    "description",
    "algorithm",
    "policy",
    "policy_kwargs",
    "algorithm_kwargs",
    "plugins",
    "n_envs",
    "consolidate",
}


@dataclass(frozen=True)
class AgentSpec:
    """An agent preset.

    :param algorithm: ``sparc-ppo`` or ``recurrent-ppo`` (sb3-contrib's, the external anchor)
    :param policy: a policy alias, or ``auto``: the CNN policy for image observations, else the MLP one
    :param policy_kwargs: passed to the policy (core, hidden size, slots, ...)
    :param algorithm_kwargs: passed to the algorithm (n_steps, batch_size, learning rate, ...)
    :param plugins: continual plugins by name with kwargs (``ewc``, ``behaviour-cloning``,
        ``novelty-boundaries``, or ``"module:ClassName"`` for your own)
    :param n_envs: parallel training envs
    :param consolidate: consolidate into memory at announced task ends
    """

    name: str
    description: str = ""
    algorithm: str = "sparc-ppo"
    policy: str = "auto"
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[tuple[str, dict[str, Any]], ...] = ()
    n_envs: int = 8
    consolidate: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "algorithm": self.algorithm,
            "policy": self.policy,
            "policy_kwargs": self.policy_kwargs,
            "algorithm_kwargs": self.algorithm_kwargs,
            "plugins": [{"name": name, "kwargs": kwargs} for name, kwargs in self.plugins],
            "n_envs": self.n_envs,
            "consolidate": self.consolidate,
        }

    def _policy_for(self, observation_space: spaces.Space) -> tuple[str | type[Any], dict[str, Any]]:
        is_image = (
            isinstance(observation_space, spaces.Box)
            and len(observation_space.shape) == 3
            and observation_space.dtype == np.uint8
        )
        kwargs = dict(self.policy_kwargs)
        if self.algorithm == "recurrent-ppo":
            if self.policy != "auto":
                return self.policy, kwargs
            from sparc_rl.lstm_policies import CnnLstmPolicy, MlpLstmPolicy

            if is_image:
                if not is_pixel_image(observation_space):  # sb3-contrib's defaults suit pixels, not grids
                    kwargs.setdefault("features_extractor_class", MinigridCNN)
                    kwargs.setdefault("normalize_images", False)
                return CnnLstmPolicy, kwargs
            return MlpLstmPolicy, kwargs
        if self.policy != "auto":
            return self.policy, kwargs
        return ("CnnSparcPolicy" if is_image else "MlpSparcPolicy"), kwargs

    def build(
        self,
        env: VecEnv,
        seed: int,
        tensorboard_log: str | None = None,
        hidden_boundaries: bool = False,
        algorithm_overrides: dict[str, Any] | None = None,
    ) -> BaseAlgorithm:
        """Create the model for ``env``. With ``hidden_boundaries``, a consolidating SPARC agent gets a
        :class:`NoveltyBoundaryDetector` (unless it lists one): nobody else will tell it when to consolidate.

        :param algorithm_overrides: settings that replace the agent's ``algorithm_kwargs`` (a curriculum's)
        """
        algorithm_kwargs = {**self.algorithm_kwargs, **(algorithm_overrides or {})}
        policy, policy_kwargs = self._policy_for(env.observation_space)
        if self.algorithm == "recurrent-ppo":
            # this package's checkpoints and speeds are CPU ones; SB3's "auto" would pick a GPU
            algorithm_kwargs.setdefault("device", "cpu")
        else:
            plugins = [plugin_class(name, f"Agent {self.name!r}")(**kwargs) for name, kwargs in self.plugins]
            detects = any(isinstance(plugin, NoveltyBoundaryDetector) for plugin in plugins)
            if hidden_boundaries and self.consolidate and policy_kwargs.get("core", "sparc") == "sparc" and not detects:
                plugins.append(NoveltyBoundaryDetector())
            algorithm_kwargs["plugins"] = plugins
        try:
            return self.algorithm_class(
                policy, env, seed=seed, policy_kwargs=policy_kwargs, tensorboard_log=tensorboard_log, **algorithm_kwargs
            )
        except SparcError:
            raise
        except (TypeError, ValueError) as error:  # a setting of the right type the algorithm rejects
            raise ConfigError(
                f"Agent {self.name!r}: the {self.algorithm} algorithm rejects its settings: {error}"
            ) from None

    @property
    def algorithm_class(self) -> type[BaseAlgorithm]:
        """SparcPPO, or sb3-contrib's RecurrentPPO."""
        return algorithm_class(self.algorithm)


def algorithm_class(algorithm: str) -> type[BaseAlgorithm]:
    """The class of one of :data:`ALGORITHMS`."""
    if algorithm == "recurrent-ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    from sparc_rl.ppo import SparcPPO

    return SparcPPO


def plugin_class(name: str, where: str) -> type[ContinualPlugin]:
    """A built-in plugin by name (:data:`PLUGINS`), or the user's own as ``"module:ClassName"`` (a
    subclass of :class:`~sparc_rl.plugins.ContinualPlugin`; the module is imported)."""
    module, _, class_name = name.rpartition(":")
    if not module:
        if name not in PLUGINS:
            raise ConfigError(
                f"{where}: unknown plugin {name!r}; choose from {sorted(PLUGINS)} or name your own "
                "ContinualPlugin subclass as 'module:ClassName'."
            )
        return PLUGINS[name]
    found = getattr(import_named_module(module, name, where), class_name, None)
    if not (isinstance(found, type) and issubclass(found, ContinualPlugin)):
        raise ConfigError(
            f"{where}: plugin {name!r} must name a subclass of sparc_rl.plugins.ContinualPlugin in {module!r}, "
            f"got {found!r}."
        )
    return found


def _policy_base(algorithm: str) -> type[Any]:
    """The policy class every policy of ``algorithm`` derives from (its settings are those)."""
    if algorithm == "recurrent-ppo":
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

        return RecurrentActorCriticPolicy
    return SparcActorCriticPolicy


def list_agents() -> list[str]:
    return builtin_names("agents")


def load_agent(name_or_path: str | Path) -> AgentSpec:
    """Load a built-in agent preset by name or a YAML file by path, validated."""
    path = resolve_file(name_or_path, "agents", "agent")
    return parse_agent(read_yaml_mapping(path, "Agent"), str(path))


def parse_agent(data: dict[str, Any], source: str = "<dict>") -> AgentSpec:
    where = f"Agent {source}"
    check_keys(data, AGENT_KEYS, {"name"}, where)
    algorithm = data.get("algorithm", "sparc-ppo")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{where}: 'algorithm' must be one of {list(ALGORITHMS)}, got {algorithm!r}.")
    for key in ("policy_kwargs", "algorithm_kwargs"):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"{where}: {key!r} must be a mapping.")
    check_settings(
        data.get("algorithm_kwargs") or {}, algorithm_class(algorithm), SET_BY_THE_AGENT, f"{where}: algorithm_kwargs"
    )
    check_settings(
        data.get("policy_kwargs") or {}, _policy_base(algorithm), SET_BY_THE_ALGORITHM, f"{where}: policy_kwargs"
    )
    plugins = []
    for entry in data.get("plugins") or []:
        name = entry if isinstance(entry, str) else entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"{where}: a plugin must be a name or a mapping with a 'name', got {entry!r}.")
        kwargs = entry.get("kwargs", {}) if isinstance(entry, dict) else {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: plugin {name!r}: 'kwargs' must be a mapping, got {kwargs!r}.")
        check_settings(kwargs, plugin_class(name, where), set(), f"{where}: plugin {name!r}")
        plugins.append((name, dict(kwargs)))
    if plugins and algorithm != "sparc-ppo":
        raise ConfigError(f"{where}: plugins need algorithm 'sparc-ppo'.")
    n_envs = data.get("n_envs", 8)
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs <= 0:
        raise ConfigError(f"{where}: 'n_envs' must be a positive integer, got {n_envs!r}.")
    return AgentSpec(
        name=file_safe_name(data["name"], where, "the agent's name"),
        description=str(data.get("description", "")),
        algorithm=algorithm,
        policy=str(data.get("policy", "auto")),
        policy_kwargs=dict(data.get("policy_kwargs") or {}),
        algorithm_kwargs=dict(data.get("algorithm_kwargs") or {}),
        plugins=tuple(plugins),
        n_envs=n_envs,
        consolidate=bool(data.get("consolidate", True)),
    )
