"""Shared helpers for the YAML data files (curricula and agent presets): lookup and strict parsing."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable
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
    if not str(name_or_path).strip():
        choices = ", ".join(builtin_names(kind))
        raise ConfigError(f"The {what} is empty: give a built-in name ({choices}) or a YAML file.")
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder: give a YAML file in it, or a built-in name.")
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


def file_safe_name(value: Any, where: str, key: str = "name") -> str:
    """A name that also names files and folders (run folders, ``task-<i>-<name>.zip``) and TensorBoard
    tags: text without path separators."""
    name = str(value)
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f"{where}: {key} {name!r} must be non-empty text without '/' or '\\': it names files and folders."
        )
    return name


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


def import_named_module(module: str, reference: str, where: str) -> types.ModuleType:
    """Import the module a ``"module:name"`` reference in a data file names (an env id or a plugin
    class), as one clear error when that fails: a user's module that raises is not our traceback."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"{where}: cannot import {module!r} for {reference!r} ({error}); name a module importable from "
            "the current folder or an installed one, as in 'my_package.envs:Name'."
        ) from None
    except Exception as error:
        raise ConfigError(
            f"{where}: importing {module!r} for {reference!r} failed: {type(error).__name__}: {error}"
        ) from None


def check_keys(data: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}.")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}.")


def check_settings(settings: dict[str, Any], target: Callable[..., Any], set_elsewhere: set[str], where: str) -> None:
    """Settings that will be passed to ``target`` (a function, or a class: its ``__init__`` and, where that
    passes ``**kwargs`` on, its bases') as keyword arguments: an unknown name, or a value a YAML file
    cannot mean for its type hint, is an error now rather than a traceback later in training.

    :param set_elsewhere: parameters of ``target`` these settings may not give
    """
    allowed: set[str] = set()
    hints: dict[str, Any] = {}
    for function in _signatures(target):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                allowed.add(name)
        hints = {**typing.get_type_hints(function), **hints}
    allowed = {name for name in allowed if name not in set_elsewhere and name != "self" and not name.startswith("_")}
    for name, value in settings.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown setting {name!r}.{hint} Allowed: {', '.join(sorted(allowed))}.")
        if name in hints and not _fits(value, hints[name]):
            note = ""
            if isinstance(value, str) and _fits(1.0, hints[name]):
                with contextlib.suppress(ValueError):  # only text that is a number gets the note
                    note = f" (YAML reads {value} as text: write {float(value)!r})"
            raise ConfigError(f"{where}: {name!r} must be {_describe(hints[name])}, got {value!r}{note}.")


def _signatures(target: Callable[..., Any]) -> list[Callable[..., Any]]:
    """``target``, or a class's ``__init__`` and those of its bases that it passes ``**kwargs`` on to."""
    if not isinstance(target, type):
        return [target]
    functions = []
    for cls in target.__mro__:
        init = vars(cls).get("__init__")
        if init is not None:
            functions.append(init)
            if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
                break
    return functions


def _alternatives(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML can be ``hint``; hints this check does not know let it through."""
    for option in _alternatives(hint):
        origin = typing.get_origin(option) or option
        if option is Any or (option is type(None) and value is None):
            return True
        if origin is Callable or origin is type or (option in (int, float) and isinstance(value, bool)):
            continue  # YAML gives no callables or classes, and a YAML true is not a number
        if (option is float and isinstance(value, int)) or (isinstance(origin, type) and isinstance(value, origin)):
            return True
        if origin not in _YAML_TYPES:
            return True
    return False


_YAML_TYPES = (bool, int, float, str, dict, list, tuple, type(None))


def _describe(hint: Any) -> str:
    """What a YAML file may give for ``hint`` (callables and classes cannot come from YAML)."""
    names = []
    for option in _alternatives(hint):
        origin = typing.get_origin(option) or option
        if origin is Callable or origin is type:
            continue
        names.append("null" if option is type(None) else getattr(origin, "__name__", str(option)))
    return " or ".join(names) or "set in Python, not in a file"
