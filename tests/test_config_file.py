"""config.toml against the option dataclasses, the one source of each setting's meaning and default."""
from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from common.settings import DEFAULT_CONFIG, KNOWN_SECTIONS, ConfigError, build, field_default, field_docs, setting_fields
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
    for f in setting_fields(cls):
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


def test_a_per_run_field_is_no_setting_and_a_section_that_names_one_is_refused():
    from trainer.text_teacher import TeacherConfig

    names = {f.name for f in setting_fields(TeacherConfig)}
    assert "labels" not in names and "kd_teacher" not in names and "max_len" in names
    assert "labels" not in DATA["teach"] and DATA["teach"]["max_len"] == TeacherConfig().max_len
    with pytest.raises(ConfigError, match=r"\[teach\] unknown key 'labels'"):
        build(TeacherConfig, {"labels": ["joy"]}, "teach")


def test_trainer_flags_set_their_own_commands_settings_only():
    from trainer.cli import build_parser, flag_overrides
    from trainer.config import load_config

    teach = build_parser().parse_args(["teach", "--data", "meld:x", "--out", "t", "--epochs", "5",
                                       "--budget-minutes", "2.5", "--speakers", "anonymous"])
    config = load_config(None, flag_overrides(teach))
    assert (config.teach.epochs, config.teach.max_train_seconds, config.teach.speakers) == (5, 150.0, "anonymous")
    assert config.train.epochs == load_config().train.epochs  # fit's epochs are not teach's
    fit = build_parser().parse_args(["fit", "--data", "meld:x", "--out", "r", "--epochs", "7"])
    config = load_config(None, flag_overrides(fit))
    assert config.train.epochs == 7 and config.teach.epochs == load_config().teach.epochs
    # No flag given: [teach] in the file (here an override) holds.
    plain = build_parser().parse_args(["teach", "--data", "meld:x", "--out", "t"])
    assert load_config(None, ["teach.max_len=64", *flag_overrides(plain)]).teach.max_len == 64
