"""Speaker attribution over many two-person sessions: who the stream says spoke each utterance.

  python benchmarks/attribution.py [--seeds 11,12,13,14,15,16] [--utterances 8] [--model BUNDLE] [--out FILE]

For each seed, `trainer synth --people 2` renders a session (A on the left, B on the right,
taking turns, only the speaker's mouth moving) and `realtime replay` runs it through the whole
pipeline (benchmarks/pipeline.py's replay_run).  Each face id of the stream is A or B by the
side of the frame its boxes keep to; each utterance message's `speaker` is then right, wrong
or null ("cannot be told") against the session's manifest, matched by media time (the message
overlapping the spoken span most).  The issue's target: at least 90%
of all utterances named right, none wrong.

Writes benchmarks/results/speaker_attribution.json (benchmarks.report): metrics accuracy (right
over all utterances), right, wrong, null, utterances, missed (utterances no message overlaps),
extra (messages overlapping no spoken utterance), per seed seedN_right / _wrong / _null, and nulls_on_first_turn (nulls on a speaker's
first utterance of the session, where a face's motion history is shortest).  Without --model,
a random-init bundle (attribution does not read the model's weights).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import check_tree, result_json, write  # noqa: E402


def sides(messages: list[dict], width: float) -> dict[int, str]:
    """Face id -> "A" (its boxes all left of the middle) or "B" (all right); ids that cross are left out."""
    centres: dict[int, list[float]] = {}
    for m in messages:
        for face in m.get("faces") or []:
            if face.get("id") is not None:
                centres.setdefault(face["id"], []).append(face["box"][0] + face["box"][2] / 2)
    return {i: "A" if max(c) < width / 2 else "B" for i, c in centres.items()
            if max(c) < width / 2 or min(c) > width / 2}


def score_session(messages: list[dict], truth: list[dict], width: float) -> dict:
    """right / wrong / null / missed of one session against its manifest.  Each spoken utterance
    is matched by media time: the utterance message overlapping its span most (the VAD may cut
    one utterance in two, or a message may come that holds no speech: `extra`)."""
    person = sides(messages, width)
    utterances = [m for m in messages if m["type"] == "utterance"]

    def overlap(u: dict, t: dict) -> float:
        return min(u["end"], t["end"]) - max(u["start"], t["start"])

    first: dict[str, int] = {}
    out = {"right": 0, "wrong": 0, "null": 0, "nulls_on_first_turn": 0, "missed": 0, "extra": 0,
           "named": [], "want": [t["speaker"] for t in truth]}
    used = set()
    for i, t in enumerate(truth):
        first.setdefault(t["speaker"], i)
        best = max(range(len(utterances)), key=lambda k: overlap(utterances[k], t), default=None)
        if best is None or overlap(utterances[best], t) <= 0:
            out["missed"] += 1
            out["named"].append("missed")
            continue
        used.add(best)
        speaker = utterances[best].get("speaker")
        got = None if speaker is None else person.get(speaker, "?")
        out["named"].append(got)
        if got is None:
            out["null"] += 1
            out["nulls_on_first_turn"] += int(first[t["speaker"]] == i)
        else:
            out["right" if got == t["speaker"] else "wrong"] += 1
    out["extra"] = sum(1 for k, u in enumerate(utterances) if k not in used
                       and not any(overlap(u, t) > 0 for t in truth))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="11,12,13,14,15,16", help="comma-separated synth seeds")
    parser.add_argument("--utterances", type=int, default=8, help="utterances per session")
    parser.add_argument("--model", type=Path, help="model bundle (default: a random-init bundle made here)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for the replays (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speaker_attribution.json")
    args = parser.parse_args(argv)
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The replays run this checkout's realtime package (pipeline.code_root).
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    started = time.perf_counter()
    import cv2

    from benchmarks.pipeline import replay_run
    from trainer.cli import main as trainer

    seeds = [int(s) for s in args.seeds.split(",")]
    metrics: dict = {"right": 0, "wrong": 0, "null": 0, "missed": 0, "extra": 0, "nulls_on_first_turn": 0,
                     "utterances": 0}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model:
            bundle = args.model
        else:
            from benchmarks.engine_latency import tiny_bundle

            bundle = tiny_bundle(work / "bundle", "fp32")
        for seed in seeds:
            out = work / f"s{seed}"
            trainer(["--no-progress", "synth", "--out", str(out), "--sessions", "1", "--seed", str(seed),
                     "--utterances", str(args.utterances), "--people", "2"])
            truth = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            media = out / truth[0]["file"]
            width = cv2.VideoCapture(str(media)).get(cv2.CAP_PROP_FRAME_WIDTH)
            run = replay_run(media, bundle, out, args.sets)
            if run is None:
                raise SystemExit(f"seed {seed}: the replay did not finish")
            result = score_session(run["messages"], truth, width)
            sessions[seed] = {"named": result.pop("named"), "want": result.pop("want")}
            for key, value in result.items():
                metrics[key] += value
                metrics[f"seed{seed}_{key}"] = value
            metrics["utterances"] += len(truth)
            print(f"seed {seed}: {sessions[seed]['named']} vs {sessions[seed]['want']}", flush=True)
    metrics["accuracy"] = metrics["right"] / max(1, metrics["utterances"])
    metrics["seeds"] = len(seeds)
    write(args.out, result_json("speaker_attribution", started, 0, metrics, sessions=sessions,
                                bundle=str(args.model) if args.model else "random-init tiny bundle",
                                targets={"accuracy": ">= 0.9", "wrong": "0"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
