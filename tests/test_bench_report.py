"""benchmarks/report.py: every result names its code, and a dirty checkout is refused."""
from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from benchmarks import report


def git(repo, *args) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv(report.ALLOW_DIRTY, raising=False)
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("results/\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_clean_checkout_records_its_commit(repo):
    (repo / "results").mkdir()
    (repo / "results" / "out.json").write_text("{}")  # ignored by git: still clean
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    assert report.git_state(repo) == {"commit": head, "clean": True}


@pytest.mark.parametrize("change", ["edit", "untracked"])
def test_dirty_checkout_is_refused(repo, change):
    if change == "edit":
        (repo / "code.py").write_text("x = 2\n")
    else:
        (repo / "new.py").write_text("y = 1\n")
    with pytest.raises(report.DirtyTree, match=report.ALLOW_DIRTY):
        report.git_state(repo)


def test_dirty_checkout_allowed_records_the_diff(repo, monkeypatch):
    monkeypatch.setenv(report.ALLOW_DIRTY, "1")
    (repo / "code.py").write_text("x = 2\n")
    state = report.git_state(repo)
    assert state["clean"] is False
    assert state["commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert state["diff_sha256"] == hashlib.sha256(git(repo, "diff", "HEAD", "--binary")).hexdigest()
    (repo / "code.py").write_text("x = 3\n")
    assert report.git_state(repo)["diff_sha256"] != state["diff_sha256"]  # another change, another hash


def test_result_records_clean_next_to_commit_as_the_run_began(repo, monkeypatch):
    monkeypatch.setattr(report, "ROOT", repo)
    monkeypatch.setattr(report, "_started_state", None)
    monkeypatch.setattr(report, "environment", lambda threads: {"threads": threads})
    started = report.check_tree()
    (repo / "code.py").write_text("x = 2\n")  # edited while the benchmark runs
    result = report.result_json("b", time.perf_counter(), 1, {"f1": 1.0})
    keys = list(result)
    assert keys.index("clean") == keys.index("commit") + 1
    assert result["clean"] is True and result["commit"] == started["commit"]


def test_copied_checkout_names_the_commit_it_was_copied_from(repo, monkeypatch):
    """The GPU machine's copy has a stale .git of its own: with BENCH_COPIED_CHECKOUT=1 the state
    recorded here when the copy was made wins, and says where it came from."""
    recorded = report.write_source_state(repo)  # SOURCE_STATE is git-ignored in the project
    assert recorded == {"commit": git(repo, "rev-parse", "HEAD").decode().strip(), "clean": True}
    (repo / "code.py").write_text("x = 2\n")  # what the copy's own git would call a change
    with pytest.raises(report.DirtyTree):
        report.git_state(repo)
    monkeypatch.setenv("BENCH_COPIED_CHECKOUT", "1")
    state = report.git_state(repo)
    assert {k: state[k] for k in ("commit", "clean")} == recorded
    assert report.SOURCE_STATE in state["state_from"]


def test_a_dirty_checkout_cannot_record_a_source_state(repo):
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(report.DirtyTree):
        report.write_source_state(repo)
    assert not (repo / report.SOURCE_STATE).exists()
