"""Rollout buffer that stores recurrent states and serves truncated-BPTT sequence chunks."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer


class SequenceBatch(NamedTuple):
    """A minibatch of ``n_chunks`` sequence chunks of ``seq_len`` steps, flattened time-major."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    episode_starts: th.Tensor  # (seq_len, n_chunks)
    states: th.Tensor  # (n_chunks, state_size): the state before each chunk's first step
    chunks: th.Tensor  # (n_chunks,): which chunks of the rollout, as numbered by ``all_sequences``


class RecurrentRolloutBuffer(RolloutBuffer):
    """SB3 ``RolloutBuffer`` plus the recurrent state before each step.

    :param state_size: size of the policy's flat recurrent state
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        state_size: int,
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
    ) -> None:
        self.state_size = state_size
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        super().reset()
        self.states = np.zeros((self.buffer_size, self.n_envs, self.state_size), dtype=np.float32)

    def add_state(self, state: th.Tensor) -> None:
        """Store the state before the step that the next ``add`` call records."""
        self.states[self.pos] = state.cpu().numpy()

    def time_major_tensor(self, array: np.ndarray) -> th.Tensor:
        """``(steps, n_envs, ...)`` array as a tensor flattened to ``(steps * n_envs, ...)``."""
        return self.to_torch(array.reshape(self.buffer_size * self.n_envs, *array.shape[2:]))

    def _chunked_tensors(self, seq_len: int) -> tuple[dict[str, th.Tensor], th.Tensor]:
        """Rollout tensors as ``(seq_len, n_chunks, ...)``, chunk ``c * n_envs + e`` being env ``e``'s
        ``c``-th chunk, and the state before each chunk."""
        assert self.full, "the buffer must be full before sampling"
        chunks_per_env = self.buffer_size // seq_len

        def chunked(array: np.ndarray) -> th.Tensor:
            shaped = array.reshape(chunks_per_env, seq_len, self.n_envs, *array.shape[2:])
            return self.to_torch(
                np.swapaxes(shaped, 0, 1).reshape(seq_len, chunks_per_env * self.n_envs, *array.shape[2:])
            )

        tensors = {
            "observations": chunked(self.observations),
            "actions": chunked(self.actions),
            "old_values": chunked(self.values),
            "old_log_prob": chunked(self.log_probs),
            "advantages": chunked(self.advantages),
            "returns": chunked(self.returns),
            "episode_starts": chunked(self.episode_starts),
        }
        states = self.to_torch(self.states[::seq_len].reshape(chunks_per_env * self.n_envs, self.state_size))
        return tensors, states

    @staticmethod
    def _batch(tensors: dict[str, th.Tensor], states: th.Tensor, idx: th.Tensor) -> SequenceBatch:
        def flat(key: str) -> th.Tensor:
            picked = tensors[key][:, idx]
            return picked.reshape(picked.shape[0] * picked.shape[1], *picked.shape[2:])

        return SequenceBatch(
            observations=flat("observations"),
            actions=flat("actions"),
            old_values=flat("old_values").flatten(),
            old_log_prob=flat("old_log_prob").flatten(),
            advantages=flat("advantages").flatten(),
            returns=flat("returns").flatten(),
            episode_starts=tensors["episode_starts"][:, idx],
            states=states[idx],
            chunks=idx,
        )

    def all_sequences(self, seq_len: int) -> SequenceBatch:
        """Every chunk of the rollout, in order, as one batch."""
        tensors, states = self._chunked_tensors(seq_len)
        return self._batch(tensors, states, th.arange(states.shape[0], device=self.device))

    def get_sequences(self, batch_size: int, seq_len: int) -> Generator[SequenceBatch, None, None]:
        """Shuffled minibatches of whole chunks; resets inside a chunk are masks, not splits.

        :param batch_size: steps per minibatch (a multiple of ``seq_len``)
        :param seq_len: steps per chunk (divides ``buffer_size``)
        """
        tensors, states = self._chunked_tensors(seq_len)
        n_chunks = states.shape[0]
        per_batch = max(1, batch_size // seq_len)
        order = th.as_tensor(np.random.permutation(n_chunks), device=self.device)
        for start in range(0, n_chunks, per_batch):
            yield self._batch(tensors, states, order[start : start + per_batch])
