"""Crash-safe files: everything is written to a temporary file in the same folder, then renamed."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from sparc_rl.errors import CheckpointError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
    # created as open() would (mode 0o666 less the umask), not mkstemp's owner-only 0o600, so that
    # others who may read the run folder (a shared TensorBoard, a teammate) still can
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_model_atomically(model: Any, path: Path) -> None:
    """``model.save`` (SB3 zip) through a temporary file."""
    with atomic_path(path) as tmp:
        model.save(tmp)
        # SB3 appends ".zip" when the name lacks it; our temporary name ends in ".zip" already.


def task_checkpoint_path(run_dir: Path, stage: int, task: str) -> Path:
    """Where a run keeps the model as task ``stage`` left it: ``checkpoints/task-<i>-<name>.zip``."""
    return run_dir / "checkpoints" / f"task-{stage}-{task}.zip"


def task_of_checkpoint(path: Path) -> int | None:
    """The task index in a :func:`task_checkpoint_path` name, or ``None`` for other checkpoints."""
    match = re.fullmatch(r"task-(\d+)-.+\.zip", path.name)
    return int(match[1]) if match else None


def check_checkpoint_file(path: Path) -> None:
    """Fail with a clear message for a missing, truncated or non-SB3 checkpoint before loading it."""
    if path.is_dir():
        task_ends = {
            index: zip_path
            for zip_path in path.glob("checkpoints/task-*.zip")
            if (index := task_of_checkpoint(zip_path)) is not None
        }
        hint = f", e.g. the last task's: {str(task_ends[max(task_ends)])!r}" if task_ends else ""
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint: give a model .zip{hint}.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is corrupt or truncated ({error}); use an earlier checkpoint of the run."
        ) from None
    if broken is not None:
        raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt (bad member {broken!r}); use an earlier one.")
    if not {"data", "policy.pth"} <= names:
        raise CheckpointError(f"{str(path)!r} is not a saved sparc-rl / SB3 model (no 'data' and 'policy.pth').")


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages a run depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("sparc-rl", "torch", "stable-baselines3", "sb3-contrib", "gymnasium", "minigrid", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
