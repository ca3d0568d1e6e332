"""SparcPPO: PPO for recurrent cores, trained on truncated-BPTT chunks unrolled together."""

from __future__ import annotations

import copy
import io
import pathlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.distributions import Distribution
from torch.nn import functional as F

from sparc_rl.buffers import RecurrentRolloutBuffer
from sparc_rl.errors import ConfigError
from sparc_rl.evaluation import check_episode_lengths
from sparc_rl.plugins import ContinualPlugin
from sparc_rl.policies import CnnSparcPolicy, MlpSparcPolicy, SparcActorCriticPolicy
from sparc_rl.space_checks import check_flat_observations

SelfSparcPPO = TypeVar("SelfSparcPPO", bound="SparcPPO")


class SparcPPO(PPO):
    """Proximal Policy Optimization with a recurrent (SPARC, LSTM or GRU) actor-critic.

    Rollouts store each step's recurrent state; training cuts every env's trajectory into chunks of
    ``seq_len`` steps and unrolls all chunks of a minibatch together from their stored states
    (episode starts inside a chunk reset the state by masking).

    Continual learning: :meth:`start_task`, :meth:`end_task` and :meth:`consolidate`, plus
    ``plugins`` (:class:`sparc_rl.plugins.ContinualPlugin`) whose hooks run at task boundaries and
    whose auxiliary losses join every minibatch.

    :param policy: ``"MlpSparcPolicy"``, ``"CnnSparcPolicy"`` or a policy class
    :param env: environment or its registered id
    :param seq_len: steps per training chunk (divides ``n_steps``; ``batch_size`` is a multiple of it)
    :param plugins: continual-learning plugins
    :param consolidation_threshold: :meth:`end_task` consolidates only if the recent training success
        rate reaches this (``None``: always)
    :param consolidate_best: a skill is written into memory as the policy was when its training success
        rate (over its last ``stats_window_size`` episodes) was highest, not as the budget left it:
        PPO's policy can fall back late in a task (minigrid-skills, the fine-tuning trial in
        ``benchmarks/results/minigrid-sparc-finetune.md``, seeds 1 and 2: lava-gap read 1.0 from 20k to
        80k steps and 0.0 / 0.3 at the task's end; written at its best, 1.0 after it)
    :param transfer_episodes: each announced task after a consolidation chooses how its plastic path
        starts: restarted, or as a trainable copy of one of the skills stored in memory
        (:meth:`SparcActorCriticPolicy.start_from_skill`). Before training, each start plays this
        many episodes of the new task (stochastic actions; the env steps count towards the training
        budget) and the one with the highest mean return trains (ties: the restart, then the earlier
        skill). ``None`` (default): always restart.
    :param kwargs: as :class:`stable_baselines3.PPO` (``n_steps``, ``batch_size``, ``n_epochs``, ...)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[assignment]
        "MlpSparcPolicy": MlpSparcPolicy,
        "CnnSparcPolicy": CnnSparcPolicy,
    }
    policy: SparcActorCriticPolicy
    rollout_buffer: RecurrentRolloutBuffer

    def __init__(
        self,
        policy: str | type[SparcActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        seq_len: int = 16,
        plugins: Sequence[ContinualPlugin] = (),
        consolidation_threshold: float | None = 0.5,
        consolidate_best: bool = True,
        transfer_episodes: int | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "cpu",
        _init_setup_model: bool = True,
    ) -> None:
        if seq_len <= 0 or n_steps % seq_len != 0:
            raise ConfigError(f"seq_len ({seq_len}) must be positive and divide n_steps ({n_steps}).")
        if batch_size % seq_len != 0:
            raise ConfigError(f"batch_size ({batch_size}) must be a multiple of seq_len ({seq_len}).")
        self.seq_len = seq_len
        self.plugins = list(plugins)
        self.consolidation_threshold = consolidation_threshold
        if transfer_episodes is not None and transfer_episodes <= 0:
            raise ConfigError(
                f"transfer_episodes must be a positive number of episodes or None, got {transfer_episodes}."
            )
        self.consolidate_best = consolidate_best
        self.transfer_episodes = transfer_episodes
        self._stored_skills: list[tuple[int, int]] = []
        self._choose_start_pending = False
        self.current_task: str | None = None
        self._skill_episodes = 0
        self._best_skill: tuple[float, dict[str, th.Tensor]] | None = None
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfSparcPPO],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "cpu",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfSparcPPO:
        """As SB3's ``load``, on the CPU by default like the constructor (SB3's ``"auto"`` would move a
        model onto a GPU, where these small recurrent networks run slower: 858 against 1855 env steps/s
        on an H100 machine, DoorKey-5x5, 8 envs, no slots filled)."""
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        # saved as JSON, the slot pairs come back as lists, which never equal the tuples written later
        model._stored_skills = [(actor, critic) for actor, critic in model._stored_skills]
        return model

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_state"]

    @property
    def discrete_actions(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    def policy_actions(self, actions: th.Tensor) -> th.Tensor:
        """Stored actions as the policy's distribution reads them: indices for ``Discrete``, floats for
        ``MultiBinary`` (a Bernoulli's log-probability needs them; the buffer keeps the space's int8)."""
        if self.discrete_actions:
            return actions.long().flatten()
        if isinstance(self.action_space, spaces.MultiBinary):
            return actions.float()
        return actions

    def _setup_model(self) -> None:
        check_flat_observations(self.observation_space)
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        try:
            self.policy = self.policy_class(  # type: ignore[assignment]
                self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
            )
        except TypeError as error:
            raise ConfigError(f"Invalid policy_kwargs {sorted(self.policy_kwargs)}: {error}.") from None
        self.policy = self.policy.to(self.device)
        self.rollout_buffer = RecurrentRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            state_size=self.policy.state_size,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        self._last_state = self.policy.initial_state(self.n_envs)
        for plugin in self.plugins:
            plugin.on_setup(self)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        previous_obs = self._last_obs
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if self._last_obs is not previous_obs:  # the env was reset: so is the recurrent state
            self._last_state = self.policy.initial_state(self.n_envs)
        return result

    # -- rollouts ------------------------------------------------------------------------------
    def collect_rollouts(  # type: ignore[override]
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RecurrentRolloutBuffer, n_rollout_steps: int
    ) -> bool:
        assert self._last_obs is not None, "No previous observation was provided"
        if self._choose_start_pending:
            self._choose_start(env)
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        state = self._last_state
        while n_steps < n_rollout_steps:
            starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
            with th.inference_mode():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs, new_state = self.policy.forward_step(obs_tensor, state, starts)
            actions_np = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(self._env_actions(actions_np))
            rewards = _as_float32(rewards)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                # the envs have taken this step: the next learn() continues from where they are
                self._last_obs, self._last_episode_starts, self._last_state = new_obs, dones, new_state  # type: ignore[assignment]
                return False
            self._update_info_buffer(infos, dones)
            self._skill_episodes += int(np.sum(dones))
            n_steps += 1
            if self.discrete_actions:
                actions_np = actions_np.reshape(-1, 1)
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.inference_mode():
                        terminal_value = self.policy.predict_values_step(
                            terminal_obs, new_state[idx : idx + 1], th.zeros(1, device=self.device)
                        )[0]
                    rewards[idx] += self.gamma * float(terminal_value)
            rollout_buffer.add_state(state)
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions_np,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            state = new_state
        self._last_state = state
        with th.inference_mode():
            starts = th.as_tensor(dones, dtype=th.float32, device=self.device)
            values = self.policy.predict_values_step(obs_as_tensor(new_obs, self.device), state, starts)  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        self._remember_best_skill()
        for plugin in self.plugins:
            plugin.on_rollout_end(self)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # -- training ------------------------------------------------------------------------------
    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses, pg_losses, value_losses, aux_losses, clip_fractions = [], [], [], [], []
        approx_kl_divs: list[float] = []
        continue_training = True
        loss = th.zeros(())
        # What the frozen memory returns depends on no trainable parameter: read it once for all epochs.
        everything = self.rollout_buffer.all_sequences(self.seq_len)
        actor_readout, critic_readout = self.policy.read_memories(
            everything.observations, everything.states, everything.episode_starts
        )
        for _ in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get_sequences(self.batch_size, self.seq_len):
                actions = self.policy_actions(batch.actions)
                readouts = (
                    actor_readout.select(batch.chunks) if actor_readout is not None else None,
                    critic_readout.select(batch.chunks) if critic_readout is not None else None,
                )
                values, log_prob, entropy = self.policy.evaluate_sequences(
                    batch.observations, actions, batch.states, batch.episode_starts, readouts
                )
                values = values.flatten()
                advantages = batch.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = th.exp(log_prob - batch.old_log_prob)
                policy_loss = -th.min(
                    advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                ).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                if clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = batch.old_values + th.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(batch.returns, values_pred)
                value_losses.append(value_loss.item())
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                for plugin in self.plugins:
                    extra = plugin.auxiliary_loss(self, batch)
                    if extra is not None:
                        aux_losses.append(extra.item())
                        loss = loss + extra

                with th.no_grad():
                    log_ratio = log_prob - batch.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).item()
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    break
                if not th.isfinite(loss):
                    raise FloatingPointError(
                        f"Non-finite PPO loss ({loss.item()}) at update {self._n_updates}: lower the learning "
                        "rate or check the environment's rewards and observations for NaN/inf."
                    )
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        if aux_losses:
            self.logger.record("train/auxiliary_loss", np.mean(aux_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        for name, value in self.policy.diagnostics().items():
            self.logger.record(f"sparc/{name}", value)

    # -- inference -----------------------------------------------------------------------------
    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: np.ndarray | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As sb3-contrib's ``RecurrentPPO.predict``: returns ``(action, state)``; pass the state back in."""
        with _distribution_checks_off():
            return self.policy.predict(observation, state, episode_start, deterministic)

    # -- continual learning --------------------------------------------------------------------
    def start_task(self, task: str) -> None:
        """Announce a new task (the *detect* stage when boundaries are announced)."""
        self.current_task = task
        self._start_skill()
        self._choose_start_pending = self.transfer_episodes is not None and bool(self._stored_skills)
        for plugin in self.plugins:
            plugin.on_task_start(self, task)

    def _skill_success_rate(self) -> float | None:
        """Training success rate over the last ``stats_window_size`` episodes, once they all belong to
        the current skill (``None`` before, or without success information)."""
        if self._skill_episodes < self._stats_window_size or not self.ep_success_buffer:
            return None
        return float(np.mean(self.ep_success_buffer))

    def _remember_best_skill(self) -> None:
        rate = self._skill_success_rate()
        if not self.consolidate_best or rate is None or self.policy.core_name != "sparc":
            return
        if self._best_skill is None or rate >= self._best_skill[0]:
            self._best_skill = (rate, copy.deepcopy(self.policy.state_dict()))

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions as the env takes them: continuous ones clipped to the action space."""
        if isinstance(self.action_space, spaces.Box):
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def _choose_start(self, env: VecEnv) -> None:
        """Try the plastic path as the last consolidation restarted it and a copy of every stored skill
        on the new task; train the start with the highest mean return."""
        assert self.transfer_episodes is not None
        self._choose_start_pending = False
        restart = copy.deepcopy(self.policy.state_dict())
        restarted = self._mean_return(env, self.transfer_episodes)
        best_return, best_skill = restarted, None
        for skill in self._stored_skills:
            self.policy.start_from_skill(skill)
            skill_return = self._mean_return(env, self.transfer_episodes)
            if skill_return > best_return:
                best_return, best_skill = skill_return, skill
        if best_skill is None:
            self.policy.load_state_dict(restart)
        else:
            self.policy.start_from_skill(best_skill)
        task = self.current_task
        # the actor's slot of the skill kept, -1 for the restart
        self.logger.record(f"sparc/transfer_skill/{task}", -1 if best_skill is None else best_skill[0])
        self.logger.record(f"sparc/transfer_return/{task}", best_return)
        self.logger.record(f"sparc/restart_return/{task}", restarted)
        # training starts on fresh episodes
        self._last_obs = env.reset()  # type: ignore[assignment]
        self._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
        self._last_state = self.policy.initial_state(env.num_envs)

    @th.inference_mode()
    def _mean_return(self, env: VecEnv, episodes: int) -> float:
        """Mean return of the current policy over the first ``episodes`` episodes it finishes on ``env``
        (stochastic actions; the steps count in ``num_timesteps``)."""
        self.policy.set_training_mode(False)
        obs = env.reset()
        state = self.policy.initial_state(env.num_envs)
        starts = th.ones(env.num_envs, device=self.device)
        running = np.zeros(env.num_envs)
        lengths = np.zeros(env.num_envs, dtype=int)
        returns: list[float] = []
        choosing = f"Choosing how task {self.current_task!r} starts (transfer_episodes)"
        while len(returns) < episodes:
            actions, _, _, state = self.policy.forward_step(obs_as_tensor(obs, self.device), state, starts)  # type: ignore[arg-type]
            obs, rewards, dones, _ = env.step(self._env_actions(actions.cpu().numpy()))
            self.num_timesteps += env.num_envs
            running += _as_float32(rewards)
            lengths += 1
            returns.extend(running[dones].tolist())
            running[dones] = 0.0
            lengths[dones] = 0
            check_episode_lengths(lengths, choosing)
            starts = th.as_tensor(dones, dtype=th.float32, device=self.device)
        return float(np.mean(returns[:episodes]))

    def _start_skill(self) -> None:
        self._skill_episodes = 0
        self._best_skill = None

    def skill_learned(self) -> bool:
        """Whether the current task looks learned: the success rate of the recent training episodes
        (``info["is_success"]``), or of the best window :meth:`close_skill` would write, reaches
        ``consolidation_threshold``. Without success information, or with no threshold, every skill
        counts as learned."""
        if self.consolidation_threshold is None or not self.ep_success_buffer:
            return True
        best = self._best_skill[0] if self._best_skill is not None else 0.0
        return max(best, float(np.mean(self.ep_success_buffer))) >= self.consolidation_threshold

    def end_task(self, consolidate: bool = True) -> bool:
        """Close the current task with :meth:`close_skill` (a skill that was not learned would only
        pollute memory; the plastic path restarts either way), then run the plugins' hooks.

        :param consolidate: ``False`` only runs the hooks: memory and plastic path stay as they are
            (agents that fine-tune, such as the LSTM baselines)
        :return: whether the skill was consolidated
        """
        consolidated = consolidate and self.close_skill()
        for plugin in self.plugins:
            plugin.on_task_end(self, self.current_task or "")
        return consolidated

    def close_skill(self, rollout: tuple[th.Tensor, th.Tensor] | None = None) -> bool:
        """The *consolidate* and *stabilize* stages, for announced and detected boundaries alike: write
        the skill into memory if it was learned, and restart the plastic path either way.

        :param rollout: time-major observations and episode starts of the skill's task (default: the
            last collected rollout)
        :return: whether the skill was learned and so consolidated (a SPARC core still keeps it out of
            memory when memory already served the task: ``write_only_novel``)
        """
        learned = self.skill_learned()
        if learned:
            current = self._skill_success_rate()
            if self._best_skill is not None and (current is None or self._best_skill[0] > current):
                self.policy.load_state_dict(self._best_skill[1])
            self.consolidate(rollout)
        else:
            self.policy.restore_plasticity()
        self._start_skill()
        return learned

    def consolidate(self, rollout: tuple[th.Tensor, th.Tensor] | None = None) -> None:
        """Write the current skill into a protected memory slot, keyed by ``rollout`` (time-major
        observations and episode starts; default: the last collected rollout, so at least one is
        needed), then restore plasticity (shrink-and-perturb of the plastic path)."""
        written = self.policy.consolidate(*(rollout or self._last_rollout()))
        if written is not None and written not in self._stored_skills:
            # a full memory merges two slots into one and rewrites the other: every recorded slot stays filled
            self._stored_skills.append(written)

    def _last_rollout(self) -> tuple[th.Tensor, th.Tensor]:
        buffer = self.rollout_buffer
        if not buffer.full:
            raise RuntimeError("consolidate() needs a collected rollout of the current task: call learn() first.")
        return buffer.time_major_tensor(buffer.observations), buffer.to_torch(buffer.episode_starts)

    def learn(  # type: ignore[override]
        self: SelfSparcPPO,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "SparcPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSparcPPO:
        """As SB3's ``PPO.learn``. While it runs, torch's checks of distribution arguments and samples are off
        (see :func:`_distribution_checks_off`), for the callbacks too."""
        with _distribution_checks_off():
            return super().learn(
                total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar
            )


@contextmanager
def _distribution_checks_off() -> Iterator[None]:
    """Turn off torch's checks of every distribution's arguments and samples (on unless Python runs with
    ``-O``), and restore the setting after. With a distribution built every step they took 1.5-2% of
    a whole MiniGrid run in profiles (``benchmarks/results/history.md``), and what they would catch is
    caught where it arises: NaN or inf in the recurrent state (observations, or weights after a bad
    update) and in PPO's loss."""
    checking = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(checking)


def _as_float32(rewards: np.ndarray) -> np.ndarray:
    """Rewards as SB3's DummyVecEnv returns them; its SubprocVecEnv returns float64, which would make the
    same run train differently in the last bits."""
    return np.asarray(rewards, dtype=np.float32)
