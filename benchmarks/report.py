"""The result file every benchmark writes: benchmarks/results/NAME.json.

Keys: benchmark, commit, command, wall_seconds, environment, metrics (a flat object
of numbers; F1 values in percent), plus whatever a benchmark adds (model, notes).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def result_json(name: str, started: float, threads: int, metrics: dict, **extra) -> dict:
    from benchmarks.engine_latency import environment

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"benchmark": name, "commit": commit or None,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "environment": environment(threads), **extra,
            "metrics": {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in metrics.items()}}


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1))
    print(f"wrote {out}")
