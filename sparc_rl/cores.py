"""Recurrent cores: one small interface for SPARC, LSTM and GRU so one algorithm runs all three.

Every core keeps its recurrent state as one flat tensor of shape ``(batch, state_size)`` whose
initial value is zeros, so buffers, resets and save/load treat all cores the same way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch as th
from torch import nn
from torch.nn import functional as F

from sparc_rl.errors import ConfigError


@dataclass(frozen=True)
class MemoryReadout:
    """A SPARC memory's output along a batch of sequences (computed without autograd)."""

    memory: th.Tensor  # (time, batch, hidden)
    attention: th.Tensor  # (time, batch, n_filled)
    familiarity: th.Tensor  # (time, batch, 1)
    final_slots: th.Tensor  # (batch, n_filled, hidden)
    final_evidence: th.Tensor  # (batch, n_filled)
    final_weight: th.Tensor  # (batch, 1)

    def select(self, index: th.Tensor) -> MemoryReadout:
        """The read-out of the sequences ``index`` (along the batch dimension)."""
        return MemoryReadout(
            self.memory[:, index],
            self.attention[:, index],
            self.familiarity[:, index],
            self.final_slots[index],
            self.final_evidence[index],
            self.final_weight[index],
        )


class RecurrentCore(nn.Module):
    """Interface of a recurrent core.

    :param input_size: size of the feature vector given at each step
    :param hidden_size: size of the output at each step
    """

    #: size of the flat recurrent state
    state_size: int

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    def initial_state(self, batch_size: int, device: th.device | str = "cpu") -> th.Tensor:
        """Zero state for ``batch_size`` sequences."""
        return th.zeros(batch_size, self.state_size, device=device)

    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """One time step: ``(batch, input_size), (batch, state_size) -> output, new state``."""
        raise NotImplementedError

    def unroll(
        self,
        x: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        readout: MemoryReadout | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """Unroll a batch of sequences, resetting the state where an episode starts.

        :param x: features, ``(time, batch, input_size)``
        :param state: state before the first step, ``(batch, state_size)``
        :param episode_starts: 1 where a new episode starts at that step, ``(time, batch)``
        :param readout: the frozen memory's read-out of these sequences, from :meth:`read_memory`
            (cores without memory ignore it)
        :return: outputs ``(time, batch, hidden_size)`` and the final state
        """
        return unroll_together([self], x, [state], episode_starts, [readout])[0]

    # The recurrence that :func:`unroll_together` runs step by step, split so that everything that does
    # not depend on the previous step runs on the whole sequence at once: training time is per-op
    # overhead on small tensors, so each op out of the time loop counts.
    def input_part(self, x: th.Tensor) -> th.Tensor:
        """The input's affine part of the gates, for a whole sequence at once, ``(..., gates)``."""
        raise NotImplementedError

    def carried(self, state: th.Tensor) -> th.Tensor:
        """The part of the state that the recurrence updates, ``(batch, carried_size)``."""
        raise NotImplementedError

    def hidden_weights(self) -> tuple[th.Tensor, th.Tensor]:
        """Weight ``(gates, hidden)`` and bias ``(gates,)`` of the hidden state's affine part of the gates."""
        raise NotImplementedError

    def hidden_of(self, carried: th.Tensor) -> th.Tensor:
        """The hidden vector in a carried state (what :meth:`hidden_weights` reads)."""
        return carried

    def update(self, input_gates: th.Tensor, hidden_gates: th.Tensor, carried: th.Tensor) -> th.Tensor:
        """One step of the recurrence on ``(..., carried_size)`` from both affine parts of the gates."""
        raise NotImplementedError

    def finish(
        self,
        carried: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        readout: MemoryReadout | None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """Outputs and final state from the carried states along the sequence ``(time, batch, carried_size)``.

        :param state: the state before the first step
        """
        return self.hidden_of(carried), carried[-1]

    def read_memory(self, x: th.Tensor, state: th.Tensor, episode_starts: th.Tensor) -> MemoryReadout | None:
        """What the frozen memory returns along these sequences (``None`` without filled memory).

        It does not change while the trainable parts learn, so one read-out serves every epoch."""
        return None

    def consolidate(self, features: th.Tensor, episode_starts: th.Tensor) -> int | None:
        """Write the current skill into memory (cores without memory do nothing).

        :param features: features seen on the current task, ``(time, batch, input_size)``
        :param episode_starts: episode start flags, ``(time, batch)``
        :return: the memory slot written, ``None`` if none
        """
        return None

    def diagnostics(self) -> dict[str, float]:
        """Internal statistics worth logging (gate, router, slots); empty for plain cores."""
        return {}


class LSTMCore(RecurrentCore):
    """``nn.LSTMCell`` core; the state is ``[h, c]``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.state_size = 2 * hidden_size

    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        h, c = self.cell(x, (state[:, : self.hidden_size], state[:, self.hidden_size :]))
        return h, th.cat([h, c], dim=1)

    def input_part(self, x: th.Tensor) -> th.Tensor:
        return F.linear(x, self.cell.weight_ih, self.cell.bias_ih)

    def carried(self, state: th.Tensor) -> th.Tensor:
        return state

    def hidden_weights(self) -> tuple[th.Tensor, th.Tensor]:
        return self.cell.weight_hh, self.cell.bias_hh

    def hidden_of(self, carried: th.Tensor) -> th.Tensor:
        return carried[..., : self.hidden_size]

    def update(self, input_gates: th.Tensor, hidden_gates: th.Tensor, carried: th.Tensor) -> th.Tensor:
        i, f, g, o = (input_gates + hidden_gates).chunk(4, dim=-1)
        c = th.sigmoid(f) * carried[..., self.hidden_size :] + th.sigmoid(i) * th.tanh(g)
        return th.cat([th.sigmoid(o) * th.tanh(c), c], dim=-1)


class GRUCore(RecurrentCore):
    """``nn.GRUCell`` core; the state is the hidden vector."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.state_size = hidden_size

    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        h = self.cell(x, state)
        return h, h

    def input_part(self, x: th.Tensor) -> th.Tensor:
        return F.linear(x, self.cell.weight_ih, self.cell.bias_ih)

    def carried(self, state: th.Tensor) -> th.Tensor:
        return state

    def hidden_weights(self) -> tuple[th.Tensor, th.Tensor]:
        return self.cell.weight_hh, self.cell.bias_hh

    def update(self, input_gates: th.Tensor, hidden_gates: th.Tensor, carried: th.Tensor) -> th.Tensor:
        return _gru_update(input_gates, hidden_gates, carried)


class _NormedLinear(th.autograd.Function):
    """``F.linear(layer_norm(x) * a + b, W, c)`` for inputs that need no gradient, with a backward of
    one large matmul instead of two: ``G = grad^T @ layer_norm(x)`` gives both ``W``'s gradient
    (``G * a + grad_sum (x) b``) and ``a``'s (``sum_k W * G``), so the gradient with respect to the
    normalised input (``grad @ W``, as large as ``x``) is never formed."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: th.Tensor, norm_weight: th.Tensor, norm_bias: th.Tensor, weight: th.Tensor, bias: th.Tensor
    ) -> th.Tensor:
        normed = F.layer_norm(x, (x.shape[-1],))
        ctx.save_for_backward(normed, norm_weight, norm_bias, weight)
        return F.linear(normed * norm_weight + norm_bias, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: th.Tensor) -> tuple[None, th.Tensor, th.Tensor, th.Tensor, th.Tensor]:  # type: ignore[override]
        normed, norm_weight, norm_bias, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        grad_sum = grad.sum(0)
        outer = grad.T @ normed.reshape(-1, normed.shape[-1])  # (out, in): the one large matmul
        grad_weight = outer * norm_weight + th.outer(grad_sum, norm_bias)
        return None, (weight * outer).sum(0), grad_sum @ weight, grad_weight, grad_sum


def normed_linear(x: th.Tensor, norm: nn.LayerNorm, weight: th.Tensor, bias: th.Tensor) -> th.Tensor:
    """``F.linear(norm(x), weight, bias)``; when training with inputs that need no gradient (raw
    observations), with :class:`_NormedLinear`'s cheaper backward. On MiniGrid's 980-wide one-hot
    views the matmuls with the input are the largest single cost of SPARC's training."""
    if x.requires_grad or not th.is_grad_enabled():
        return F.linear(norm(x), weight, bias)
    return _NormedLinear.apply(x, norm.weight, norm.bias, weight, bias)


def _gru_update(input_gates: th.Tensor, hidden_gates: th.Tensor, hidden: th.Tensor) -> th.Tensor:
    """``nn.GRUCell``'s update from its two pre-computed affine parts (``(..., 3H)`` each), so the
    input part can be computed for a whole sequence in one matmul."""
    i_r, i_z, i_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = hidden_gates.chunk(3, dim=-1)
    reset = th.sigmoid(i_r + h_r)
    update = th.sigmoid(i_z + h_z)
    candidate = th.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * hidden


class SparcCore(RecurrentCore):
    """Stability-Plasticity Adaptive Recurrent Cell.

    ``h_t = g_t * m_t + (1 - g_t) * p_t`` where

    * ``p_t`` is the *plastic path*: a LayerNorm GRU that learns the current task;
    * ``m_t`` is the *memory read-out*: each of at most ``n_slots`` skill slots holds a frozen copy
      of the plastic path (stored as buffers, so no optimiser can change it) and a key: a diagonal
      Gaussian (mean and variance per input dimension) of the inputs seen while the skill was
      learned. Each step, every key scores the input by its negative log-likelihood; a running
      average over the episode (the *evidence*) says how well each key explains what the agent has
      seen so far. Slots are read with ``softmax(-evidence / router_temperature)``;
    * ``g_t`` is the per-unit *stability-plasticity gate*: a non-parametric familiarity times a
      learned per-unit part. Familiarity compares the evidence with the spread the key showed on its
      own task (``z = (evidence - own median) / (own 95th percentile - own median)``, so 0 is typical
      and 1 unusual for that task): ``f_t = sigmoid((familiarity_threshold - z) / familiarity_temperature)``.
      Familiar contexts lean on memory, novel ones on the plastic path. The learned part belongs to
      each slot (per-unit logits, read with the same attention as the slots) and only gets gradient
      where a context is familiar: training on a novel task cannot teach the gate to ignore memory, and
      a task that looks like an old one but needs other behaviour lowers only that slot's gate.

    Keys, calibration and slots are buffers: nothing that decides what memory returns is trained.

    State layout: ``[plastic h (H) | slot h (n_slots * H) | evidence (n_slots) | evidence weight (1)]``.

    :param input_size: feature size
    :param hidden_size: output size ``H``
    :param n_slots: memory budget ``K`` (0 disables memory: the ``sparc-no-memory`` ablation)
    :param use_gate: ``False`` mixes memory and plastic path half and half whenever a slot exists
        (the ``sparc-no-gate`` ablation)
    :param evidence_rate: rate of the running average of each key's negative log-likelihood
    :param min_variance: floor on a key's variance per input dimension (a dimension that never
        moved on a task makes any change in it strong evidence against that task)
    :param familiarity_threshold: calibrated distance ``z`` at which familiarity is one half
    :param familiarity_temperature: softness of the familiarity
    :param gate_speed: the learned gate logits are stored divided by this, so that under the
        optimiser shared with the other weights they move this many times faster (Adam's steps are
        about the learning rate whatever the gradient's scale). 30 over 100: the same garden scores
        (3 seeds: 0.85 against 0.84 average) and more MiniGrid skills learned (0.92 against 0.83,
        in an earlier version's bench)
    :param router_temperature: softness of the slot attention, in nats (0: only the best key's slot is read)
    :param memory_policy: what to do when all slots are full: ``"evict"`` the least used slot or
        ``"merge"`` the two slots with the closest keys
    :param shrink: plastic weights are multiplied by this after consolidation (shrink-and-perturb;
        the default 0 re-initialises the plastic GRU: the skill is in memory, and a policy that starts
        the next task from the old skill's near-deterministic actions explores too little to learn it)
    :param perturb: scale of the noise added to the plastic weights after consolidation (0.07 is about
        the spread of a freshly initialised GRU of hidden size 64)
    :param write_only_novel: consolidation writes a slot only when the task's contexts were mostly
        unfamiliar (memory did not already serve it)
    :param readout_size: output size of the frozen linear read-out (head) the policy puts after this
        core; with it, each task after :meth:`attach_readout` trains its own head (0: no task heads)
    :param readout_gain: orthogonal-init gain of each task's head (0.01 for action logits, as SB3's;
        the policy's critic uses 0: each task's values start at zero)
    :param restart_head: each task after the first starts a fresh head and output norm (``False``:
        it continues from the last task's, as fine-tuning does)
    """

    slot_weight_in: th.Tensor
    slot_bias_in: th.Tensor
    slot_weight_hh: th.Tensor
    slot_bias_hh: th.Tensor
    slot_output_weight: th.Tensor
    slot_output_bias: th.Tensor
    readout_pinv: th.Tensor
    readout_bias: th.Tensor
    readout_attached: th.Tensor
    key_mean: th.Tensor
    key_var: th.Tensor
    key_centre: th.Tensor
    key_spread: th.Tensor
    key_count: th.Tensor
    slot_usage: th.Tensor
    n_filled: th.Tensor
    n_consolidations: th.Tensor
    INITIAL_GATE_LOGIT = 2.0

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        n_slots: int = 4,
        use_gate: bool = True,
        evidence_rate: float = 0.2,
        min_variance: float = 1e-3,
        familiarity_threshold: float = 2.0,
        familiarity_temperature: float = 0.25,
        gate_speed: float = 30.0,
        router_temperature: float = 1.0,
        memory_policy: str = "evict",
        shrink: float = 0.0,
        perturb: float = 0.07,
        write_only_novel: bool = True,
        readout_size: int = 0,
        readout_gain: float = 1.0,
        restart_head: bool = True,
    ) -> None:
        super().__init__(input_size, hidden_size)
        if n_slots < 0:
            raise ConfigError(f"n_slots must be >= 0, got {n_slots}.")
        if memory_policy not in ("evict", "merge"):
            raise ConfigError(f"memory_policy must be 'evict' or 'merge', got {memory_policy!r}.")
        if not 0.0 < evidence_rate <= 1.0:
            raise ConfigError(f"evidence_rate must be in (0, 1], got {evidence_rate}.")
        if gate_speed <= 0:
            raise ConfigError(f"gate_speed must be > 0, got {gate_speed}.")
        if min_variance <= 0:
            raise ConfigError(f"min_variance must be > 0, got {min_variance}.")
        self.n_slots = n_slots
        self.use_gate = use_gate
        self.evidence_rate = evidence_rate
        self.min_variance = min_variance
        self.familiarity_threshold = familiarity_threshold
        self.familiarity_temperature = familiarity_temperature
        self.gate_speed = gate_speed
        self.router_temperature = router_temperature
        self.memory_policy = memory_policy
        self.shrink = shrink
        self.perturb = perturb
        self.write_only_novel = write_only_novel
        self.readout_gain = readout_gain
        self.restart_head = restart_head
        self.state_size = hidden_size * (1 + n_slots) + n_slots + 1

        self.input_norm = nn.LayerNorm(input_size)
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        # trained only once a frozen read-out is attached (until then the policy's own heads train)
        self.task_head = nn.Linear(hidden_size, readout_size).requires_grad_(False) if readout_size else None
        self.register_buffer("readout_pinv", th.zeros(hidden_size, readout_size))
        self.register_buffer("readout_bias", th.zeros(readout_size))
        self.register_buffer("readout_attached", th.zeros((), dtype=th.bool))
        # the learned gate logits divided by gate_speed; they start by trusting memory where it is familiar
        self.gate_weights = nn.Parameter(th.full((n_slots, hidden_size), self.INITIAL_GATE_LOGIT / gate_speed))

        k, h, f = n_slots, hidden_size, input_size
        # Slot input weights have the copied input LayerNorm's affine folded in, and are stacked so
        # that one matmul feeds every slot: rows [3H * k, 3H * (k + 1)) belong to slot k.
        self.register_buffer("slot_weight_in", th.zeros(k * 3 * h, f))
        self.register_buffer("slot_bias_in", th.zeros(k * 3 * h))
        self.register_buffer("slot_weight_hh", th.zeros(k, 3 * h, h))
        self.register_buffer("slot_bias_hh", th.zeros(k, 3 * h))
        # each slot's output map on its normalised hidden state: the plastic output map, frozen
        self.register_buffer("slot_output_weight", th.zeros(k, h, h))
        self.register_buffer("slot_output_bias", th.zeros(k, h))
        self.register_buffer("key_mean", th.zeros(k, f))
        self.register_buffer("key_var", th.ones(k, f))
        self.register_buffer("key_centre", th.zeros(k))
        self.register_buffer("key_spread", th.ones(k))
        self.register_buffer("key_count", th.zeros(k))
        self.register_buffer("slot_usage", th.zeros(k))
        self.register_buffer("n_filled", th.zeros((), dtype=th.long))
        self.register_buffer("n_consolidations", th.zeros((), dtype=th.long))
        self._gate_sum = 0.0
        self._entropy_sum = 0.0
        self._steps_seen = 0

    # -- state helpers -------------------------------------------------------------------------
    def _split(self, state: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        h, k = self.hidden_size, self.n_slots
        plastic = state[:, :h]
        slots = state[:, h : h * (1 + k)].reshape(state.shape[0], k, h)
        evidence = state[:, h * (1 + k) : h * (1 + k) + k]
        weight = state[:, -1:]
        return plastic, slots, evidence, weight

    def key_nll(self, x: th.Tensor, n: int, mean: th.Tensor | None = None, var: th.Tensor | None = None) -> th.Tensor:
        """Negative log-likelihood (up to a constant, in nats) of inputs ``(..., F)`` under the first
        ``n`` keys (or under the given ``mean`` and ``var``), ``(..., n)``."""
        mean = self.key_mean[:n] if mean is None else mean
        var = self.key_var[:n] if var is None else var
        precision = var.reciprocal()
        # sum_f (x - mu)^2 / var expanded into matmuls, so no (..., n, F) tensor is built
        quadratic = F.linear(x.pow(2), precision) - 2 * F.linear(x, mean * precision)
        return 0.5 * (quadratic + (mean.pow(2) * precision + var.log()).sum(-1))

    def _update_evidence(self, evidence: th.Tensor, weight: th.Tensor, nll: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        rate = self.evidence_rate
        return (1 - rate) * evidence + rate * nll, (1 - rate) * weight + rate

    def running_evidence(self, nll: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        """Bias-corrected running averages of per-step NLLs ``(time, batch, n)`` along sequences that
        start fresh at every episode start."""
        evidence = th.zeros_like(nll[0])
        weight = th.zeros(nll.shape[1], 1, device=nll.device)
        out = []
        for t in range(nll.shape[0]):
            keep = (1.0 - episode_starts[t]).unsqueeze(-1)
            evidence, weight = self._update_evidence(evidence * keep, weight * keep, nll[t])
            out.append(evidence / weight)
        return th.stack(out)

    def _route(self, evidence: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Attention over the filled slots and the familiarity ``(B, 1)``, from bias-corrected evidence."""
        n = evidence.shape[-1]
        if self.router_temperature > 0:
            attention = th.softmax(-evidence / self.router_temperature, dim=-1)
        else:  # hard routing: the best key's slot alone (mixing two skills' hidden states mixes nonsense)
            attention = F.one_hot(evidence.argmin(dim=-1), n).to(evidence.dtype)
        calibrated = (evidence - self.key_centre[:n]) / self.key_spread[:n]
        distance = (attention * calibrated).sum(-1, keepdim=True)
        familiarity = th.sigmoid((self.familiarity_threshold - distance) / self.familiarity_temperature)
        return attention, familiarity

    def plastic_step(self, x: th.Tensor, plastic: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The plastic path alone: returns its output and its new hidden state."""
        return self._plastic(self.input_norm(x), plastic)

    def _plastic(self, normed: th.Tensor, plastic: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        new = self.cell(normed, plastic)
        return self._plastic_output(new, self._has_task_head()), new

    def _has_task_head(self) -> bool:
        return self.task_head is not None and bool(self.readout_attached)

    def _plastic_output(self, hidden: th.Tensor, task_head: bool) -> th.Tensor:
        out = self.output_norm(hidden)
        if task_head:
            assert self.task_head is not None
            # the latent the frozen read-out maps to this task's head: W pinv(W) = I, so
            # W (pinv(W) (U out + u - b)) + b = U out + u
            out = (self.task_head(out) - self.readout_bias) @ self.readout_pinv.T
        return out

    def _output_affine(self) -> tuple[th.Tensor, th.Tensor]:
        """``_plastic_output`` as one affine map on the unscaled normalised hidden state."""
        weight, bias = th.diag(self.output_norm.weight), self.output_norm.bias
        if self._has_task_head():
            assert self.task_head is not None
            weight = self.readout_pinv @ self.task_head.weight @ weight
            bias = self.readout_pinv @ (self.task_head(bias) - self.readout_bias)
        return weight, bias

    def _slot_inputs(self, x: th.Tensor, n: int) -> th.Tensor:
        """Input gates of the first ``n`` slots, ``(..., n, 3H)``, from one matmul."""
        normed = F.layer_norm(x, (self.input_size,))
        rows = n * 3 * self.hidden_size
        gates = F.linear(normed, self.slot_weight_in[:rows], self.slot_bias_in[:rows])
        return gates.reshape(*x.shape[:-1], n, 3 * self.hidden_size)

    def _slot_recurrence(self, gi: th.Tensor, slots: th.Tensor, n: int) -> tuple[th.Tensor, th.Tensor]:
        gh = th.einsum("bkh,kgh->bkg", slots, self.slot_weight_hh[:n]) + self.slot_bias_hh[:n]
        new = _gru_update(gi, gh, slots)
        normed = F.layer_norm(new, (self.hidden_size,))
        out = th.einsum("bkh,kgh->bkg", normed, self.slot_output_weight[:n]) + self.slot_output_bias[:n]
        return out, new

    def slot_step(self, x: th.Tensor, slots: th.Tensor, n: int) -> tuple[th.Tensor, th.Tensor]:
        """The first ``n`` memory slots on input ``x``: outputs and new hidden states ``(B, n, H)``."""
        return self._slot_recurrence(self._slot_inputs(x, n), slots, n)

    def _mix(
        self, plastic_out: th.Tensor, memory: th.Tensor, attention: th.Tensor, familiarity: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        if self.use_gate:
            logits = attention @ (self.gate_speed * self.gate_weights[: attention.shape[-1]])
            # only familiar contexts may teach a slot's gate (novel tasks must not train memory away)
            logits = th.where(familiarity > 0.5, logits, logits.detach())
            gate = familiarity * th.sigmoid(logits)
        else:
            gate = th.full_like(plastic_out, 0.5)
        return gate * memory + (1 - gate) * plastic_out, gate

    # -- the cell ------------------------------------------------------------------------------
    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        plastic, slots, evidence, weight = self._split(state)
        normed = self.input_norm(x)
        plastic_out, plastic_new = self._plastic(normed, plastic)
        n = int(self.n_filled)
        if n == 0:
            return plastic_out, th.cat([plastic_new, state[:, self.hidden_size :]], dim=1)

        with th.no_grad():  # memory is frozen: no graph for it
            filled, weight = self._update_evidence(evidence[:, :n], weight, self.key_nll(x, n))
            slot_out, slot_new = self.slot_step(x, slots[:, :n], n)
            attention, familiarity = self._route(filled / weight)
            memory = (attention.unsqueeze(-1) * slot_out).sum(1)
        out, gate = self._mix(plastic_out, memory, attention, familiarity)

        if not th.is_grad_enabled():  # acting, not training: keep usage statistics for logs
            self.slot_usage[:n] += attention.sum(0)
            self._gate_sum += float(gate.mean())
            self._entropy_sum += float(-(attention * attention.clamp_min(1e-8).log()).sum(1).mean())
            self._steps_seen += 1
        if n < self.n_slots:
            slot_new = th.cat([slot_new, slots[:, n:]], dim=1)
            filled = th.cat([filled, evidence[:, n:]], dim=1)
        new_state = th.cat([plastic_new, slot_new.reshape(x.shape[0], -1), filled, weight], dim=1)
        return out, new_state

    @th.no_grad()
    def read_memory(self, x: th.Tensor, state: th.Tensor, episode_starts: th.Tensor) -> MemoryReadout | None:
        n = int(self.n_filled)
        if n == 0:
            return None
        keep = (1.0 - episode_starts).unsqueeze(-1)
        _, slots, evidence, weight = self._split(state)
        evidence = evidence[:, :n]
        memories, attentions, familiarities, slot_states = [], [], [], slots[:, :n]
        # what does not depend on the recurrence, for all steps in one matmul each
        slot_inputs = self._slot_inputs(x, n)
        nll = self.key_nll(x, n)
        for t in range(x.shape[0]):
            slot_states = slot_states * keep[t].unsqueeze(-1)
            evidence, weight = self._update_evidence(evidence * keep[t], weight * keep[t], nll[t])
            slot_out, slot_states = self._slot_recurrence(slot_inputs[t], slot_states, n)
            attention, familiarity = self._route(evidence / weight)
            memories.append((attention.unsqueeze(-1) * slot_out).sum(1))
            attentions.append(attention)
            familiarities.append(familiarity)
        return MemoryReadout(
            th.stack(memories), th.stack(attentions), th.stack(familiarities), slot_states, evidence, weight
        )

    # The recurrence of an unroll is the plastic GRU alone: memory is read first (or taken from the
    # read-out), without autograd, and the output map and the gate run on the whole sequence after it.
    def input_part(self, x: th.Tensor) -> th.Tensor:
        return normed_linear(x, self.input_norm, self.cell.weight_ih, self.cell.bias_ih)

    def carried(self, state: th.Tensor) -> th.Tensor:
        return state[:, : self.hidden_size]

    def hidden_weights(self) -> tuple[th.Tensor, th.Tensor]:
        return self.cell.weight_hh, self.cell.bias_hh

    def update(self, input_gates: th.Tensor, hidden_gates: th.Tensor, carried: th.Tensor) -> th.Tensor:
        return _gru_update(input_gates, hidden_gates, carried)

    def finish(
        self,
        carried: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        readout: MemoryReadout | None,
    ) -> tuple[th.Tensor, th.Tensor]:
        outputs = self._plastic_output(carried, self._has_task_head())
        if readout is not None:
            outputs, _ = self._mix(outputs, readout.memory, readout.attention, readout.familiarity)
        # what memory does not fill just carries its state, zeroed by any episode start on the way
        _, slots, evidence, weight = self._split(state)
        kept = (1.0 - episode_starts).prod(dim=0).unsqueeze(-1)
        final_slots, final_evidence, final_weight = slots * kept.unsqueeze(-1), evidence * kept, weight * kept
        if readout is not None:
            n = readout.final_slots.shape[1]
            final_slots = th.cat([readout.final_slots, final_slots[:, n:]], dim=1)
            final_evidence = th.cat([readout.final_evidence, final_evidence[:, n:]], dim=1)
            final_weight = readout.final_weight
        final = th.cat([carried[-1], final_slots.reshape(state.shape[0], -1), final_evidence, final_weight], dim=1)
        return outputs, final

    # -- memory management ---------------------------------------------------------------------
    def familiarity(self, features: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        """Familiarity of memory along sequences of features ``(time, batch, F)``: ``(time, batch, 1)``
        (zeros without filled slots)."""
        n = int(self.n_filled)
        if n == 0:
            return th.zeros(*features.shape[:2], 1, device=features.device)
        return self._route(self.running_evidence(self.key_nll(features, n), episode_starts))[1]

    @th.no_grad()
    def consolidate(self, features: th.Tensor, episode_starts: th.Tensor) -> int | None:
        """Write the plastic path's skill into a slot (keyed by ``features``), then restart the plastic
        path; returns the slot written, or ``None`` when nothing was written."""
        self.n_consolidations += 1
        if self.n_slots == 0:
            self.restore_plasticity()
            return None
        if self.write_only_novel and float(self.familiarity(features, episode_starts).mean()) >= 0.5:
            # Memory served this task: the plastic path is only a residual on top of it, not a skill
            # that could stand alone in a slot. Keep memory as it is.
            self.restore_plasticity()
            return None
        flat = features.reshape(-1, self.input_size)
        mean = flat.mean(0)
        var = flat.var(0, unbiased=False).clamp_min(self.min_variance)
        own = self.running_evidence(self.key_nll(features, 1, mean.unsqueeze(0), var.unsqueeze(0)), episode_starts)
        centre, high = th.quantile(own.flatten(), th.tensor([0.5, 0.95], device=own.device))
        slot = self._free_slot()
        rows = slice(slot * 3 * self.hidden_size, (slot + 1) * 3 * self.hidden_size)
        # W (LN(x) * a + b) + c = (W * a) LN(x) + (W b + c): fold the input norm's affine into the slot
        self.slot_weight_in[rows] = self.cell.weight_ih * self.input_norm.weight
        self.slot_bias_in[rows] = self.cell.bias_ih + self.cell.weight_ih @ self.input_norm.bias
        self.slot_weight_hh[slot] = self.cell.weight_hh
        self.slot_bias_hh[slot] = self.cell.bias_hh
        self.slot_output_weight[slot], self.slot_output_bias[slot] = self._output_affine()
        self.key_mean[slot] = mean
        self.key_var[slot] = var
        self.key_centre[slot] = centre
        self.key_spread[slot] = (high - centre).clamp_min(1e-3)
        self.key_count[slot] = flat.shape[0]
        self.slot_usage[slot] = 0.0
        self.n_filled.fill_(max(int(self.n_filled), slot + 1))
        self.restore_plasticity()
        return slot

    def _free_slot(self) -> int:
        n = int(self.n_filled)
        if n < self.n_slots:
            return n
        if self.memory_policy == "evict":
            return int(self.slot_usage.argmin())
        return self._merge_closest()

    def _merge_closest(self) -> int:
        """Merge the two slots with the closest keys into one; returns the slot freed.

        The merged key is the moment-matched Gaussian of both; its calibration keeps the wider spread
        of the two, widened by the gap between their centres."""
        k = self.n_slots
        # symmetric distance between keys: each key's mean scored by the other key
        cross = self.key_nll(self.key_mean, k) - self.key_centre
        distance = cross + cross.T
        distance.fill_diagonal_(float("inf"))
        a, b = divmod(int(distance.argmin()), k)
        wa, wb = self.key_count[a], self.key_count[b]
        share = wa / (wa + wb)
        rows_a = slice(a * 3 * self.hidden_size, (a + 1) * 3 * self.hidden_size)
        rows_b = slice(b * 3 * self.hidden_size, (b + 1) * 3 * self.hidden_size)
        for buffer, index_a, index_b in (
            (self.slot_weight_in, rows_a, rows_b),
            (self.slot_bias_in, rows_a, rows_b),
            (self.slot_weight_hh, a, b),
            (self.slot_bias_hh, a, b),
            (self.slot_output_weight, a, b),
            (self.slot_output_bias, a, b),
        ):
            buffer[index_a] = share * buffer[index_a] + (1 - share) * buffer[index_b]
        mean = share * self.key_mean[a] + (1 - share) * self.key_mean[b]
        self.key_var[a] = share * (self.key_var[a] + (self.key_mean[a] - mean) ** 2) + (1 - share) * (
            self.key_var[b] + (self.key_mean[b] - mean) ** 2
        )
        self.key_mean[a] = mean
        gap = (self.key_centre[a] - self.key_centre[b]).abs()
        self.key_centre[a] = share * self.key_centre[a] + (1 - share) * self.key_centre[b]
        self.key_spread[a] = th.maximum(self.key_spread[a], self.key_spread[b]) + gap
        self.key_count[a] = wa + wb
        self.slot_usage[a] += self.slot_usage[b]
        return b

    @th.no_grad()
    def attach_readout(self, weight: th.Tensor, bias: th.Tensor) -> None:
        """Take the frozen linear read-out ``weight @ out + bias`` that follows this core; from now on
        each task trains its own head ``U``, and the plastic output is the latent that the frozen
        read-out maps to ``U``'s output (memory slots store that map, so each skill keeps its head).

        :param weight: ``(readout_size, hidden_size)``, of full row rank
        :param bias: ``(readout_size,)``
        """
        if self.task_head is None:
            raise ConfigError("This SPARC core was built without readout_size; it has no task heads.")
        self.readout_pinv.copy_(th.linalg.pinv(weight))
        self.readout_bias.copy_(bias)
        self.readout_attached.fill_(True)
        self.task_head.requires_grad_(True)
        if self.restart_head:
            self.restart_output()
        else:  # the first task's head goes on as the next task's: the read-out maps back to it
            with th.no_grad():
                self.task_head.weight.copy_(weight)
                self.task_head.bias.copy_(bias)

    @th.no_grad()
    def restart_output(self) -> None:
        """Start the next task's head fresh (orthogonal, gain ``readout_gain``, zero bias) and its output
        norm at its initial scale: the next task starts from near-uniform action logits and zero
        values, without the last skill's lean.

        Measured on minigrid-skills, seed 0: with the last task's output bias kept, lava-gap stayed at
        0.2 success for 100k steps after the empty room (1.0 at 60k after a restart)."""
        if self.task_head is None or not bool(self.readout_attached):
            raise ConfigError("restart_output needs a read-out; call attach_readout first.")
        if not self.restart_head:
            return
        self.output_norm.weight.fill_(1.0)
        self.output_norm.bias.zero_()
        nn.init.orthogonal_(self.task_head.weight, gain=self.readout_gain)
        self.task_head.bias.zero_()

    @th.no_grad()
    def restore_plasticity(self) -> None:
        """Restore plasticity for the next task: shrink-and-perturb the plastic GRU, shrink its input
        norm towards its initial identity (slots keep their own folded copy of it), and recalibrate
        the learned gate to trust memory where it is familiar.

        Measured on minigrid-skills, seed 2: with the GRU alone restarted, door-key stayed at 0.0
        success for 120k steps; with its input norm and optimiser moments restarted too (see the
        policy's ``restore_plasticity``), 1.0 at 30k."""
        for param in self.cell.parameters():
            param.mul_(self.shrink).add_(self.perturb * th.randn_like(param))
        self.input_norm.weight.mul_(self.shrink).add_(1.0 - self.shrink)
        self.input_norm.bias.mul_(self.shrink)
        self.gate_weights.fill_(self.INITIAL_GATE_LOGIT / self.gate_speed)

    @th.no_grad()
    def start_from_slot(self, slot: int) -> None:
        """Make the plastic path a trainable copy of a slot's skill, to start a task that may reuse it.

        The slot's folded input norm goes into the GRU's input weights (the input norm becomes the
        identity), and its output map into the task head (the output norm becomes the identity): with a
        task head ``U, u`` behind the frozen read-out ``W, b``, ``U = W A`` and ``u = W a + b`` give
        the slot's read-out ``W (A LN(h) + a) + b`` exactly. The memory slot itself stays as it is.

        :param slot: a filled slot
        """
        if not 0 <= slot < int(self.n_filled):
            raise ConfigError(f"Slot {slot} is not filled (filled: {int(self.n_filled)}).")
        rows = slice(slot * 3 * self.hidden_size, (slot + 1) * 3 * self.hidden_size)
        self.input_norm.weight.fill_(1.0)
        self.input_norm.bias.zero_()
        self.cell.weight_ih.copy_(self.slot_weight_in[rows])
        self.cell.bias_ih.copy_(self.slot_bias_in[rows])
        self.cell.weight_hh.copy_(self.slot_weight_hh[slot])
        self.cell.bias_hh.copy_(self.slot_bias_hh[slot])
        weight, bias = self.slot_output_weight[slot], self.slot_output_bias[slot]
        if self._has_task_head():
            assert self.task_head is not None
            readout = th.linalg.pinv(self.readout_pinv)
            self.output_norm.weight.fill_(1.0)
            self.output_norm.bias.zero_()
            self.task_head.weight.copy_(readout @ weight)
            self.task_head.bias.copy_(readout @ bias + self.readout_bias)
        else:  # no task head: the slot's output map is the output norm's affine
            self.output_norm.weight.copy_(weight.diagonal())
            self.output_norm.bias.copy_(bias)

    def plastic_parameters(self) -> list[nn.Parameter]:
        """What a restart of the plastic path restarts: its input norm, GRU, output norm, task head and
        the learned gate."""
        modules = [self.input_norm, self.cell, self.output_norm, self.task_head]
        parameters = [param for module in modules if module is not None for param in module.parameters()]
        return [*parameters, self.gate_weights]

    def diagnostics(self) -> dict[str, float]:
        """Slot usage shares, and the gate mean and router entropy averaged over the acting steps
        since the last call (the averages restart at every call)."""
        n = int(self.n_filled)
        stats = {"slots_filled": float(n), "consolidations": float(self.n_consolidations)}
        if n:
            usage = self.slot_usage[:n] / self.slot_usage[:n].sum().clamp_min(1e-8)
            for i, share in enumerate(usage.tolist()):
                stats[f"slot_usage/{i}"] = share
        if self._steps_seen:
            stats["gate_mean"] = self._gate_sum / self._steps_seen
            stats["router_entropy"] = self._entropy_sum / self._steps_seen
        self._gate_sum, self._entropy_sum, self._steps_seen = 0.0, 0.0, 0
        return stats


def unroll_together(
    cores: list[RecurrentCore],
    x: th.Tensor,
    states: list[th.Tensor],
    episode_starts: th.Tensor,
    readouts: list[MemoryReadout | None],
) -> list[tuple[th.Tensor, th.Tensor]]:
    """Unroll several cores over the same sequences (an actor's and a critic's), as each core's
    :meth:`~RecurrentCore.unroll` would. Cores of one kind and size share one time loop on stacked
    weights: each step is then one batched matmul and one set of gate ops for all of them.

    :param x: features, ``(time, batch, input_size)``
    :param states: each core's state before the first step
    :param episode_starts: ``(time, batch)``
    :param readouts: each core's memory read-out (``None``: read it here, for cores with memory)
    :return: each core's outputs and final state
    """
    first = cores[0]
    if any(type(core) is not type(first) or core.hidden_size != first.hidden_size for core in cores):
        together = zip(cores, states, readouts, strict=True)
        return [core.unroll(x, state, episode_starts, readout) for core, state, readout in together]
    readouts = [
        readout if readout is not None else core.read_memory(x, state, episode_starts)
        for core, state, readout in zip(cores, states, readouts, strict=True)
    ]
    keep = (1.0 - episode_starts).unsqueeze(-1)
    input_gates = th.stack([core.input_part(x) for core in cores])  # (cores, time, batch, gates)
    # (cores, batch, carried)
    carried = th.stack([core.carried(state) for core, state in zip(cores, states, strict=True)])
    weights, biases = zip(*(core.hidden_weights() for core in cores), strict=True)
    weight = th.stack(weights).transpose(1, 2)  # (cores, hidden, gates)
    bias = th.stack(biases).unsqueeze(1)
    steps = []
    for t in range(x.shape[0]):
        carried = carried * keep[t]
        carried = first.update(input_gates[:, t], th.baddbmm(bias, first.hidden_of(carried), weight), carried)
        steps.append(carried)
    along = th.stack(steps, dim=1)  # (cores, time, batch, carried)
    return [
        core.finish(along[i], state, episode_starts, readout)
        for i, (core, state, readout) in enumerate(zip(cores, states, readouts, strict=True))
    ]


CORES: dict[str, type[RecurrentCore]] = {"sparc": SparcCore, "lstm": LSTMCore, "gru": GRUCore}


def make_core(name: str, input_size: int, hidden_size: int, **kwargs: Any) -> RecurrentCore:
    """Build a core by name, with a clear error for unknown names or settings."""
    if name not in CORES:
        raise ConfigError(f"Unknown core {name!r}; choose one of {sorted(CORES)}.")
    if not isinstance(hidden_size, int) or hidden_size <= 0:
        raise ConfigError(f"hidden_size must be a positive integer, got {hidden_size!r}.")
    cls = CORES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "input_size", "hidden_size"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"Core {name!r} does not take {unknown}; it takes {sorted(accepted) or 'no extra settings'}.")
    return cls(input_size, hidden_size, **kwargs)
