from __future__ import annotations

import pytest

from common.settings import ConfigError, DEFAULT_CONFIG
from realtime.config import load_config as load_realtime
from trainer.config import load_config as load_trainer


def test_repo_config_loads_for_both_sides():
    rt, tr = load_realtime(DEFAULT_CONFIG), load_trainer(DEFAULT_CONFIG)
    assert rt.stream.endpoint == "tcp://127.0.0.1:5555"
    assert tr.preprocessing.tubelet == (2, 16, 16)
    assert tr.train.dim == 96


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[asr]\nbeam_sise = 3\n")
    with pytest.raises(ConfigError, match=r"\[asr\] unknown key 'beam_sise'"):
        load_realtime(path)


def test_unknown_section_and_bad_type_are_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[asrr]\nmodel = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown section \[asrr\]"):
        load_realtime(path)
    path.write_text("[train]\nepochs = 'many'\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_trainer(path)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match="chunk_ms"):
        load_realtime(None, ["pipeline.chunk_ms=1"])


def test_overrides_parse_toml_values_and_bare_words():
    cfg = load_realtime(None, ["asr.beam_size=5", "asr.model=base", "faces.sample_fps=2"])
    assert (cfg.asr.beam_size, cfg.asr.model, cfg.faces.sample_fps) == (5, "base", 2.0)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_realtime(None, ["beam_size=5"])


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://10.1.2.3:5555", "udp://x"])
def test_stream_must_stay_on_loopback(endpoint):
    with pytest.raises(ConfigError, match="endpoint"):
        load_realtime(None, [f"stream.endpoint='{endpoint}'"])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_realtime(tmp_path / "nope.toml")


@pytest.mark.parametrize("override, named", [
    ("asr.partial_every_s=-1", "partial_every_s"),
    ("features.text_context_turns=4", "text_pooling"),  # context needs mask pooling
    ("features.text_pooling='cls'", "text_pooling"),
])
def test_text_and_partial_settings_are_checked(override, named):
    with pytest.raises(ConfigError, match=named):
        (load_realtime if override.startswith("asr") else load_trainer)(None, [override])
