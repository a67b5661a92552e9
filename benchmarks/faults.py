"""Kill each process of the pipeline's tree mid-utterance; the session must lose nothing (issue 25).

    python benchmarks/faults.py --model BUNDLE [--out benchmarks/results/faults.json]

Each run is a real `realtime serve` on a recorded session: its speech played in real time
into a PulseAudio null-sink microphone, its video as the camera.  While utterance K is
being spoken, one process of the tree gets SIGKILL: the fork server the stages are forked
from, multiprocessing's resource tracker, the camera or the microphone source, or a
processing stage (segmenter, ASR, faces, fusion).  A run passes when serve exits 0, every
spoken utterance comes out exactly once (matched by time), `seq` runs on without a gap, and
a process that had to be replaced was announced by a `restarted` status.

Writes metrics.lost_utterances and metrics.duplicates (both summed over every run; 0 is
the target), and each run's kill.  tests/test_faults.py uses the same harness on a replay
and on one live session.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.pipeline import (  # noqa: E402
    VirtualMicrophone, code_root, free_port, kill_tree, make_session, printed_clock, realtime_cmd)
from benchmarks.report import check_tree, result_json, write  # noqa: E402

# Every kind of process in serve's tree, and whether its death must be announced: the stages
# and sources are replaced (a `restarted` status); the fork server and the resource tracker
# are helpers whose death the session does not notice.
KINDS = {"fork-server": False, "resource-tracker": False, "camera": True, "microphone": True,
         "segmenter": True, "asr": True, "faces": True, "fusion": True}
REPLAY_KINDS = {"fork-server": False, "resource-tracker": False, "source": True}


def process_kind(pid: int) -> str | None:
    """The kind of a process of the tree: a stage's own name (rt-<stage>), or the helper it is."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if name.startswith("rt-"):
        return name[3:]
    if "multiprocessing.forkserver" in cmdline:
        return "fork-server"
    if "multiprocessing.resource_tracker" in cmdline:
        return "resource-tracker"
    return None


def tree(root: int) -> dict[str, list[int]]:
    """kind -> pids of that kind below root (stages are the fork server's children, so grandchildren)."""
    import psutil

    found: dict[str, list[int]] = {}
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        if (kind := process_kind(child.pid)) is not None:
            found.setdefault(kind, []).append(child.pid)
    return found


class Killer:
    """SIGKILL one process of each planned kind at its wall-clock moment, in a thread.

    plan: [(kind, wall time)]; `killed` records what was found and killed, and when.  The tree
    is watched all along: once the fork server has died, the stages it forked are no longer
    below the supervisor (they are reparented), but they are still ours to kill."""

    def __init__(self, root: int, plan: list[tuple[str, float]]):
        self.root, self.plan, self.killed, self.errors = root, sorted(plan, key=lambda p: p[1]), [], []
        self.seen: dict[int, str] = {}  # pid -> kind, of every process the tree has had
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _look(self) -> None:
        for kind, pids in tree(self.root).items():
            self.seen.update(dict.fromkeys(pids, kind))

    def _alive(self, kind: str) -> list[int]:
        from common.atomic import process_alive

        return [pid for pid, k in self.seen.items() if k == kind and process_alive(pid)
                and process_kind(pid) == kind]

    def _run(self) -> None:
        for kind, at in self.plan:
            while time.time() < at:
                self._look()
                time.sleep(min(0.05, max(0.0, at - time.time())))
            self._look()
            pids = self._alive(kind)
            if len(pids) != 1:
                self.errors.append(f"{kind}: {len(pids)} processes at the kill ({pids})")
                continue
            os.kill(pids[0], signal.SIGKILL)
            self.killed.append({"kind": kind, "pid": pids[0], "at": at})

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def mid_utterance(clock: float, rows: list[dict], k: int) -> float:
    """Wall time halfway through utterance k of the recording whose media time 0 is `clock`."""
    row = rows[min(k, len(rows) - 1)]
    return clock + (row["start"] + row["end"]) / 2


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while text not in (got := log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} (exit {proc.poll()}):\n{got[-3000:]}")
        time.sleep(0.05)
    return got


def live_session(media: Path, wav: Path, duration: float, rows: list[dict], bundle: Path, work: Path,
                 mic: VirtualMicrophone, kills: list[tuple[str, int]]) -> dict:
    """`realtime serve` with the wav played into the microphone and kills[i] = (kind, utterance K):
    that kind killed halfway through utterance K.  Its messages, log, exit code and kills."""
    messages, log = work / "live.jsonl", work / "serve.log"
    cmd = realtime_cmd("serve", "--model", str(bundle), "--camera", str(media), "--microphone", "pulse",
                       "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--jsonl", str(messages),
                       "--duration", str(duration + 15), "--quiet", sets=[])

    players: list[subprocess.Popen] = []

    def play(proc: subprocess.Popen) -> float:
        wait_for_line(log, "serving session", proc)
        players.append(subprocess.Popen(["paplay", "--device=virtmic_sink", str(wav)], env=mic.env))
        return time.time()  # paplay's start: the wav's sample 0, its start-up aside

    run = _killed_run(cmd, mic.env, log, messages, rows, kills, play)
    for player in players:
        if player.wait(timeout=60) != 0:
            run["errors"].append(f"paplay exited with {player.returncode}")
    return run


def replay_session(media: Path, rows: list[dict], bundle: Path, work: Path, kills: list[tuple[str, int]]) -> dict:
    """`realtime replay --realtime` of media (at its own pace, so a kill lands mid-utterance), kills as above."""
    out, log = work / "replay.jsonl", work / "replay.log"
    cmd = realtime_cmd("replay", str(media), "--model", str(bundle), "--out", str(out), "--all-messages",
                       "--realtime", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet", sets=[])
    return _killed_run(cmd, None, log, out, rows, kills,
                       lambda proc: printed_clock(wait_for_line(log, "at its own pace", proc)))


def _killed_run(cmd: list[str], env: dict | None, log: Path, messages: Path, rows: list[dict],
                kills: list[tuple[str, int]], start) -> dict:
    """Run cmd; start(proc) returns the wall clock of media time 0, from which each kill is timed."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=code_root())
        try:
            clock = start(proc)
            killer = Killer(proc.pid, [(kind, mid_utterance(clock, rows, k)) for kind, k in kills])
            code = proc.wait(timeout=300)
            killer.join(5)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
    return {"messages": read_jsonl(messages), "log": log.read_text(), "exit": code, "killed": killer.killed,
            "errors": killer.errors}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def session_offset(utterances: list[dict], rows: list[dict]) -> float:
    """Live, session time runs ahead of the recording's by when the player started: the median
    start difference of the utterances each row overlaps most (0 when none do)."""
    import numpy as np

    diffs = [u["start"] - r["start"] for r in rows for u in utterances
             if abs(u["start"] - r["start"]) < 2.0]
    return float(np.median(diffs)) if diffs else 0.0


def score(run: dict, rows: list[dict], live: bool) -> dict:
    """lost (spoken utterances with no message), duplicates (those with more than one), gaps in seq,
    and the `restarted` statuses."""
    messages = run["messages"]
    utterances = [m for m in messages if m["type"] == "utterance"]
    offset = session_offset(utterances, rows) if live else 0.0
    heard = [[u for u in utterances if u["start"] - offset < r["end"] and r["start"] < u["end"] - offset]
             for r in rows]
    # A message matched by two rows counts once for each; one that matches none is extra.
    matched = {id(u) for h in heard for u in h}
    seqs = [m["seq"] for m in messages]
    return {"spoken": len(rows), "utterances": len(utterances),
            "lost": sum(not h for h in heard), "duplicates": sum(max(0, len(h) - 1) for h in heard),
            "unmatched": sum(id(u) not in matched for u in utterances),
            "seq_ok": seqs == list(range(len(seqs))),
            "restarted": [m["detail"] for m in messages if m["type"] == "status" and m["state"] == "restarted"],
            "states": [m["state"] for m in messages if m["type"] == "status"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the bundle serve runs")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"the processes to kill, one live run each (default: all of {', '.join(KINDS)})")
    parser.add_argument("--utterances", type=int, default=5, help="utterances in the recorded session")
    parser.add_argument("--kill-during", type=int, default=2, help="the utterance (0-based) each kill lands in")
    parser.add_argument("--seed", type=int, default=4242, help="the session's seed (trainer synth)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = parser.parse_args(argv)
    check_tree()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        media, wav, rows, duration = make_session(work / "session", args.seed, args.utterances)
        mic = VirtualMicrophone(work)
        try:
            for i, kind in enumerate(kinds):
                run_dir = work / f"run{i}"
                run_dir.mkdir()
                print(f"faults: killing {kind} during utterance {args.kill_during} ({i + 1}/{len(kinds)})",
                      file=sys.stderr, flush=True)
                run = live_session(media, wav, duration, rows, Path(args.model), run_dir, mic,
                                   [(kind, args.kill_during)])
                scored = score(run, rows, live=True)
                # A replaced process is announced by name; a helper's death is not announced at all.
                announced = (any(kind in detail for detail in scored["restarted"]) if KINDS[kind]
                             else bool(scored["restarted"]))
                runs.append({"kind": kind, "exit": run["exit"], "killed": run["killed"], "errors": run["errors"],
                             **scored, "announced": announced,
                             "ok": (run["exit"] == 0 and not run["errors"] and scored["lost"] == 0
                                    and scored["duplicates"] == 0 and scored["seq_ok"]
                                    and announced == KINDS[kind])})
                print(f"faults: {kind}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        finally:
            mic.close()
    metrics = {"lost_utterances": sum(r["lost"] for r in runs), "duplicates": sum(r["duplicates"] for r in runs),
               "runs_ok": sum(r["ok"] for r in runs), "runs": len(runs),
               "processes_killed": [k["kind"] for r in runs for k in r["killed"]]}
    result = result_json("faults", started, threads=0, metrics=metrics, runs=runs,
                         session={"utterances": len(rows), "duration_s": round(duration, 2),
                                  "kill_during_utterance": args.kill_during})
    write(Path(args.out), result)
    return 0 if metrics["runs_ok"] == metrics["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
