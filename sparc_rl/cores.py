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
    familiarity: th.Tensor  # (time, batch, 1)
    final_slots: th.Tensor  # (batch, n_filled, hidden)
    final_context: th.Tensor  # (batch, input_size)
    final_weight: th.Tensor  # (batch, 1)

    def select(self, index: th.Tensor) -> MemoryReadout:
        """The read-out of the sequences ``index`` (along the batch dimension)."""
        return MemoryReadout(
            self.memory[:, index],
            self.familiarity[:, index],
            self.final_slots[index],
            self.final_context[index],
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
        keep = (1.0 - episode_starts).unsqueeze(-1)
        outputs = []
        for t in range(x.shape[0]):
            out, state = self.step(x[t], state * keep[t])
            outputs.append(out)
        return th.stack(outputs), state

    def read_memory(self, x: th.Tensor, state: th.Tensor, episode_starts: th.Tensor) -> MemoryReadout | None:
        """What the frozen memory returns along these sequences (``None`` without filled memory).

        It does not change while the trainable parts learn, so one read-out serves every epoch."""
        return None

    def consolidate(self, features: th.Tensor, episode_starts: th.Tensor) -> None:
        """Write the current skill into memory (cores without memory do nothing).

        :param features: features seen on the current task, ``(time, batch, input_size)``
        :param episode_starts: episode start flags, ``(time, batch)``
        """

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


class GRUCore(RecurrentCore):
    """``nn.GRUCell`` core; the state is the hidden vector."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.state_size = hidden_size

    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        h = self.cell(x, state)
        return h, h


class SparcCore(RecurrentCore):
    """Stability-Plasticity Adaptive Recurrent Cell.

    ``h_t = g_t * m_t + (1 - g_t) * p_t`` where

    * ``p_t`` is the *plastic path*: a LayerNorm GRU that learns the current task;
    * ``m_t`` is the *memory read-out*: each of at most ``n_slots`` skill slots holds a frozen copy
      of the plastic path (stored as buffers, so no optimiser can change it) and a key: the mean and
      variance of the *context* (a running average of the inputs over the episode) seen while the
      skill was learned. Slots are weighted by ``softmax(-distance / router_temperature)``;
    * ``g_t`` is the per-unit *stability-plasticity gate*: a non-parametric familiarity
      ``f_t = sigmoid((familiarity_threshold - nearest distance) / familiarity_temperature)`` times
      a learned per-unit part. Familiar contexts lean on memory, novel ones on the plastic path.
      The gate's learned part only receives gradient where a context is familiar, so training on a
      novel task does not teach it to ignore memory.

    The distance is the mean over input dimensions of ``(context - key_mean)^2 / key_var``, so about
    1 inside the distribution a key was computed from.

    State layout: ``[plastic h (H) | slot h (n_slots * H) | context (input_size) | context weight (1)]``.

    :param input_size: feature size
    :param hidden_size: output size ``H``
    :param n_slots: memory budget ``K`` (0 disables memory: the ``sparc-no-memory`` ablation)
    :param use_gate: ``False`` mixes memory and plastic path half and half whenever a slot exists
        (the ``sparc-no-gate`` ablation)
    :param context_rate: rate of the running context average
    :param familiarity_threshold: distance under which a context counts as familiar
    :param familiarity_temperature: softness of the familiarity
    :param router_temperature: softness of the slot attention (0: only the nearest slot is read)
    :param memory_policy: what to do when all slots are full: ``"evict"`` the least used slot or
        ``"merge"`` the two slots with the closest keys
    :param shrink: plastic weights are multiplied by this after consolidation (shrink-and-perturb)
    :param perturb: scale of the noise added to the plastic weights after consolidation
    :param write_only_novel: consolidation writes a slot only when the task's contexts were mostly
        unfamiliar (memory did not already serve it)
    """

    slot_weight_in: th.Tensor
    slot_bias_in: th.Tensor
    slot_weight_hh: th.Tensor
    slot_bias_hh: th.Tensor
    slot_output_norm: th.Tensor
    key_mean: th.Tensor
    key_var: th.Tensor
    key_count: th.Tensor
    slot_usage: th.Tensor
    n_filled: th.Tensor
    n_consolidations: th.Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        n_slots: int = 4,
        use_gate: bool = True,
        context_rate: float = 0.1,
        familiarity_threshold: float = 3.0,
        familiarity_temperature: float = 0.5,
        router_temperature: float = 0.5,
        memory_policy: str = "evict",
        shrink: float = 0.9,
        perturb: float = 0.01,
        write_only_novel: bool = True,
    ) -> None:
        super().__init__(input_size, hidden_size)
        if n_slots < 0:
            raise ConfigError(f"n_slots must be >= 0, got {n_slots}.")
        if memory_policy not in ("evict", "merge"):
            raise ConfigError(f"memory_policy must be 'evict' or 'merge', got {memory_policy!r}.")
        if not 0.0 < context_rate <= 1.0:
            raise ConfigError(f"context_rate must be in (0, 1], got {context_rate}.")
        self.n_slots = n_slots
        self.use_gate = use_gate
        self.context_rate = context_rate
        self.familiarity_threshold = familiarity_threshold
        self.familiarity_temperature = familiarity_temperature
        self.router_temperature = router_temperature
        self.memory_policy = memory_policy
        self.shrink = shrink
        self.perturb = perturb
        self.write_only_novel = write_only_novel
        self.state_size = hidden_size * (1 + n_slots) + input_size + 1

        self.input_norm = nn.LayerNorm(input_size)
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.gate = nn.Linear(input_size + hidden_size, hidden_size)
        nn.init.constant_(self.gate.bias, 2.0)  # start by trusting memory where it is familiar

        k, h, f = n_slots, hidden_size, input_size
        # Slot input weights have the copied input LayerNorm's affine folded in, and are stacked so
        # that one matmul feeds every slot: rows [3H * k, 3H * (k + 1)) belong to slot k.
        self.register_buffer("slot_weight_in", th.zeros(k * 3 * h, f))
        self.register_buffer("slot_bias_in", th.zeros(k * 3 * h))
        self.register_buffer("slot_weight_hh", th.zeros(k, 3 * h, h))
        self.register_buffer("slot_bias_hh", th.zeros(k, 3 * h))
        self.register_buffer("slot_output_norm", th.zeros(k, 2, h))
        self.register_buffer("key_mean", th.zeros(k, f))
        self.register_buffer("key_var", th.ones(k, f))
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
        context = state[:, h * (1 + k) : h * (1 + k) + self.input_size]
        weight = state[:, -1:]
        return plastic, slots, context, weight

    def _update_context(self, context: th.Tensor, weight: th.Tensor, x: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        rate = self.context_rate
        return (1 - rate) * context + rate * x.detach(), (1 - rate) * weight + rate

    def _distances(self, context: th.Tensor, weight: th.Tensor, n: int) -> th.Tensor:
        """Normalised distance of each env's context to the first ``n`` keys, ``(batch, n)``."""
        normalised = context / weight.clamp_min(1e-6)
        diff = normalised.unsqueeze(1) - self.key_mean[:n]
        return (diff.pow(2) / self.key_var[:n]).mean(-1)

    def plastic_step(self, x: th.Tensor, plastic: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The plastic path alone: returns its output and its new hidden state."""
        return self._plastic(self.input_norm(x), plastic)

    def _plastic(self, normed: th.Tensor, plastic: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        new = self.cell(normed, plastic)
        return self.output_norm(new), new

    def _gate_input(self, normed: th.Tensor) -> th.Tensor:
        """The input's share of the gate's learned part (computable for all steps at once)."""
        return F.linear(normed, self.gate.weight[:, : self.input_size], self.gate.bias)

    def _slot_inputs(self, x: th.Tensor, n: int) -> th.Tensor:
        """Input gates of the first ``n`` slots, ``(..., n, 3H)``, from one matmul."""
        normed = F.layer_norm(x, (self.input_size,))
        rows = n * 3 * self.hidden_size
        gates = F.linear(normed, self.slot_weight_in[:rows], self.slot_bias_in[:rows])
        return gates.reshape(*x.shape[:-1], n, 3 * self.hidden_size)

    def _slot_recurrence(self, gi: th.Tensor, slots: th.Tensor, n: int) -> tuple[th.Tensor, th.Tensor]:
        gh = th.einsum("bkh,kgh->bkg", slots, self.slot_weight_hh[:n]) + self.slot_bias_hh[:n]
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        reset = th.sigmoid(i_r + h_r)
        update = th.sigmoid(i_z + h_z)
        candidate = th.tanh(i_n + reset * h_n)
        new = (1 - update) * candidate + update * slots
        norm_out = self.slot_output_norm[:n]
        out = F.layer_norm(new, (self.hidden_size,)) * norm_out[:, 0] + norm_out[:, 1]
        return out, new

    def slot_step(self, x: th.Tensor, slots: th.Tensor, n: int) -> tuple[th.Tensor, th.Tensor]:
        """The first ``n`` memory slots on input ``x``: outputs and new hidden states ``(B, n, H)``."""
        return self._slot_recurrence(self._slot_inputs(x, n), slots, n)

    def _read_memory(
        self, slot_out: th.Tensor, context: th.Tensor, weight: th.Tensor, n: int
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Attention-weighted memory read-out, the attention, and the familiarity ``(B, 1)``."""
        distances = self._distances(context, weight, n)
        if self.router_temperature > 0:
            attention = th.softmax(-distances / self.router_temperature, dim=1)
        else:  # hard routing: the nearest key's slot alone (mixing two skills' hidden states mixes nonsense)
            attention = F.one_hot(distances.argmin(dim=1), n).to(distances.dtype)
        memory = (attention.unsqueeze(-1) * slot_out).sum(1)
        nearest = distances.min(dim=1, keepdim=True).values
        familiarity = th.sigmoid((self.familiarity_threshold - nearest) / self.familiarity_temperature)
        return memory, attention, familiarity

    def _mix(
        self, gate_input: th.Tensor, plastic_out: th.Tensor, memory: th.Tensor, familiarity: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        if self.use_gate:
            learned = th.sigmoid(gate_input + F.linear(plastic_out, self.gate.weight[:, self.input_size :]))
            gate = familiarity * learned
        else:
            gate = th.full_like(plastic_out, 0.5)
        return gate * memory + (1 - gate) * plastic_out, gate

    # -- the cell ------------------------------------------------------------------------------
    def step(self, x: th.Tensor, state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        plastic, slots, context, weight = self._split(state)
        normed = self.input_norm(x)
        plastic_out, plastic_new = self._plastic(normed, plastic)
        context, weight = self._update_context(context, weight, x)
        n = int(self.n_filled)
        if n == 0:
            unused_slots = state[:, self.hidden_size : -1 - self.input_size]
            return plastic_out, th.cat([plastic_new, unused_slots, context, weight], dim=1)

        with th.no_grad():  # memory is frozen: no graph for it
            slot_out, slot_new = self.slot_step(x, slots[:, :n], n)
            memory, attention, familiarity = self._read_memory(slot_out, context, weight, n)
        out, gate = self._mix(self._gate_input(normed), plastic_out, memory, familiarity)

        if not th.is_grad_enabled():  # acting, not training: keep usage statistics for logs
            self.slot_usage[:n] += attention.sum(0)
            self._gate_sum += float(gate.mean())
            self._entropy_sum += float(-(attention * attention.clamp_min(1e-8).log()).sum(1).mean())
            self._steps_seen += 1
        if n < self.n_slots:
            slot_new = th.cat([slot_new, slots[:, n:]], dim=1)
        new_state = th.cat([plastic_new, slot_new.reshape(x.shape[0], -1), context, weight], dim=1)
        return out, new_state

    @th.no_grad()
    def read_memory(self, x: th.Tensor, state: th.Tensor, episode_starts: th.Tensor) -> MemoryReadout | None:
        n = int(self.n_filled)
        if n == 0:
            return None
        keep = (1.0 - episode_starts).unsqueeze(-1)
        _, slots, context, weight = self._split(state)
        memories, familiarities, slot_states = [], [], slots[:, :n]
        slot_inputs = self._slot_inputs(x, n)  # the input projections of all steps in one matmul
        for t in range(x.shape[0]):
            slot_states = slot_states * keep[t].unsqueeze(-1)
            context, weight = self._update_context(context * keep[t], weight * keep[t], x[t])
            slot_out, slot_states = self._slot_recurrence(slot_inputs[t], slot_states, n)
            memory, _, familiarity = self._read_memory(slot_out, context, weight, n)
            memories.append(memory)
            familiarities.append(familiarity)
        return MemoryReadout(th.stack(memories), th.stack(familiarities), slot_states, context, weight)

    def unroll(
        self,
        x: th.Tensor,
        state: th.Tensor,
        episode_starts: th.Tensor,
        readout: MemoryReadout | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """As :meth:`RecurrentCore.unroll`; the frozen memory is read first (or taken from ``readout``),
        without autograd, then the plastic path and the gate run step by step."""
        readout = readout if readout is not None else self.read_memory(x, state, episode_starts)
        keep = (1.0 - episode_starts).unsqueeze(-1)
        plastic, slots, context, weight = self._split(state)
        normed = self.input_norm(x)  # what does not depend on the recurrence: all steps at once
        gate_input = self._gate_input(normed) if readout is not None else None
        outputs = []
        for t in range(x.shape[0]):
            plastic_out, plastic = self._plastic(normed[t], plastic * keep[t])
            if readout is not None and gate_input is not None:
                plastic_out, _ = self._mix(gate_input[t], plastic_out, readout.memory[t], readout.familiarity[t])
            outputs.append(plastic_out)
        # slots that are not filled just carry their state, zeroed by any episode start on the way
        carried = slots * keep.prod(dim=0).unsqueeze(-1)
        if readout is None:
            with th.no_grad():
                for t in range(x.shape[0]):
                    context, weight = self._update_context(context * keep[t], weight * keep[t], x[t])
            final_slots = carried
        else:
            context, weight = readout.final_context, readout.final_weight
            final_slots = th.cat([readout.final_slots, carried[:, readout.final_slots.shape[1] :]], dim=1)
        final = th.cat([plastic, final_slots.reshape(x.shape[1], -1), context, weight], dim=1)
        return th.stack(outputs), final

    # -- memory management ---------------------------------------------------------------------
    def contexts(self, features: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        """Bias-corrected running contexts along sequences, ``(time, batch, input_size)``."""
        context = th.zeros_like(features[0])
        weight = th.zeros(features.shape[1], 1, device=features.device)
        out = []
        for t in range(features.shape[0]):
            keep = (1.0 - episode_starts[t]).unsqueeze(-1)
            context, weight = self._update_context(context * keep, weight * keep, features[t])
            out.append(context / weight)
        return th.stack(out)

    @th.no_grad()
    def consolidate(self, features: th.Tensor, episode_starts: th.Tensor) -> None:
        self.n_consolidations += 1
        if self.n_slots == 0:
            self._stabilize()
            return
        contexts = self.contexts(features, episode_starts).reshape(-1, self.input_size)
        n = int(self.n_filled)
        if n and self.write_only_novel:
            weight = th.ones(contexts.shape[0], 1, device=contexts.device)
            nearest = self._distances(contexts, weight, n).min(dim=1).values
            familiarity = th.sigmoid((self.familiarity_threshold - nearest) / self.familiarity_temperature)
            if float(familiarity.mean()) >= 0.5:
                # Memory served this task: the plastic path is only a residual on top of it, not a skill
                # that could stand alone in a slot. Keep memory as it is.
                self._stabilize()
                return
        mean = contexts.mean(0)
        # A floor on the variance keeps dimensions that never moved from dominating distances.
        var = contexts.var(0, unbiased=False).clamp_min(1e-2)
        slot = self._free_slot()
        rows = slice(slot * 3 * self.hidden_size, (slot + 1) * 3 * self.hidden_size)
        # W (LN(x) * a + b) + c = (W * a) LN(x) + (W b + c): fold the input norm's affine into the slot
        self.slot_weight_in[rows] = self.cell.weight_ih * self.input_norm.weight
        self.slot_bias_in[rows] = self.cell.bias_ih + self.cell.weight_ih @ self.input_norm.bias
        self.slot_weight_hh[slot] = self.cell.weight_hh
        self.slot_bias_hh[slot] = self.cell.bias_hh
        self.slot_output_norm[slot, 0] = self.output_norm.weight
        self.slot_output_norm[slot, 1] = self.output_norm.bias
        self.key_mean[slot] = mean
        self.key_var[slot] = var
        self.key_count[slot] = contexts.shape[0]
        self.slot_usage[slot] = 0.0
        self.n_filled.fill_(max(int(self.n_filled), slot + 1))
        self._stabilize()

    def _free_slot(self) -> int:
        n = int(self.n_filled)
        if n < self.n_slots:
            return n
        if self.memory_policy == "evict":
            return int(self.slot_usage.argmin())
        return self._merge_closest()

    def _merge_closest(self) -> int:
        """Merge the two slots with the closest keys into one; returns the slot freed."""
        k = self.n_slots
        diff = self.key_mean.unsqueeze(0) - self.key_mean.unsqueeze(1)
        distance = (diff.pow(2) / self.key_var.unsqueeze(0)).mean(-1)
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
            (self.slot_output_norm, a, b),
        ):
            buffer[index_a] = share * buffer[index_a] + (1 - share) * buffer[index_b]
        mean = share * self.key_mean[a] + (1 - share) * self.key_mean[b]
        self.key_var[a] = share * (self.key_var[a] + (self.key_mean[a] - mean) ** 2) + (1 - share) * (
            self.key_var[b] + (self.key_mean[b] - mean) ** 2
        )
        self.key_mean[a] = mean
        self.key_count[a] = wa + wb
        self.slot_usage[a] += self.slot_usage[b]
        return b

    def _stabilize(self) -> None:
        """Restore plasticity for the next task: shrink-and-perturb the plastic GRU."""
        for param in self.cell.parameters():
            param.mul_(self.shrink).add_(self.perturb * th.randn_like(param))

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
