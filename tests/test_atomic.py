"""common.atomic: a writer killed with SIGKILL mid-write leaves the old file (or bundle), or none,
never half of one; a failed writer changes nothing; the next write clears what a dead one left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.atomic import replacing, replacing_dir, write_file
from engines.bundle import open_bundle, write_manifest

ROOT = Path(__file__).resolve().parent.parent

# Writes 64 KiB blocks (up to 640 MiB, slowly) through the helper, saying when it has begun.
SLOW_FILE = """
import sys, time
from common.atomic import replacing
with replacing(sys.argv[1]) as tmp, open(tmp, "wb") as out:
    for i in range(10000):
        out.write(bytes([i % 251]) * 65536)
        out.flush()
        if i == 8:
            print(tmp, flush=True)
        time.sleep(0.005)
"""

# Rebuilds a bundle in a temporary sibling, one slow file after another.
SLOW_BUNDLE = """
import sys, time
from pathlib import Path
from common.atomic import replacing_dir
with replacing_dir(sys.argv[1]) as tmp:
    for i in range(10000):
        (tmp / f"part{i}.bin").write_bytes(b"new" * 10000)
        if i == 3:
            print(tmp, flush=True)
        time.sleep(0.005)
"""


def _killed_mid_write(script: str, target: Path) -> Path:
    """Run `script` on `target`, SIGKILL it once it is writing; the temporary path it wrote to."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.exists(), "the writer never started"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    return tmp


def test_a_file_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "last_state.pt"
    old = os.urandom(100_000)
    target.write_bytes(old)
    tmp = _killed_mid_write(SLOW_FILE, target)
    assert target.read_bytes() == old  # not a byte of the new one
    # It was killed mid-write: its partial file is there, beside the target, under another name.
    assert tmp.parent == tmp_path and tmp.name.startswith(".last_state.pt.partial-")
    assert tmp.stat().st_size >= 9 * 65536
    # The next write replaces the file and removes the dead writer's leftover.
    write_file(target, b"new")
    assert target.read_bytes() == b"new" and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_state.pt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def test_a_first_file_writer_killed_mid_write_leaves_no_file(tmp_path):
    target = tmp_path / "report.json"
    _killed_mid_write(SLOW_FILE, target)
    assert not target.exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_failed_writer_changes_nothing(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["run.json"]
    with pytest.raises(RuntimeError):
        with replacing_dir(tmp_path / "bundle") as tmp:
            (tmp / "student.onnx").write_text("half")
            raise RuntimeError("export failed")
    assert os.listdir(tmp_path) == ["run.json"]


def _bundle(path: Path, text: str, card: dict | None = None) -> None:
    """A small bundle with real hashes (open_bundle verifies every file)."""
    path.mkdir()
    (path / "student.onnx").write_text(text)
    if card is not None:
        (path / "card.json").write_text(json.dumps(card))
    write_manifest(path, {"labels": ["joy"], "thresholds": [0.5], "preprocessing": {}, "precision": "fp32",
                          "graphs": {"student": "student.onnx"}})


def test_a_bundle_writer_killed_mid_write_leaves_the_old_bundle_which_still_verifies(tmp_path):
    bundle = tmp_path / "bundle"
    _bundle(bundle, "old graph")
    tmp = _killed_mid_write(SLOW_BUNDLE, bundle)
    assert tmp.is_dir() and tmp.parent == tmp_path and any(tmp.iterdir())  # the partial sibling
    opened = open_bundle(bundle)  # verifies every hash
    assert sorted(opened.manifest["files"]) == ["student.onnx"]
    assert (bundle / "student.onnx").read_text() == "old graph"
    # A new bundle replaces the old one whole; the dead writer's partial directory goes.
    with replacing_dir(bundle) as new:
        _bundle(new / "inner", "new graph")
        for p in (new / "inner").iterdir():
            p.rename(new / p.name)
        (new / "inner").rmdir()
    assert (open_bundle(bundle).path / "student.onnx").read_text() == "new graph"
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_keep_copies_the_bundle_and_a_replaced_file_never_changes_the_old_one(tmp_path):
    bundle = tmp_path / "bundle"
    _bundle(bundle, "graph", card={"v": 1})
    manifest = {k: v for k, v in open_bundle(bundle).manifest.items() if k not in ("files", "schema_version")}
    with replacing_dir(bundle, keep=True) as tmp:
        assert os.stat(tmp / "student.onnx").st_ino == os.stat(bundle / "student.onnx").st_ino  # a hard link
        write_file(tmp / "card.json", json.dumps({"v": 2}))
        write_manifest(tmp, manifest)
        # Until the swap the old bundle is whole, unchanged, and verifies.
        assert json.loads(open_bundle(bundle).path.joinpath("card.json").read_text()) == {"v": 1}
    opened = open_bundle(bundle)
    assert json.loads((bundle / "card.json").read_text()) == {"v": 2} and "card.json" in opened.manifest["files"]
    assert sorted(os.listdir(tmp_path)) == ["bundle"]
