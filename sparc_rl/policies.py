"""Recurrent actor-critic policies with SPARC (or LSTM / GRU) cores for actor and critic."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sparc_rl.cores import MemoryReadout, RecurrentCore, SparcCore, make_core, unroll_together
from sparc_rl.errors import ConfigError

#: the smallest image side SB3's NatureCNN takes (8x8 stride 4, 4x4 stride 2, 3x3 stride 1)
NATURE_CNN_MIN_SIDE = 36


def is_pixel_image(observation_space: spaces.Space) -> bool:
    """Whether an image ``Box`` holds camera-like pixels (uint8, both sides at least
    :data:`NATURE_CNN_MIN_SIDE`) rather than a small grid of category indices such as MiniGrid's 7x7
    views (or floats, which NatureCNN refuses)."""
    if (
        not isinstance(observation_space, spaces.Box)
        or len(observation_space.shape) != 3
        or observation_space.dtype != np.uint8
    ):
        return False
    shape = observation_space.shape
    height, width = shape[1:] if is_image_space_channels_first(observation_space) else shape[:2]
    return min(height, width) >= NATURE_CNN_MIN_SIDE


class MinigridCNN(BaseFeaturesExtractor):
    """Small CNN for MiniGrid's egocentric grids (channels-first after SB3's transpose): 7x7 by
    default, also the smaller views of ``agent_view_size`` 3 or 5.

    SB3's ``NatureCNN`` needs at least 36x36 inputs; this one uses 2x2 kernels. Grids of side 7 and
    more are max-pooled after the first convolution; smaller ones skip the pooling, and the last
    convolutions a grid is too small for.

    :param observation_space: a channels-first image ``Box`` of shape ``(C, H, W)``, both sides at
        least 2
    :param features_dim: output size
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 64) -> None:
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        if len(shape) != 3:
            raise ConfigError(
                f"MinigridCNN takes images (C, H, W); got observations of shape {shape}: use an MLP policy."
            )
        # channels last: the smallest side last (SB3's own test, which moves only uint8 images' channels)
        if shape[2] < min(shape[:2]):
            raise ConfigError(
                f"MinigridCNN takes channels-first images (C, H, W); got shape {shape} "
                f"({observation_space.dtype}). SB3 moves only uint8 images' channels first: transpose "
                "others in the env, or use an MLP policy."
            )
        side = min(shape[1:])
        if side < 2:
            raise ConfigError(f"MinigridCNN needs images of at least 2x2 cells; got shape {shape}: use an MLP policy.")
        layers: list[nn.Module] = [nn.Conv2d(shape[0], 16, 2), nn.ReLU()]
        side -= 1
        if side >= 6:  # 7x7 views and up: 6 -> 3, which the two convolutions below still fit
            layers.append(nn.MaxPool2d(2))
            side //= 2
        for in_channels, out_channels in ((16, 32), (32, 64)):
            if side >= 2:
                layers += [nn.Conv2d(in_channels, out_channels, 2), nn.ReLU()]
                side -= 1
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        with th.no_grad():
            n_flat = self.cnn(th.zeros(1, *shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.cnn(observations))


def _check_finite(state: th.Tensor) -> None:
    if not th.isfinite(state).all():
        raise FloatingPointError(
            "Non-finite recurrent state (NaN/inf): check the env's observations and rewards, or lower the "
            "learning rate."
        )


def _as_tensor(features: th.Tensor | tuple[th.Tensor, th.Tensor]) -> th.Tensor:
    # SPARC policies share one features extractor, so SB3 returns a single tensor.
    assert isinstance(features, th.Tensor)
    return features


class SparcActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic policy whose actor and critic each run a recurrent core on the features.

    The recurrent state handed around is one array ``(n_envs, state_size)``: the actor core's state
    followed by the critic core's. ``predict`` returns it too, so it can be passed back in.

    :param observation_space: observation space
    :param action_space: action space
    :param lr_schedule: learning-rate schedule
    :param core: ``"sparc"`` (default), ``"lstm"`` or ``"gru"``
    :param hidden_size: output size of each core
    :param n_slots: memory slots of a SPARC core (ignored by other cores)
    :param core_kwargs: further settings of the core (see :class:`sparc_rl.cores.SparcCore`)
    :param protect_on_consolidate: freeze the features extractor and the action and value heads at
        the first consolidation, so what memory slots return keeps meaning the same action later
    :param net_arch: MLP layers after the core (default: none, the heads read the core directly)
    :param kwargs: the rest of ``ActorCriticPolicy``'s arguments
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        core: str = "sparc",
        hidden_size: int = 64,
        n_slots: int = 4,
        core_kwargs: dict[str, Any] | None = None,
        protect_on_consolidate: bool = True,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        **kwargs: Any,
    ) -> None:
        self.core_name = core
        self.hidden_size = hidden_size
        self.n_slots = n_slots
        self.core_kwargs = dict(core_kwargs or {})
        self.protect_on_consolidate = protect_on_consolidate
        if kwargs.get("optimizer_class", th.optim.Adam) is th.optim.Adam and kwargs.get("optimizer_kwargs") is None:
            # SB3's Adam (eps 1e-5) updating all parameters per operation: on the CPU torch would update
            # them one at a time, with the same results (the tests compare both) but more Python per step
            kwargs["optimizer_kwargs"] = {"eps": 1e-5, "foreach": True}
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch if net_arch is not None else [],
            features_extractor_class=features_extractor_class,
            **kwargs,
        )
        self.shared_protected: th.Tensor
        self.register_buffer("shared_protected", th.zeros((), dtype=th.bool))

    # -- building ------------------------------------------------------------------------------
    def _make_core(self, readout_size: int, readout_gain: float) -> RecurrentCore:
        kwargs = dict(self.core_kwargs)
        if self.core_name == "sparc":
            kwargs.setdefault("n_slots", self.n_slots)
            if self._trains_task_heads:
                kwargs.update(readout_size=readout_size, readout_gain=readout_gain)
        return make_core(self.core_name, self.features_dim, self.hidden_size, **kwargs)

    @property
    def _trains_task_heads(self) -> bool:
        """Whether each task after the first trains its own head through the frozen ones (the heads
        must read the cores directly)."""
        return self.protect_on_consolidate and self.core_name == "sparc" and not self.net_arch

    def _action_net_size(self) -> int:
        # the action net is built after the cores: ask the distribution what it would build
        net = self.action_dist.proba_distribution_net(latent_dim=self.hidden_size)
        head = net[0] if isinstance(net, tuple) else net
        assert isinstance(head, nn.Linear)
        return head.out_features

    def _build_mlp_extractor(self) -> None:
        if not self.share_features_extractor:
            raise ConfigError("SPARC policies share one features extractor; drop share_features_extractor=False.")
        # Each later task's heads: near-uniform action logits, as SB3 initialises an action head, and
        # a value of exactly zero. A gain-1 value head on the normalised output starts with values
        # of about +-1, and PPO then learns to avoid whatever ends episodes where they are high, the
        # goal included. Garden, seed 0, summer after spring: success fell from 0.28 to 0.04 in the
        # first 24k steps with gain 1 and rose to 0.53 with zero (0.42 from scratch).
        self.actor_core = self._make_core(self._action_net_size(), readout_gain=0.01)
        self.critic_core = self._make_core(1, readout_gain=0.0)
        features_dim, self.features_dim = self.features_dim, self.hidden_size
        super()._build_mlp_extractor()
        self.features_dim = features_dim

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_name,
            hidden_size=self.hidden_size,
            n_slots=self.n_slots,
            core_kwargs=self.core_kwargs,
            protect_on_consolidate=self.protect_on_consolidate,
        )
        return data

    @property
    def actor_state_size(self) -> int:
        return self.actor_core.state_size

    @property
    def state_size(self) -> int:
        """Size of the full recurrent state (actor then critic)."""
        return self.actor_core.state_size + self.critic_core.state_size

    def initial_state(self, n_envs: int) -> th.Tensor:
        return th.zeros(n_envs, self.state_size, device=self.device)

    # -- acting --------------------------------------------------------------------------------
    def _split_state(self, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return state[:, : self.actor_state_size], state[:, self.actor_state_size :]

    def forward_step(
        self, obs: PyTorchObs, state: th.Tensor, episode_start: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """One step for ``n_envs`` envs: actions, values, log-probs and the new state."""
        features = _as_tensor(self.extract_features(obs, self.features_extractor))
        state = state * (1.0 - episode_start).unsqueeze(-1)
        actor_state, critic_state = self._split_state(state)
        latent_pi, actor_state = self.actor_core.step(features, actor_state)
        latent_vf, critic_state = self.critic_core.step(features, critic_state)
        state = th.cat([actor_state, critic_state], dim=1)
        _check_finite(state)
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        latent_vf = self.mlp_extractor.forward_critic(latent_vf)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(latent_vf)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, state

    def predict_values_step(self, obs: PyTorchObs, state: th.Tensor, episode_start: th.Tensor) -> th.Tensor:
        """Critic value of ``obs`` given the state before it."""
        features = _as_tensor(self.extract_features(obs, self.features_extractor))
        critic_state = self._split_state(state * (1.0 - episode_start).unsqueeze(-1))[1]
        latent_vf, _ = self.critic_core.step(features, critic_state)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    def act_step(
        self, obs: PyTorchObs, state: th.Tensor, episode_start: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor]:
        """Actions and new state, running the actor only (the critic part of the state is kept)."""
        features = _as_tensor(self.extract_features(obs, self.features_extractor))
        state = state * (1.0 - episode_start).unsqueeze(-1)
        actor_state, critic_state = self._split_state(state)
        latent_pi, actor_state = self.actor_core.step(features, actor_state)
        _check_finite(actor_state)
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi))
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, th.cat([actor_state, critic_state], dim=1)

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: np.ndarray | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Action(s) for an observation (single or batched) and the next recurrent state.

        :param observation: observation, or a batch of them from a VecEnv
        :param state: state returned by the previous call (``None`` at the start)
        :param episode_start: per env, whether the observation starts a new episode
        :param deterministic: take the most likely action
        :return: actions and the new state, ``(n_envs, state_size)``
        """
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        n_envs = (obs_tensor[next(iter(obs_tensor))] if isinstance(obs_tensor, dict) else obs_tensor).shape[0]
        if state is None:
            state_tensor = self.initial_state(n_envs)
        else:
            state_tensor = th.as_tensor(np.asarray(state), dtype=th.float32, device=self.device).reshape(n_envs, -1)
            if state_tensor.shape[1] != self.state_size:
                raise ValueError(
                    f"state has {state_tensor.shape[1]} values per env, this policy needs {self.state_size}: "
                    "pass the state returned by the previous predict() call, or None to start."
                )
        starts = np.zeros(n_envs) if episode_start is None else np.asarray(episode_start, dtype=np.float32)
        start_tensor = th.as_tensor(starts, dtype=th.float32, device=self.device).reshape(n_envs)
        with th.inference_mode():
            actions_tensor, new_state = self.act_step(obs_tensor, state_tensor, start_tensor, deterministic)
        actions = actions_tensor.cpu().numpy().reshape((-1, *(self.action_space.shape or ())))
        if isinstance(self.action_space, spaces.Box):
            if self.squash_output:
                actions = self.unscale_action(actions)
            else:
                actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, new_state.cpu().numpy()

    # -- training ------------------------------------------------------------------------------
    def evaluate_sequences(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        readouts: tuple[MemoryReadout | None, MemoryReadout | None] = (None, None),
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values, log-probs and entropy of ``actions`` along a batch of sequences.

        :param obs: observations in time-major order, ``(time * batch, ...)``
        :param actions: actions in the same order
        :param state: state before the first step of each sequence, ``(batch, state_size)``
        :param episode_starts: ``(time, batch)``
        :param readouts: the actor's and critic's memory read-outs of these sequences, if already
            computed (see :meth:`read_memories`)
        """
        features = self._sequence_features(obs, episode_starts)
        cores, states = [self.actor_core, self.critic_core], list(self._split_state(state))
        (latent_pi, _), (latent_vf, _) = unroll_together(cores, features, states, episode_starts, list(readouts))
        latent_pi = self.mlp_extractor.forward_actor(latent_pi.reshape(-1, latent_pi.shape[-1]))
        latent_vf = self.mlp_extractor.forward_critic(latent_vf.reshape(-1, latent_vf.shape[-1]))
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def _sequence_features(self, obs: PyTorchObs, episode_starts: th.Tensor) -> th.Tensor:
        features = _as_tensor(self.extract_features(obs, self.features_extractor))
        return features.reshape(*episode_starts.shape, -1)

    def _actor_latents(self, features: th.Tensor, actor_state: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        latent_pi, _ = self.actor_core.unroll(features, actor_state, episode_starts)
        return self.mlp_extractor.forward_actor(latent_pi.reshape(-1, latent_pi.shape[-1]))

    @th.no_grad()
    def read_memories(
        self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor
    ) -> tuple[MemoryReadout | None, MemoryReadout | None]:
        """The actor's and critic's frozen-memory read-outs along sequences (``None`` without memory)."""
        features = self._sequence_features(obs, episode_starts)
        actor_state, critic_state = self._split_state(state)
        return (
            self.actor_core.read_memory(features, actor_state, episode_starts),
            self.critic_core.read_memory(features, critic_state, episode_starts),
        )

    def action_logits_sequences(self, obs: PyTorchObs, state: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        """Actor output before the distribution (logits or mean), time-major, for distillation."""
        features = self._sequence_features(obs, episode_starts)
        return self.action_net(self._actor_latents(features, self._split_state(state)[0], episode_starts))

    # -- continual learning --------------------------------------------------------------------
    @th.no_grad()
    def consolidate(self, obs: PyTorchObs, episode_starts: th.Tensor) -> tuple[int, int] | None:
        """Write the current skill into the memory of both cores, then protect the shared parts.

        :param obs: observations of the current task, time-major ``(time * n_envs, ...)``
        :param episode_starts: ``(time, n_envs)``
        :return: the actor's and the critic's slot written (for :meth:`start_from_skill`), ``None`` if
            memory was not written
        """
        features = self._sequence_features(obs, episode_starts)
        actor_slot = self.actor_core.consolidate(features, episode_starts)
        critic_slot = self.critic_core.consolidate(features, episode_starts)
        if self.protect_on_consolidate and self.core_name == "sparc":
            self.shared_protected.fill_(True)
            self._apply_protection()
            self._restart_outputs()
        self._forget_optimizer_state()
        if actor_slot is None or critic_slot is None:
            return None
        return actor_slot, critic_slot

    @th.no_grad()
    def start_from_skill(self, slots: tuple[int, int]) -> None:
        """Make the plastic paths trainable copies of a stored skill (the actor's and the critic's
        slot), with fresh optimiser moments: the next task starts from what that skill does."""
        for core, slot in zip((self.actor_core, self.critic_core), slots, strict=True):
            assert isinstance(core, SparcCore)
            core.start_from_slot(slot)
        self._forget_optimizer_state()

    @th.no_grad()
    def restore_plasticity(self) -> None:
        """Restart the SPARC cores' plastic paths as a consolidation does, without writing memory: for a
        task that ends unlearned, so the next task does not start from its half-trained plastic path
        (garden, seed 2: winter after an unlearned autumn stayed at 0.0 for 80k steps; 1.0 at 48k with it)."""
        if self.core_name != "sparc":
            return
        for core in (self.actor_core, self.critic_core):
            assert isinstance(core, SparcCore)
            core.restore_plasticity()
        if bool(self.shared_protected):
            self._restart_outputs()
        self._forget_optimizer_state()

    def _forget_optimizer_state(self) -> None:
        """Drop the optimiser's running moments of a restarted plastic path: they describe the last
        task's gradients, and Adam's stale second moments would shrink the first steps on the next."""
        for core in (self.actor_core, self.critic_core):
            if isinstance(core, SparcCore) and core.shrink < 1.0:
                for param in core.plastic_parameters():
                    self.optimizer.state.pop(param, None)

    def _restart_outputs(self) -> None:
        if self._trains_task_heads:
            for core, head in ((self.actor_core, self.action_net), (self.critic_core, self.value_net)):
                assert isinstance(core, SparcCore) and isinstance(head, nn.Linear)
                if bool(core.readout_attached):
                    core.restart_output()
                else:
                    core.attach_readout(head.weight, head.bias)

    def _apply_protection(self) -> None:
        if bool(self.shared_protected):
            for module in (self.features_extractor, self.action_net, self.value_net):
                module.requires_grad_(False)
        for core in (self.actor_core, self.critic_core):
            if isinstance(core, SparcCore) and core.task_head is not None:
                core.task_head.requires_grad_(bool(core.readout_attached))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._apply_protection()
        return result

    def diagnostics(self) -> dict[str, float]:
        """SPARC internals of the actor core (gate mean, router entropy, slot usage)."""
        return self.actor_core.diagnostics()


class MlpSparcPolicy(SparcActorCriticPolicy):
    """SPARC policy on flat (vector) observations."""


class CnnSparcPolicy(SparcActorCriticPolicy):
    """SPARC policy on images. Small grids such as MiniGrid's 7x7x3 views get :class:`MinigridCNN`,
    not divided by 255 (their cells hold small category indices); camera-like pixels (both sides at
    least 36) get SB3's ``NatureCNN`` on images divided by 255, as SB3's ``CnnPolicy`` does.

    :param features_extractor_class: ``None`` chooses by image size as above
    :param normalize_images: ``None`` chooses by image size as above
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        normalize_images: bool | None = None,
        **kwargs: Any,
    ) -> None:
        pixels = is_pixel_image(observation_space)
        if features_extractor_class is None:
            features_extractor_class = NatureCNN if pixels else MinigridCNN
        if normalize_images is None:
            normalize_images = pixels
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            features_extractor_class=features_extractor_class,
            normalize_images=normalize_images,
            **kwargs,
        )
