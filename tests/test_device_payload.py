"""benchmarks/device_payload.py: a model folder goes to the GPU machine in float16 parts and
comes back whole; a missing or damaged part is named, never loaded."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks import device_payload as dp


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "1_Pooling" / "config.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    torch.manual_seed(0)
    weights = {"embed": torch.randn(300, 64), "ids": torch.arange(10)}
    save_file(weights, str(folder / dp.WEIGHTS))
    return folder


def test_parts_join_into_the_float16_rounded_weights(model_dir, tmp_path):
    payload, keep = tmp_path / "payload", tmp_path / "keep"
    parts = dp.pack("m", model_dir, chunk_mb=0.01, payload=payload, state={"commit": "abc", "clean": True})
    assert len(parts) > 2 and all(p.stat().st_size <= 0.01 * 2**20 for p in parts)
    dest = dp.unpack("m", tmp_path / "out", payload=payload, keep=keep)
    got, original = load_file(str(dest / dp.WEIGHTS)), load_file(str(model_dir / dp.WEIGHTS))
    assert got["embed"].dtype == torch.float32 and torch.equal(got["embed"], original["embed"].half().float())
    assert torch.equal(got["ids"], original["ids"])  # integers travel as they are
    assert (dest / "config.json").read_text() == (model_dir / "config.json").read_text()
    assert (dest / "1_Pooling" / "config.json").is_file()
    assert json.loads((dest / dp.MANIFEST).read_text())["git"]["commit"] == "abc"


def test_parts_may_arrive_over_several_calls(model_dir, tmp_path):
    """Each call carries some parts; the stash keeps them until the last call unpacks."""
    payload, keep = tmp_path / "payload", tmp_path / "keep"
    parts = dp.pack("m", model_dir, chunk_mb=0.01, payload=payload)
    held = tmp_path / "held"
    held.mkdir()
    for p in parts[1:]:  # a call that carried only the first part and meta
        p.rename(held / p.name)
    dp.stash(["m"], payload, keep)
    for p in held.iterdir():  # the next call brings the rest
        p.rename(payload / "m" / p.name)
    (payload / "m" / "meta").rename(tmp_path / "meta_elsewhere")  # not carried again: the stash has it
    assert dp.unpack("m", tmp_path / "out", payload=payload, keep=keep).is_dir()


def test_a_missing_part_is_named(model_dir, tmp_path):
    payload = tmp_path / "payload"
    parts = dp.pack("m", model_dir, chunk_mb=0.01, payload=payload)
    parts[1].unlink()
    with pytest.raises(SystemExit, match=parts[1].name):
        dp.unpack("m", tmp_path / "out", payload=payload, keep=tmp_path / "keep")
    assert not (tmp_path / "out").exists()


def test_a_damaged_part_fails_the_checksum(model_dir, tmp_path):
    payload = tmp_path / "payload"
    parts = dp.pack("m", model_dir, chunk_mb=0.01, payload=payload)
    data = bytearray(parts[0].read_bytes())
    data[-1] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="SHA-256"):
        dp.unpack("m", tmp_path / "out", payload=payload, keep=tmp_path / "keep")


def test_a_folder_comes_back_in_pieces(model_dir, tmp_path):
    original = load_file(str(model_dir / dp.WEIGHTS))
    sent = tmp_path / "sent"
    sent.mkdir()
    pieces = dp.send_back(model_dir, sent, "student", piece=20_000)
    assert len(pieces) > 1 and all(p.stat().st_size <= 20_000 for p in pieces)
    dest = dp.receive(sent, "student", tmp_path / "back")
    got = load_file(str(dest / dp.WEIGHTS))
    assert got["embed"].dtype == torch.float32 and torch.equal(got["embed"], original["embed"].half().float())
    assert (dest / "1_Pooling" / "config.json").is_file()
    with pytest.raises(SystemExit, match="no other.tar.part"):
        dp.receive(sent, "other", tmp_path / "back2")
