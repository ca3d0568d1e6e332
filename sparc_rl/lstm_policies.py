"""sb3-contrib's recurrent policies, with the LSTM run over whole sequences during training.

RecurrentPPO's buffer cuts every minibatch into sequences at episode starts, so a padded sequence
can only start an episode at its first step. sb3-contrib's ``_process_sequence`` only takes its
fast path (one LSTM call for the sequence) when no step starts an episode, and otherwise runs the
LSTM one step at a time (sb3-contrib issue #113): in a profile of 10,240 DoorKey steps with 10 epochs,
those per-step calls took 38% of the run and the backward pass through them 53%. The policies below
reset the initial state once and take the fast path whenever the starts are all at the first step:
the same computation, run as one LSTM call.
"""

from __future__ import annotations

import torch as th
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
)
from torch import nn


def process_sequence(
    features: th.Tensor,
    lstm_states: tuple[th.Tensor, th.Tensor],
    episode_starts: th.Tensor,
    lstm: nn.LSTM,
) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
    """Drop-in for ``RecurrentActorCriticPolicy._process_sequence``.

    :param features: ``(n_seq * max_length, features_dim)``, sequence-major
    :param lstm_states: hidden and cell states at the start of each sequence, ``(n_layers, n_seq, dim)``
    :param episode_starts: ``(n_seq * max_length,)``, 1 where an episode starts
    :param lstm: the LSTM to run
    :return: the LSTM output ``(n_seq * max_length, dim)`` and the final states
    """
    n_seq = lstm_states[0].shape[1]
    starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
    if th.any(starts[1:] != 0.0):
        outputs, states = RecurrentActorCriticPolicy._process_sequence(features, lstm_states, episode_starts, lstm)
        return outputs, states  # type: ignore[return-value]  # sb3-contrib annotates the (h, c) pair as one tensor
    keep = (1.0 - starts[0]).view(1, n_seq, 1)
    sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    output, states = lstm(sequence, (keep * lstm_states[0], keep * lstm_states[1]))
    return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states


class MlpLstmPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's ``MlpLstmPolicy`` with :func:`process_sequence`."""

    _process_sequence = staticmethod(process_sequence)  # type: ignore[assignment]


class CnnLstmPolicy(RecurrentActorCriticCnnPolicy):
    """sb3-contrib's ``CnnLstmPolicy`` with :func:`process_sequence`."""

    _process_sequence = staticmethod(process_sequence)  # type: ignore[assignment]
