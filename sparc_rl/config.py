"""Shared helpers for the YAML data files (curricula and agent presets): lookup and strict parsing."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparc_rl.errors import ConfigError


def builtin_dir(kind: str) -> Path:
    """Folder of the built-in ``envs`` (curricula) or ``agents`` files.

    Installed wheels carry them in ``sparc_rl/_builtin``; a source checkout uses the top-level folder.
    """
    packaged = Path(str(resources.files("sparc_rl"))) / "_builtin" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / kind


def builtin_names(kind: str) -> list[str]:
    return sorted(path.stem for path in builtin_dir(kind).glob("*.yaml"))


def resolve_file(name_or_path: str | Path, kind: str, what: str) -> Path:
    """A built-in name or a path to a YAML file, with a clear error naming the choices."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{what} file {str(path)!r} does not exist.")
        return path
    candidate = builtin_dir(kind) / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = builtin_names(kind)
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Unknown {what} {str(name_or_path)!r}.{hint} Built-in: {', '.join(names)}; or pass a path to a YAML file."
    )


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read {what} file {str(path)!r}: {error}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} file {str(path)!r} is not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} file {str(path)!r} must hold a mapping (key: value lines), got {type(data).__name__}."
        )
    return data


def check_keys(data: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}.")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}.")
