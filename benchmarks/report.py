"""The result file every benchmark writes: benchmarks/results/NAME.json.

Keys: benchmark, commit, clean, (diff_sha256,) command, wall_seconds, environment, metrics
(a flat object of numbers; F1 values in percent), plus whatever a benchmark adds (model, notes).

A result must name the code that produced it, so a benchmark refuses to run in a checkout
with changes (`git status --porcelain` not empty; files git ignores do not count).  With
BENCH_ALLOW_DIRTY=1 it runs anyway and records clean: false and diff_sha256, the SHA-256 of
`git diff HEAD` (untracked files are not in it).  Call `check_tree()` first thing, so a
dirty checkout is refused before hours of work and the result records the state the run
started from.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common.atomic import write_file

ROOT = Path(__file__).resolve().parent.parent
ALLOW_DIRTY = "BENCH_ALLOW_DIRTY"
SOURCE_STATE = ".source_state.json"  # a copied checkout's git state (write_source_state)

_started_state: dict | None = None  # set by check_tree(): the checkout as the run began


class DirtyTree(RuntimeError):
    """The checkout has uncommitted changes and BENCH_ALLOW_DIRTY=1 is not set."""


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True)


def git_state(root: Path = ROOT) -> dict:
    """{"commit", "clean"} of the checkout at root, plus "diff_sha256" when it is dirty.

    A copy of a checkout whose .git is not the source's (the GPU machine's copy), run with
    BENCH_COPIED_CHECKOUT=1, takes the state recorded in SOURCE_STATE when the copy was made
    (`write_source_state`).
    Raises DirtyTree for a dirty checkout (or no git checkout at all) unless the
    environment sets BENCH_ALLOW_DIRTY=1.
    """
    if os.environ.get("BENCH_COPIED_CHECKOUT") == "1" and (root / SOURCE_STATE).is_file():
        copied = json.loads((root / SOURCE_STATE).read_text())
        return {**copied, "state_from": f"{SOURCE_STATE}, written when this copy of the checkout was made"}
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    commit = head.stdout.decode().strip() if head.returncode == 0 else None
    clean = head.returncode == 0 and status.returncode == 0 and not status.stdout.strip()
    state = {"commit": commit, "clean": clean}
    if clean:
        return state
    if os.environ.get(ALLOW_DIRTY) != "1":
        changes = status.stdout.decode(errors="replace").strip() or status.stderr.decode(errors="replace").strip()
        raise DirtyTree(f"{root} has uncommitted changes, so the result could not name its code:\n{changes}\n"
                        f"commit them, or set {ALLOW_DIRTY}=1 to record the diff's SHA-256 instead")
    diff = _git(root, "diff", "HEAD", "--binary")
    state["diff_sha256"] = hashlib.sha256(diff.stdout).hexdigest() if diff.returncode == 0 else None
    return state


def write_source_state(root: Path = ROOT) -> dict:
    """Record the checkout's state in SOURCE_STATE (git-ignored) before its working tree is
    copied to a machine without .git; refuses a dirty checkout like check_tree."""
    state = git_state(root)
    write_file(root / SOURCE_STATE, json.dumps(state) + "\n")
    return state


def check_tree() -> dict:
    """At a benchmark's start: refuse a dirty checkout now, and keep the state for result_json."""
    global _started_state
    _started_state = git_state(ROOT)
    return _started_state


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{platform.machine()} {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return platform.machine()


def environment(threads: int) -> dict:
    import onnxruntime

    env = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "cpu_count": os.cpu_count(), "machine": _cpu_model(), "platform": platform.platform(),
           "threads": threads}
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        env["torch"] = None
    return env


def result_json(name: str, started: float, threads: int, metrics: dict, **extra) -> dict:
    state = _started_state or git_state(ROOT)
    return {"benchmark": name, **state,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "environment": environment(threads), **extra,
            "metrics": {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in metrics.items()}}


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1))
    print(f"wrote {out}")
