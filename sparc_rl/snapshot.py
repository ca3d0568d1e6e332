"""What a model checkpoint does not carry: the random generators, the training envs in mid-episode and
the recurrent state between rollouts. Saved next to each step checkpoint, it lets a run resumed inside
a task continue exactly as the uninterrupted run would.

The snapshot is a cloudpickle file, like the ``data`` member of an SB3 zip: only load runs you trust.
"""

from __future__ import annotations

import inspect
import io
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnvWrapper

from sparc_rl.errors import CheckpointError
from sparc_rl.io import atomic_path

SNAPSHOT_VERSION = 1

#: per-rollout state of SB3's, SparcPPO's and sb3-contrib RecurrentPPO's loops, where a model has it
_LOOP_ATTRIBUTES = (
    "_last_obs",
    "_last_original_obs",
    "_last_episode_starts",
    "_last_state",
    "_last_lstm_states",
    "ep_info_buffer",
    "ep_success_buffer",
)


def _rebuild_vec_env_wrapper(cls: type[VecEnvWrapper], state: dict[str, Any]) -> VecEnvWrapper:
    wrapper = cls.__new__(cls)
    wrapper.__dict__.update(state)
    wrapper.class_attributes = dict(inspect.getmembers(cls))
    return wrapper


class _SnapshotPickler(cloudpickle.Pickler):
    """cloudpickle, with SB3's VecEnv wrappers (``VecTransposeImage`` on image observations) pickled
    without their ``class_attributes``, a copy of their class's members that holds unpicklable ABC
    internals; it is rebuilt from the class on load."""

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, VecEnvWrapper)
            and "class_attributes" in vars(obj)
            # VecNormalize pickles itself (without its env)
            and not any("__getstate__" in vars(klass) for klass in type(obj).__mro__ if klass is not object)
        ):
            state = {name: value for name, value in vars(obj).items() if name != "class_attributes"}
            return _rebuild_vec_env_wrapper, (type(obj), state)
        return super().reducer_override(obj)


def snapshot_path(checkpoint: Path) -> Path:
    """The snapshot that belongs to a step checkpoint: ``step-<n>.zip`` -> ``step-<n>.snapshot.pkl``."""
    return checkpoint.with_suffix(".snapshot.pkl")


def save_snapshot(model: BaseAlgorithm, path: Path) -> bool:
    """Write ``model``'s training envs, loop state and the global random generators to ``path``.

    :return: False (with a warning, and nothing written) when the training envs cannot be pickled,
        e.g. subprocess envs: a run resumed inside a task then continues with fresh random draws.
    """
    data = {
        "version": SNAPSHOT_VERSION,
        "random": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": th.get_rng_state(),
            # only a process that uses CUDA has generators there; asking others would start CUDA in them
            "cuda": th.cuda.get_rng_state_all() if th.cuda.is_initialized() else None,
        },
        "env": model.get_env(),
        "loop": {name: getattr(model, name) for name in _LOOP_ATTRIBUTES if hasattr(model, name)},
    }
    buffer = io.BytesIO()
    try:
        _SnapshotPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(data)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        warnings.warn(
            f"The training envs cannot be pickled ({error}); a run resumed inside a task will continue "
            "with fresh random draws instead of exactly.",
            stacklevel=2,
        )
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return True


def load_snapshot(path: Path) -> dict[str, Any]:
    """Read and check a snapshot written by :func:`save_snapshot`; nothing is applied yet.

    :raise CheckpointError: if the file is damaged or from another version
    """
    fix = "delete it to resume this task with fresh random draws."
    try:
        data = pickle.loads(path.read_bytes())
        version = data["version"]
        missing = sorted({"random", "env", "loop"} - set(data))
    except Exception as error:  # any unpickling failure means the same thing to the user
        raise CheckpointError(
            f"Resume snapshot {str(path)!r} is damaged ({type(error).__name__}: {error}); {fix}"
        ) from None
    if version != SNAPSHOT_VERSION:
        raise CheckpointError(
            f"Resume snapshot {str(path)!r} has version {version}, this sparc-rl reads {SNAPSHOT_VERSION}; {fix}"
        )
    if missing:
        raise CheckpointError(f"Resume snapshot {str(path)!r} is damaged (no {', '.join(missing)}); {fix}")
    return dict(data)


def restore_snapshot(model: BaseAlgorithm, snapshot: dict[str, Any]) -> None:
    """Put back what :func:`load_snapshot` read: the training envs (replacing ``model``'s), the loop state
    and, last, the random generators, so the next draw is the one the saved run would have made."""
    replaced, env = model.get_env(), snapshot["env"]
    model.set_env(env, force_reset=False)
    if replaced is not None and replaced is not env:
        replaced.close()
    for name, value in snapshot["loop"].items():
        setattr(model, name, value)
    generators = snapshot["random"]
    random.setstate(generators["python"])
    np.random.set_state(generators["numpy"])
    th.set_rng_state(generators["torch"])
    if generators["cuda"] is not None and th.cuda.is_available():
        th.cuda.set_rng_state_all(generators["cuda"])
