"""Soak: live serving for an hour, looped: no utterance lost, memory flat, latency steady (issue 12 §4).

  python benchmarks/soak.py [--minutes 60] [--model BUNDLE] [--out FILE] [--set SECTION.KEY=VALUE ...]

One `realtime serve` runs the whole time, as a user runs it (benchmarks/pipeline.py's live
machinery): the camera is a synthetic session's mp4 played again and again (`--camera-loop`),
the microphone a PulseAudio null sink into which `paplay` plays the session's audio in real
time, once after the other, for --minutes.  A subscriber on the public socket, connected
before serve binds it, takes every message.  Every utterance of every play is a spoken
utterance with a known end of speech (from the audio itself, pipeline.speech_ends), on the
wall clock (the play's start + its offset in the file) and on serve's media clock (the play's
shift, found per play by laying the utterance messages over the known speech).  An utterance
message "holds" a spoken utterance when its span holds that end of speech.

Targets (in `metrics`; `targets` says which are met):
- lost_utterances = 0: spoken utterances no utterance message on the public socket holds.
  Also counted: duplicate_utterances (messages beyond the first holding the same speech, or
  repeating another's span), unmatched_messages (holding no end of speech: the first piece of
  an utterance the VAD cut, or noise), merged_messages (holding two or more), text_mismatches
  (held by a message whose text is far from what was said: the pairing gone wrong, or the ASR),
  socket_missing_vs_jsonl (utterances serve wrote to --jsonl but the socket did not deliver;
  messages_missing_vs_jsonl for every type) and seq_missing (gaps in `seq` on the socket, any
  type).  The stream's first message waits for the subscriber (stream.wait_subscribers=1).
- rss_growth_mb <= 50: resident memory summed over serve's process tree (the supervisor, every
  stage, restarted ones too), median over the last rss_window_s of playing minus the median
  over rss_window_s after the first minute (rss_baseline_s; a third of the run if shorter than
  3 minutes); per stage too (rss_growth_mb_STAGE).
- latency_p95_drift_percent <= 10: end of speech -> utterance message (`timing.emitted_at` minus
  the wall time the end of speech was played; paplay's start-up counts as latency), its p95
  over the last latency_window_s minus that over the first, in percent of the first; the window
  is ten minutes, or a sixth of a shorter run.  A negative drift (faster at the end) meets it.
- restarts (0 expected): `status` messages with state `restarted` (docs/PROTOCOL.md)
  that serve published (its --jsonl); restarts_on_socket: those the subscriber received.

Also: utterances spoken and received, latency p50/p95/p99 overall, the p95 of every window
(`latency_windows`), the tree's RSS every minute (`rss_timeline`), CPU seconds per stage.
Progress is printed every minute.  A random-init bundle unless --model (speed and memory do
not depend on the weights).  Writes benchmarks/results/soak.json (or --out); exits 0 whether
or not the targets are met (the file says), non-zero only when the run itself fails.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.pipeline import (  # noqa: E402
    VirtualMicrophone, free_port, live_run, make_session, media_offset, median, pct)
from benchmarks.report import check_tree, result_json, write  # noqa: E402
from benchmarks.transcripts import normalise  # noqa: E402

TARGETS = {"lost_utterances": ("==", 0), "rss_growth_mb": ("<=", 50.0), "latency_p95_drift_percent": ("<=", 10.0)}
HOLD_TOLERANCE_S = 0.1  # a message holds an end of speech up to this far past its own end (as pipeline.py)
TEXT_MATCH = 0.5  # difflib ratio of normalised texts below which a held utterance counts as a text mismatch


# --------------------------------------------------------------------------- scoring (pure)


def loop_shifts(rows: list[dict], plays: list[float], utterances: list[dict], duration: float,
                track_s: float = 1.5) -> list[float]:
    """Per play, the media time (serve's session clock) of the wav's sample 0.

    Every message is emitted after its media end is heard, so the wall time of media time 0 is
    at most min(emitted_at - end), and the first play's shift at least its start minus that, a
    few seconds more (paplay's start-up, the smallest latency): searched from 3 s below to 10 s
    above.  Each later play is searched within track_s of the previous play's shift plus the time
    between their starts: so audio the microphone dropped (media time falling behind the wall
    clock) moves the pairing along, and the next play's messages never fit better.  A play that
    no message overlaps keeps that prediction."""
    if not utterances:
        return [p - plays[0] for p in plays]
    clock = min(u["timing"]["emitted_at"] - u["end"] for u in utterances)
    shifts: list[float] = []
    for i, played in enumerate(plays):
        if i == 0:
            expected, lo, hi = played - clock, played - clock - 3, played - clock + 10
        else:
            expected = shifts[-1] + played - plays[i - 1]
            lo, hi = expected - track_s, expected + track_s
        near = [u for u in utterances if u["end"] >= lo and u["start"] <= hi + duration]
        shift = media_offset(rows, near, lo, hi) if near else expected
        shifts.append(shift if overlap(rows, near, shift) > 0 else expected)
    return shifts


def overlap(rows: list[dict], utterances: list[dict], shift: float) -> float:
    """Seconds of known speech (start to end of speech, moved by shift) that the messages' spans cover."""
    return sum(max(0.0, min(r["speech_end"] + shift, u["end"]) - max(r["start"] + shift, u["start"]))
               for r in rows for u in utterances)


def spoken_utterances(rows: list[dict], plays: list[float], shifts: list[float]) -> list[dict]:
    """Every utterance of every play: its end of speech on the wall clock and on the media clock."""
    return [{"play": i, "index": j, "text": row["text"], "wall_end": played + row["speech_end"],
             "media_end": shift + row["speech_end"]}
            for i, (played, shift) in enumerate(zip(plays, shifts)) for j, row in enumerate(rows)]


def match(spoken: list[dict], utterances: list[dict], tolerance: float = HOLD_TOLERANCE_S) -> dict:
    """Pair spoken utterances with the utterance messages that hold their end of speech.

    Returns spoken, received (held by at least one message), lost (the spoken records no
    message holds), duplicates (messages beyond the first holding the same speech, plus
    messages that hold none but repeat an earlier message's span), unmatched (messages holding
    no speech), merged (messages holding two or more), text_mismatches, and latencies:
    (wall end of speech, seconds to the message), from the message holding the end with the
    latest end (the last piece, if the VAD cut it), its first copy if repeated."""
    holders: list[list[int]] = []
    held_by: dict[int, int] = {}
    for s in spoken:
        found = [k for k, u in enumerate(utterances) if u["start"] <= s["media_end"] <= u["end"] + tolerance]
        holders.append(found)
        for k in found:
            held_by[k] = held_by.get(k, 0) + 1
    lost, latencies, duplicates, mismatches = [], [], 0, 0
    for s, found in zip(spoken, holders):
        if not found:
            lost.append(s)
            continue
        duplicates += len(found) - 1
        last_end = max(utterances[k]["end"] for k in found)
        k = min((k for k in found if utterances[k]["end"] == last_end),
                key=lambda k: utterances[k]["timing"]["emitted_at"])
        latencies.append((s["wall_end"], utterances[k]["timing"]["emitted_at"] - s["wall_end"]))
        # A message holding two utterances' speech holds two texts: no single one to compare.
        if held_by[k] == 1 and text_similarity(s["text"], utterances[k]["text"]) < TEXT_MATCH:
            mismatches += 1
    unmatched = [k for k in range(len(utterances)) if k not in held_by]
    spans = [(u["start"], u["end"]) for u in utterances]
    duplicates += sum(1 for k in unmatched if spans[k] in spans[:k])
    return {"spoken": len(spoken), "received": len(spoken) - len(lost), "lost": lost, "duplicates": duplicates,
            "unmatched": len(unmatched), "merged": sum(1 for n in held_by.values() if n > 1),
            "text_mismatches": mismatches, "latencies": latencies}


def text_similarity(said: str, heard: str) -> float:
    return difflib.SequenceMatcher(None, normalise(said), normalise(heard)).ratio()


def latency_windows(latencies: list[tuple[float, float]], start: float, run_s: float, window_s: float) -> dict:
    """p95 latency of the first and the last window_s of the run (by end of speech, seconds from
    start), its drift in percent of the first, and the p95 of each consecutive window."""
    def p95(lo: float, hi: float) -> tuple[float, int]:
        # [lo, hi), the run's last window [lo, run_s] (an end of speech may fall on the run's end)
        inside = [lat for t, lat in latencies if lo <= t - start < hi or (hi >= run_s and t - start == hi)]
        return pct(inside, 95), len(inside)

    first, n_first = p95(0.0, window_s)
    last, n_last = p95(run_s - window_s, run_s)
    windows, lo = [], 0.0
    while lo < run_s - 1e-6:
        hi = min(lo + window_s, run_s)
        value, n = p95(lo, hi)
        windows.append({"from_s": round(lo, 1), "to_s": round(hi, 1), "utterances": n,
                        "latency_p95_ms": round(1000 * value, 1) if n else None})
        lo = hi
    return {"first_p95_s": first, "last_p95_s": last, "first_n": n_first, "last_n": n_last,
            "drift_percent": 100.0 * (last - first) / first if n_first and n_last and first > 0 else float("nan"),
            "windows": windows}


def rss_growth(history: list[tuple[float, dict[str, float]]], start: float, baseline_s: float, end_s: float,
               window_s: float) -> dict:
    """Tree RSS (MB) after baseline_s and at end_s (seconds from start): the medians of the
    samples in [baseline_s, baseline_s + window_s) and (end_s - window_s, end_s], the nearest
    sample when a window holds none; growth = end - baseline, in total and per name."""
    def at(lo: float, hi: float, near: float) -> dict[str, float]:  # [lo, hi) after baseline_s, (lo, hi] to end_s
        inside = [rss for t, rss in history if (lo <= t - start < hi if near == lo else lo < t - start <= hi)]
        if not inside:
            inside = [min(history, key=lambda h: abs(h[0] - start - near))[1]]
        names = {n for rss in inside for n in rss}
        per = {n: median([rss.get(n, 0.0) for rss in inside]) for n in names}
        return {"total": median([sum(rss.values()) for rss in inside]), **per}

    base = at(baseline_s, baseline_s + window_s, baseline_s)
    end = at(end_s - window_s, end_s, end_s)
    names = sorted((set(base) | set(end)) - {"total"})
    return {"baseline_mb": base["total"], "end_mb": end["total"], "growth_mb": end["total"] - base["total"],
            "per_name": {n: end.get(n, 0.0) - base.get(n, 0.0) for n in names}}


def seq_check(messages: list[dict]) -> tuple[int, int]:
    """(missing, repeated): seq numbers skipped (a session's seq starts at 0), and ones that did
    not increase, per session."""
    last: dict[str, int] = {}
    missing = repeated = 0
    for m in messages:
        seq, prev = m["seq"], last.get(m["session"], -1)
        if seq > prev + 1:
            missing += seq - prev - 1
        elif seq <= prev:
            repeated += 1
        last[m["session"]] = max(seq, prev)
    return missing, repeated


def restarts(messages: list[dict]) -> int:
    return sum(1 for m in messages if m["type"] == "status" and m.get("state") == "restarted")


def meets(metrics: dict) -> dict:
    out = {}
    for key, (op, target) in TARGETS.items():
        value = metrics.get(key)
        ok = value is not None and value == value and (value == target if op == "==" else value <= target)
        out[key] = {"value": value, "target": f"{op} {target}", "met": bool(ok)}
    return out


# --------------------------------------------------------------------------- the run


class Subscriber:
    """Every message of the public stream, connected before serve binds it (SUB reconnects alone,
    also to a restarted fusion stage).  Keeps utterance and status bodies, and every message's
    type, session and seq; `counts` per type."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.kept: list[dict] = []
        self.seqs: list[dict] = []
        self.counts: dict[str, int] = {}
        self.malformed = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        import zmq

        from realtime.protocol import decode

        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)  # never drop on this side: what is missing went missing upstream
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
        sock.connect(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                try:
                    _, body = decode(sock.recv_multipart())
                except ValueError:
                    self.malformed += 1
                    continue
                kind = body["type"]
                self.counts[kind] = self.counts.get(kind, 0) + 1
                self.seqs.append({"type": kind, "session": body.get("session"), "seq": body.get("seq", -1)})
                if kind in ("utterance", "status"):
                    self.kept.append(dict(body, received_at=time.time()))
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.kept if m["type"] == kind]


class Progress:
    """A line every minute, so a person watching an hour-long run sees it is alive."""

    def __init__(self, rows: list[dict], loops: int, minutes: float, subscriber: Subscriber, every_s: float = 60):
        self.rows, self.loops, self.minutes, self.sub, self.every = rows, loops, minutes, subscriber, every_s
        self.plays: list[float] = []
        self.monitor = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def on_play(self, i: int, played_at: float, monitor) -> None:
        self.plays.append(played_at)
        if i == 0:
            self.monitor = monitor
            self._thread.start()

    def line(self) -> str:
        now = time.time()
        spoken = sum(1 for p in self.plays for r in self.rows if p + r["speech_end"] <= now)
        return (f"soak {(now - self.plays[0]) / 60:5.1f}/{self.minutes:g} min: play {len(self.plays)}/{self.loops}, "
                f"spoken {spoken}, utterance messages {self.sub.counts.get('utterance', 0)}, "
                f"restarts seen {restarts(self.sub.kept)}, tree RSS {self.monitor.current_rss_mb():.0f} MB, "
                f"load {os.getloadavg()[0]:.1f}")

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            print(self.line(), flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def soak_metrics(rows: list[dict], duration: float, run: dict, sub: Subscriber, rss_window_s: float) -> dict:
    """Every metric of one soak run (and the details that do not fit a flat dict, under `_`)."""
    plays = run["plays"]
    start, run_s = plays[0], plays[-1] + duration - plays[0]
    utterances = sub.of("utterance")
    shifts = loop_shifts(rows, plays, utterances, duration)
    found = match(spoken_utterances(rows, plays, shifts), utterances)
    window_s = min(600.0, run_s / 6)
    drift = latency_windows(found["latencies"], start, run_s, window_s)
    baseline_s = min(60.0, run_s / 3)
    window_rss = min(rss_window_s, run_s / 6)
    memory = rss_growth(run["rss"], start, baseline_s, run_s, window_rss)
    jsonl_utt = [m for m in run["messages"] if m["type"] == "utterance"]
    socket_seqs = {(m["session"], m["seq"]) for m in utterances}
    missing, repeated = seq_check(sub.seqs)
    lat = [lat for _, lat in found["latencies"]]
    metrics = {
        "minutes": round(run_s / 60, 2), "plays": len(plays), "play_s": round(duration, 2),
        "utterances_per_play": len(rows),
        "utterances_spoken": found["spoken"], "utterances_received": found["received"],
        "lost_utterances": len(found["lost"]), "duplicate_utterances": found["duplicates"],
        "utterance_messages": len(utterances), "unmatched_messages": found["unmatched"],
        "merged_messages": found["merged"], "text_mismatches": found["text_mismatches"],
        "jsonl_utterance_messages": len(jsonl_utt),
        "socket_missing_vs_jsonl": sum(1 for m in jsonl_utt if (m["session"], m["seq"]) not in socket_seqs),
        "messages_missing_vs_jsonl": len({(m["session"], m["seq"]) for m in run["messages"]}
                                         - {(m["session"], m["seq"]) for m in sub.seqs}),
        "seq_missing": missing, "seq_repeated": repeated, "malformed_messages": sub.malformed,
        "window_messages": sub.counts.get("window", 0),
        # Every published message is in serve's --jsonl; a restarted fusion stage publishes its
        # `restarted` status as it binds again, which a subscriber still reconnecting can miss.
        "restarts": restarts(run["messages"]), "restarts_on_socket": restarts(sub.kept),
        "devices_lost": sum(1 for m in sub.of("status") if m.get("state") == "lost"),
        "latency_p50_ms": round(1000 * pct(lat, 50), 1), "latency_p95_ms": round(1000 * pct(lat, 95), 1),
        "latency_p99_ms": round(1000 * pct(lat, 99), 1), "latency_max_ms": round(1000 * max(lat, default=np.nan), 1),
        "latency_window_s": round(window_s, 1),
        "latency_p95_first_window_ms": round(1000 * drift["first_p95_s"], 1),
        "latency_p95_last_window_ms": round(1000 * drift["last_p95_s"], 1),
        "latency_first_window_utterances": drift["first_n"], "latency_last_window_utterances": drift["last_n"],
        "latency_p95_drift_percent": round(drift["drift_percent"], 2),
        "rss_baseline_s": round(baseline_s, 1), "rss_window_s": round(window_rss, 1),
        "rss_after_first_minute_mb": round(memory["baseline_mb"], 1), "rss_end_mb": round(memory["end_mb"], 1),
        "rss_growth_mb": round(memory["growth_mb"], 1),
        **{f"rss_growth_mb_{n}": round(v, 1) for n, v in memory["per_name"].items()},
        **{f"cpu_s_{n}": round(p["cpu_s"], 1) for n, p in run["procs"].items()},
        **{f"peak_rss_mb_{n}": round(p["peak_mb"], 1) for n, p in run["procs"].items()},
    }
    timeline, minute = [], 0
    for t, rss in run["rss"]:
        if t - start >= 60 * minute:
            timeline.append([round((t - start) / 60, 2), round(sum(rss.values()), 1)])
            minute = int((t - start) // 60) + 1
    details = {"latency_windows": drift["windows"], "rss_timeline": timeline,
               "lost": [{k: (round(v - start, 2) if k == "wall_end" else v) for k, v in s.items() if k != "media_end"}
                        for s in found["lost"][:100]],
               "status": [{k: m.get(k) for k in ("state", "detail")} for m in run["messages"]
                          if m["type"] == "status"]}
    return {**metrics, "_": details}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/soak.py                 # the hour, on record\n"
               "  HF_HUB_OFFLINE=1 BENCH_ALLOW_DIRTY=1 .venv/bin/python benchmarks/soak.py --minutes 3 "
               "--out /tmp/soak.json   # a trial")
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to serve (default 60)")
    parser.add_argument("--model", type=Path, help="model bundle (default: a random-init bundle made here)")
    parser.add_argument("--seed", type=int, default=4242, help="synthetic session seed")
    parser.add_argument("--utterances", type=int, default=8, help="utterances in the looped session (default 8)")
    parser.add_argument("--asr-model", default="tiny.en", help="the Whisper model (as [asr] model)")
    parser.add_argument("--asr-threads", type=int, default=2, help="as [asr] cpu_threads")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="setting passed to serve, e.g. asr.speculative=false (repeatable)")
    parser.add_argument("--rss-every", type=float, default=5.0, metavar="S",
                        help="sample the process tree's RSS every S seconds (default 5)")
    parser.add_argument("--rss-window", type=float, default=30.0, metavar="S",
                        help="median RSS over S seconds after the first minute and at the end (default 30)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="also copy serve's log and --jsonl file here (to look into a lost utterance)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json",
                        help="default benchmarks/results/soak.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [pythonpath])])  # pipeline.code_root
    # wait_subscribers: the stream's first message waits for this script's subscriber (PUB/SUB
    # drops what is sent before a subscriber joins), so the socket's record starts at seq 0.
    sets = [f"asr.model={args.asr_model}", f"asr.cpu_threads={args.asr_threads}", "stream.wait_subscribers=1",
            *args.sets]
    started, load_at_start = time.perf_counter(), list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        media, wav, rows, duration = make_session(work / "session", args.seed, args.utterances)
        if args.model:
            bundle = args.model
        else:
            from benchmarks.engine_latency import tiny_bundle

            bundle = tiny_bundle(work / "bundle", "fp32")
        loops = max(2, round(args.minutes * 60 / (duration + 0.3)))  # paplay's start-up: a few tenths per play
        print(f"session: {duration:.1f} s, {len(rows)} utterances; {loops} plays, about {loops * duration / 60:.1f} "
              f"min", flush=True)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        sub = Subscriber(endpoint)
        progress = Progress(rows, loops, args.minutes, sub)
        mic = VirtualMicrophone(work)
        try:
            run = live_run(media, wav, duration, bundle, work, mic, sets, loops=loops, endpoint=endpoint,
                           serve_args=("--camera-loop",), monitor={"every_s": 1.0, "rss_every_s": args.rss_every},
                           on_play=progress.on_play)
        finally:
            progress.stop()
            mic.close()
            time.sleep(1.0)  # the last messages on their way to the subscriber
            sub.stop()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for name in ("serve.log", "live.jsonl"):
                    if (work / name).is_file():
                        shutil.copy(work / name, args.keep / name)
        metrics = soak_metrics(rows, duration, run, sub, args.rss_window)
    details = metrics.pop("_")
    checked = meets(metrics)
    metrics["targets_met"] = int(all(c["met"] for c in checked.values()))
    for key, c in checked.items():
        print(f"{key}: {c['value']} (target {c['target']}): {'met' if c['met'] else 'MISSED'}", flush=True)
    write(args.out, result_json(
        "soak", started, args.asr_threads, metrics, targets=checked, **details,
        bundle=str(args.model) if args.model else "random-init bundle (speed and memory do not depend on weights)",
        settings=sets, session={"seed": args.seed, "utterances": len(rows), "seconds": round(duration, 2),
                                "texts": [r["text"] for r in rows]},
        load_average={"start": load_at_start, "end": list(os.getloadavg())},  # 1, 5, 15 min: is the machine quiet?
        notes="one `realtime serve` throughout, camera the session's mp4 looped, microphone a PulseAudio null sink "
              "fed by paplay once per play; messages taken from the public socket; latency: utterance message "
              "emitted_at minus (play start + end of speech in the file, by energy)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
