"""Continual-learning plugins: hooks on :class:`sparc_rl.ppo.SparcPPO`, the maths in pure functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
from gymnasium import spaces
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from sparc_rl.errors import ConfigError
from sparc_rl.space_checks import describe_space

if TYPE_CHECKING:
    from sparc_rl.buffers import SequenceBatch
    from sparc_rl.ppo import SparcPPO


class ContinualPlugin:
    """Base class: override the hooks a method needs.

    ``on_setup`` once the model is built or loaded (to refuse a model the method cannot work with);
    ``on_task_start`` / ``on_task_end`` are called by :meth:`SparcPPO.start_task` /
    :meth:`SparcPPO.end_task`; ``on_rollout_end`` after each rollout, before training on it;
    ``auxiliary_loss`` is added to the PPO loss of every minibatch. Pass instances as
    ``SparcPPO(..., plugins=[...])``, or name the class in an agent file as ``"module:ClassName"``
    with its ``__init__`` arguments as ``kwargs``. A plugin is saved with the model (pickled), so its
    state (anchors, stored samples) survives checkpoints and resumed runs.
    """

    def on_setup(self, model: SparcPPO) -> None:
        """The model is built (or loaded): raise a :class:`~sparc_rl.errors.ConfigError` here if the
        method cannot work with it (its spaces, its core), before anything trains or is written."""

    def on_task_start(self, model: SparcPPO, task: str) -> None:
        """A new task begins."""

    def on_task_end(self, model: SparcPPO, task: str) -> None:
        """The current task ends (after consolidation)."""

    def auxiliary_loss(self, model: SparcPPO, batch: SequenceBatch) -> th.Tensor | None:
        """Extra loss for this minibatch, or ``None``."""
        return None

    def on_rollout_end(self, model: SparcPPO) -> None:
        """A rollout was collected; training on it has not started yet."""


def ewc_penalty(params: dict[str, th.Tensor], anchors: dict[str, th.Tensor], fisher: dict[str, th.Tensor]) -> th.Tensor:
    """Elastic weight consolidation: ``sum_i F_i (theta_i - theta*_i)^2``."""
    total = th.zeros(())
    for name, anchor in anchors.items():
        total = total + (fisher[name] * (params[name] - anchor).pow(2)).sum()
    return total


def online_fisher_update(
    old: dict[str, th.Tensor] | None, new: dict[str, th.Tensor], decay: float
) -> dict[str, th.Tensor]:
    """Online EWC (Schwarz et al., 2018): ``F <- decay * F_old + F_new``."""
    if old is None:
        return {name: value.clone() for name, value in new.items()}
    return {name: decay * old[name] + value for name, value in new.items()}


class OnlineEWC(ContinualPlugin):
    """Online EWC on all trainable policy parameters, Fisher from the last rollout's log-probs.

    :param strength: weight of the penalty
    :param decay: decay of older tasks' Fisher information
    """

    def __init__(self, strength: float = 100.0, decay: float = 0.9) -> None:
        self.strength = strength
        self.decay = decay
        self.fisher: dict[str, th.Tensor] | None = None
        self.anchors: dict[str, th.Tensor] = {}

    def on_task_end(self, model: SparcPPO, task: str) -> None:
        policy = model.policy
        grads = {n: th.zeros_like(p) for n, p in policy.named_parameters() if p.requires_grad}
        batches = 0
        for batch in model.rollout_buffer.get_sequences(model.batch_size, model.seq_len):
            actions = model.policy_actions(batch.actions)
            _, log_prob, _ = policy.evaluate_sequences(batch.observations, actions, batch.states, batch.episode_starts)
            policy.zero_grad()
            log_prob.mean().backward()
            for name, param in policy.named_parameters():
                if name in grads and param.grad is not None:
                    grads[name] += param.grad.detach().pow(2)
            batches += 1
        policy.zero_grad()
        new = {name: g / max(batches, 1) for name, g in grads.items()}
        self.fisher = online_fisher_update(self.fisher, new, self.decay)
        self.anchors = {n: p.detach().clone() for n, p in policy.named_parameters() if n in new}

    def auxiliary_loss(self, model: SparcPPO, batch: SequenceBatch) -> th.Tensor | None:
        if self.fisher is None:
            return None
        params: dict[str, th.Tensor] = dict(model.policy.named_parameters())
        return self.strength * ewc_penalty(params, self.anchors, self.fisher)


def distillation_loss(student_logits: th.Tensor, teacher_logits: th.Tensor) -> th.Tensor:
    """KL(teacher || student) between categorical policies given by logits, averaged over samples."""
    teacher = F.log_softmax(teacher_logits, dim=-1)
    student = F.log_softmax(student_logits, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


class BehaviourCloning(ContinualPlugin):
    """Rehearsal in the style of ClonEx / CLEAR: store old-task observations with the policy's
    outputs at the end of that task, and distil them into the current policy.

    Each PPO minibatch is joined by a replay minibatch of as many stored chunks, drawn uniformly from
    every finished task (as CLEAR samples its replay buffer), so rehearsal costs the same per update
    however many tasks came before.

    :param strength: weight of the distillation loss
    :param chunks_per_task: sequence chunks kept from each finished task
    """

    def __init__(self, strength: float = 1.0, chunks_per_task: int = 64) -> None:
        self.strength = strength
        self.chunks_per_task = chunks_per_task
        # time-major (seq_len, chunks, ...) observations, starts and teacher logits; states (chunks, S)
        self.memory: tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor] | None = None

    def on_setup(self, model: SparcPPO) -> None:
        if not isinstance(model.action_space, spaces.Discrete):
            raise ConfigError(
                "The behaviour-cloning plugin distils categorical action distributions: it needs a Discrete "
                f"action space, got {describe_space(model.action_space)}."
            )

    def on_task_end(self, model: SparcPPO, task: str) -> None:
        policy = model.policy
        seq_len = model.seq_len
        batch = next(model.rollout_buffer.get_sequences(self.chunks_per_task * seq_len, seq_len))
        with th.no_grad():
            logits = policy.action_logits_sequences(batch.observations, batch.states, batch.episode_starts)
        n_chunks = batch.states.shape[0]
        observations = batch.observations.reshape(seq_len, n_chunks, *batch.observations.shape[1:])
        teacher = logits.reshape(seq_len, n_chunks, *logits.shape[1:])
        starts, states = batch.episode_starts, batch.states
        if self.memory is not None:
            old_observations, old_starts, old_teacher, old_states = self.memory
            observations = th.cat([old_observations, observations], dim=1)
            starts = th.cat([old_starts, starts], dim=1)
            teacher = th.cat([old_teacher, teacher], dim=1)
            states = th.cat([old_states, states])
        self.memory = (observations, starts, teacher, states)

    def auxiliary_loss(self, model: SparcPPO, batch: SequenceBatch) -> th.Tensor | None:
        if self.memory is None:
            return None
        observations, starts, teacher, states = self.memory
        picked = th.randint(states.shape[0], (batch.states.shape[0],), device=states.device)

        def flat(tensor: th.Tensor) -> th.Tensor:
            return tensor[:, picked].reshape(-1, *tensor.shape[2:])

        student = model.policy.action_logits_sequences(flat(observations), states[picked], starts[:, picked])
        return self.strength * distillation_loss(student, flat(teacher))


def rollout_novelty(mean: th.Tensor, var: th.Tensor, segment_mean: th.Tensor, segment_var: th.Tensor) -> float:
    """Jeffreys divergence (the KL divergences both ways, summed) per input dimension, in nats, between
    a rollout's diagonal Gaussian and the current segment's. Both directions count: a task whose inputs
    lose features (tiles that vanish) still fits the old segment's wider Gaussian, so the old
    segment's likelihood alone misses it."""
    rollout, segment = Normal(mean, var.sqrt()), Normal(segment_mean, segment_var.sqrt())
    return float((kl_divergence(rollout, segment) + kl_divergence(segment, rollout)).mean())


class NoveltyBoundaryDetector(ContinualPlugin):
    """The *detect* stage for hidden boundaries: when a rollout's features differ from the running
    statistics of the current segment (:func:`rollout_novelty`) much more than the segment's own
    rollouts did, the old task's skill is closed as an announced boundary closes it (:meth:`SparcPPO.close_skill`:
    written into memory from the previous rollout, which still belongs to the old task, if it was
    learned; the plastic path restarts either way) before training on the new data. The new data's
    task then starts as an announced one does (:meth:`SparcPPO.start_task`, named ``segment-N``): with
    ``transfer_episodes``, the next rollout begins by trying the restart and every stored skill on it.

    :param threshold: rise of :func:`rollout_novelty` over the segment's running baseline, in nats per
        input dimension, that counts as a new task (with random actions on the built-in curricula:
        at most 0.14 within a task, at least 1.05 across a switch)
    :param min_rollouts: rollouts a segment needs before it can be consolidated
    :param momentum: weight of the old statistics in the running segment mean, variance and baseline
    :param min_variance: floor on the segment's variance per dimension
    """

    def __init__(
        self, threshold: float = 0.5, min_rollouts: int = 10, momentum: float = 0.9, min_variance: float = 1e-3
    ) -> None:
        self.threshold = threshold
        self.min_rollouts = min_rollouts
        self.momentum = momentum
        self.min_variance = min_variance
        self.segment: tuple[th.Tensor, th.Tensor] | None = None
        self.baseline = 0.0
        self.rollouts_in_segment = 0
        self.previous: tuple[th.Tensor, th.Tensor] | None = None
        self.detected = 0

    def on_rollout_end(self, model: SparcPPO) -> None:
        from sparc_rl.cores import SparcCore

        if not isinstance(model.policy.actor_core, SparcCore):
            raise TypeError("NoveltyBoundaryDetector needs a SPARC core (policy_kwargs core='sparc').")
        buffer = model.rollout_buffer
        obs = buffer.time_major_tensor(buffer.observations)
        starts = buffer.to_torch(buffer.episode_starts)
        with th.no_grad():
            features = model.policy.extract_features(obs, model.policy.features_extractor)
            assert isinstance(features, th.Tensor)
        mean, var = features.mean(0), features.var(0, unbiased=False).clamp_min(self.min_variance)
        segment, previous = self.segment, self.previous
        novelty = rollout_novelty(mean, var, *segment) if segment is not None else 0.0
        if (
            segment is not None
            and previous is not None
            and self.rollouts_in_segment >= self.min_rollouts
            and novelty - self.baseline > self.threshold
        ):
            self.detected += 1
            model.close_skill(previous)
            # the new task starts as an announced one does: from the best of the stored skills and a restart
            model.start_task(f"segment-{self.detected}")
            self.segment, self.rollouts_in_segment = None, 0
        m = self.momentum
        if self.segment is None:
            self.segment = (mean, var)
            self.baseline = 0.0
        else:
            self.segment = (m * self.segment[0] + (1 - m) * mean, m * self.segment[1] + (1 - m) * var)
            self.baseline = m * self.baseline + (1 - m) * novelty
        self.rollouts_in_segment += 1
        self.previous = (obs, starts)
