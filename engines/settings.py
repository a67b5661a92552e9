"""Typed settings read from `config.toml`.

Every stage keeps its options in a dataclass next to the code that uses them
(`realtime.segmenter.VadOptions`, `realtime.asr.AsrOptions`, ...).  This module
is the one place that turns a TOML table into such a dataclass: it rejects
unknown keys and values of the wrong type with an error that names the key,
so a typo in config.toml never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

# The config file is shared by the runtime and the trainer.  Each side reads its
# own sections; this list lets either side reject a section nobody reads.
KNOWN_SECTIONS = frozenset(
    {"capture", "features", "fusion", "vad", "asr", "faces", "model", "stream", "pipeline", "synth", "train", "loss"}
)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """Read a config file (the repo's config.toml when path is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        if path == DEFAULT_CONFIG:
            return {}  # installed without the repo checkout: all defaults
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - KNOWN_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{unknown[0]}]; known sections: {', '.join(sorted(KNOWN_SECTIONS))}"
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (from `--set`); values are parsed as TOML."""
    data = {k: dict(v) for k, v in data.items()}
    for item in overrides:
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        if section not in KNOWN_SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section [{section}]")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word such as cpu or tiny.en is a string
        data.setdefault(section, {})[key] = value
    return data


def build(cls: type[T], table: Mapping[str, Any] | None, section: str) -> T:
    """Build dataclass `cls` from a TOML table, checking keys and value types."""
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(
                f"[{section}] unknown key {key!r}; known keys: {', '.join(sorted(fields))}"
            )
        table[key] = _coerce(value, hints[key], f"{section}.{key}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check `value` against a simple type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # TOML has nan and inf; no setting means either, and every range check passes NaN.
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
    return value
