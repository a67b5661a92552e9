"""Typed settings read from `config.toml`.

Every stage keeps its options in a dataclass next to the code that uses them
(`realtime.stages.segmenter.VadOptions`, `realtime.stages.asr.AsrOptions`, ...).  This module
is the one place that turns a TOML table into such a dataclass: it rejects
unknown keys and values of the wrong type with an error that names the key,
so a typo in config.toml never silently falls back to a default.

The dataclasses are also the one source of each setting's meaning and default:
a field's doc is the comment after it, continued by the full-line comments right
below it.  `render_config` writes config.toml from them (scripts/write_config.py),
and a test checks that the committed file is that text.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import math
import textwrap
import tokenize
import tomllib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from common.errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # the stubs' protocol of a dataclass; no runtime module

T = TypeVar("T", bound="DataclassInstance")

# The config file is shared by the runtime and the trainer.  Each side reads its
# own sections; this table lets either side reject a section nobody reads.  It is
# also config.toml's order of sections and each section's comment.
KNOWN_SECTIONS = {
    "features": "preprocessing shared by training and serving; stored in the bundle",
    "vad": "streaming voice activity detection (Silero, from faster-whisper)",
    "asr": "faster-whisper",
    "capture": "live sources of `realtime serve`",
    "faces": "face detection (OpenCV Haar cascade) and cropping",
    "model": "the emotion model the pipeline runs",
    "fusion": "the fusion stage",
    "stream": "the public emotion stream (ZeroMQ PUB, JSON; see docs/PROTOCOL.md)",
    "pipeline": "the processes and their queues",
    "synth": "`trainer synth`: the synthetic corpus",
    "teach": "`trainer teach`: the text teacher (TelME 3.2.2), fine-tuned on a corpus's dialogues",
    "train": "`trainer fit`",
    "loss": "`trainer fit`: weight of each term of trainer.losses.total_loss (0 removes it)",
    "recipe": "`trainer recipe real`: the default bundle from real data",
}

CONFIG_HEADER = """\
# Settings of every stage of the runtime (`realtime`) and of the trainer (`trainer`).
# Every key is optional: a missing key takes the default shown here. An unknown key or a
# value of the wrong type is an error that names it. Any key can be overridden on the
# command line with --set SECTION.KEY=VALUE (the value is TOML: --set asr.beam_size=5).
# A commented-out key has no default TOML can write (None): set it to a value to use one.
# Generated from the option dataclasses' defaults and field comments by
# `python scripts/write_config.py`: edit those, then rerun it.
"""
COMMENT_COLUMN = 30  # where config.toml's comments start

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(UserError, ValueError):
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
    unknown = sorted(set(data) - set(KNOWN_SECTIONS))
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


def per_run(**field_args: Any) -> Any:
    """A dataclass field that each run fills in (from its data or its command line), not a
    setting: config.toml has no key for it, and a section that names one is an error."""
    return dataclasses.field(metadata={"per_run": True}, **field_args)


def setting_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of an option dataclass that are settings of its section."""
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("per_run")]


def build(cls: type[T], table: Mapping[str, Any] | None, section: str) -> T:
    """Build dataclass `cls` from a TOML table, checking keys and value types."""
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in setting_fields(cls)}
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


# --------------------------------------------------------------------------- config.toml from the dataclasses


def field_docs(cls: type) -> dict[str, str]:
    """The doc of each field of dataclass `cls`, read from its source: the comment
    after the field, continued by the full-line comments right below it (lines
    joined with newlines; "" for a field without a comment)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line number -> comment text after "# "
    code: set[int] = set()  # line numbers that hold code
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].removeprefix(" ").rstrip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    docs = {}
    class_def = ast.parse(source).body[0]  # the source of a class is its class statement
    assert isinstance(class_def, ast.ClassDef), f"{cls!r} is not a class"
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = node.end_lineno
            assert line is not None  # ast.parse sets every node's positions
            doc = [comments[line]] if line in comments else []
            while doc and line + 1 in comments and line + 1 not in code:
                line += 1
                doc.append(comments[line])
            docs[node.target.id] = "\n".join(doc)
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is dataclasses.MISSING:
        raise TypeError(f"field {f.name!r} has no default")
    return f.default_factory()


def toml_value(value: Any) -> str:
    """A default as TOML writes it (strings in JSON's escapes, which TOML shares)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _commented(text: str, doc: str) -> list[str]:
    """`text` with `doc` as comments from COMMENT_COLUMN, one line per doc line."""
    first, *rest = doc.split("\n")
    pad = text.ljust(COMMENT_COLUMN) if len(text) < COMMENT_COLUMN - 1 else text + "  "
    return [f"{pad}# {first}".rstrip()] + [f"{'':{COMMENT_COLUMN}}# {line}".rstrip() for line in rest]


def render_config(classes: Mapping[str, type]) -> str:
    """config.toml: every section of KNOWN_SECTIONS (its dataclass from `classes`), every
    field with its default and doc; a field whose default is None is commented out."""
    out = [CONFIG_HEADER.rstrip("\n"), ""]
    for section, about in KNOWN_SECTIONS.items():
        cls = classes[section]
        docs = field_docs(cls)
        out += _commented(f"[{section}]", about)
        for f in setting_fields(cls):
            if not docs[f.name]:
                raise ValueError(f"{cls.__name__}.{f.name} ([{section}]) has no doc comment")
            default = field_default(f)
            key = f"# {f.name} =" if default is None else f"{f.name} = {toml_value(default)}"
            out += _commented(key, docs[f.name])
        out.append("")
    return "\n".join(out)
