"""config.toml against the option dataclasses, the one source of each setting's meaning and default."""
from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from engines.settings import DEFAULT_CONFIG, KNOWN_SECTIONS, build, field_default, field_docs
from scripts.write_config import render, section_classes

CLASSES = section_classes()
DATA = tomllib.loads(DEFAULT_CONFIG.read_text())


def section_text(section: str) -> str:
    """The lines of config.toml from [section] to the next section header."""
    text = DEFAULT_CONFIG.read_text()
    start = text.index(f"\n[{section}]")
    end = text.find("\n[", start + 1)
    return text[start:end if end >= 0 else None]


def test_every_section_has_a_dataclass():
    assert set(DATA) == set(KNOWN_SECTIONS) == set(CLASSES)


@pytest.mark.parametrize("section", sorted(KNOWN_SECTIONS))
def test_keys_are_fields_with_their_defaults(section):
    cls, table = CLASSES[section], DATA[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(table) <= set(fields), f"[{section}] keys that are no field of {cls.__name__}"
    built = build(cls, table, section)  # the values as the program reads them (lists -> tuples, ints -> floats)
    for key in table:
        assert getattr(built, key) == field_default(fields[key]), f"[{section}] {key}"


@pytest.mark.parametrize("section", sorted(KNOWN_SECTIONS))
def test_every_field_is_in_the_file_and_documented(section):
    cls, table = CLASSES[section], DATA[section]
    commented_out = set(re.findall(r"^# (\w+) =", section_text(section), re.MULTILINE))
    for f in dataclasses.fields(cls):
        # None has no TOML form: such a key is shown commented out
        assert f.name in (commented_out if field_default(f) is None else table), f"[{section}] {f.name} missing"
        assert field_docs(cls)[f.name], f"{cls.__name__}.{f.name} has no doc comment"


def test_committed_file_is_the_generated_one():
    # After changing an option dataclass: python scripts/write_config.py
    assert DEFAULT_CONFIG.read_text() == render()


def test_field_docs_read_the_comment_and_its_continuation_lines():
    @dataclasses.dataclass
    class Options:
        plain: int = 1
        one: str = "a # not a comment"  # the doc
        two: float = 2.0  # first line
        # second line
        three: tuple[int, ...] = dataclasses.field(default_factory=tuple)  # last

    assert field_docs(Options) == {"plain": "", "one": "the doc", "two": "first line\nsecond line",
                                   "three": "last"}
