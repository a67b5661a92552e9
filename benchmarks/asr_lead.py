"""How much audio before a VAD-found utterance the ASR should read: WER on dev speech.

  python benchmarks/asr_lead.py [--leads 0 100 200 300 500] [--sessions 24] [--threads 1]

Silero scores a soft onset ("the", "how") as speech a frame or two late, so an utterance's
padded start ([vad] speech_pad_ms before the VAD's onset) can fall inside its first word, and
Whisper, hearing a word begun, mishears it ("the train" -> "that rain").  [asr] lead_ms lets
the ASR read more audio before the utterance (never the previous utterance's speech) without
changing the utterance itself.  This runs the real segmenter over whole dev sessions (`trainer
synth`, seeds 101 and 202, as benchmarks/asr_window.py; not the pipeline benchmark's 4242) and
transcribes every utterance it finds once per lead, with the default [asr] settings otherwise.

Per lead: the WER of each session's utterances joined against its script, and the difference
from lead 0 with a 95% paired bootstrap interval over sessions.  espeak-ng speech, not
people's: the figures choose a default, they do not promise a WER on real speech.

Writes benchmarks/results/asr_lead.json (benchmarks.report keys).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.asr_window import DEV_SEEDS, corpus, errors, paired_interval  # noqa: E402
from benchmarks.report import check_tree, result_json, write  # noqa: E402

CHUNK = 1600  # samples fed at a time, as the microphone's 100 ms chunks


def segments(audio: np.ndarray, lead_ms: int, asr_pad_ms: int, vad=None) -> list[np.ndarray]:
    """What the ASR reads of each utterance the segmenter finds in `audio`: lead, then speech.
    vad: VadOptions (default: the defaults)."""
    from realtime.stages.segmenter import StreamingSegmenter

    segmenter = StreamingSegmenter(vad, asr_pad_ms=asr_pad_ms, asr_lead_ms=lead_ms)
    found = []
    for i in range(0, len(audio), CHUNK):
        found += segmenter.feed(audio[i:i + CHUNK], i / 16000)
    found += segmenter.flush()
    return [np.concatenate([s.asr_lead, s.audio[:s.asr_samples]]) for s in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, nargs="+", default=[0, 100, 200, 300, 500],
                        help="[asr] lead_ms values (0, the reference, is always scored)")
    parser.add_argument("--sessions", type=int, default=24, help="sessions per corpus (10 utterances each)")
    parser.add_argument("--threads", type=int, default=1, help="[asr] cpu_threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/asr_lead.json")
    args = parser.parse_args(argv)
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from realtime.stages.asr import AsrOptions, Transcriber

    started = time.perf_counter()
    sessions: dict[tuple[int, str], tuple[np.ndarray, list[str]]] = {}  # (seed, file) -> audio, script
    with tempfile.TemporaryDirectory(prefix="bench-asr-lead-") as tmp:
        for seed in DEV_SEEDS:
            for audio, row, name in corpus(Path(tmp) / str(seed), seed, args.sessions):
                sessions.setdefault((seed, name), (audio, []))[1].append(row["text"])
    options = AsrOptions(device="cpu", cpu_threads=args.threads)
    transcriber = Transcriber(options)
    leads = [0, *sorted(set(args.leads) - {0})]
    metrics: dict[str, float] = {"sessions": len(sessions),
                                 "utterances": sum(len(script) for _, script in sessions.values())}
    scored: dict[int, np.ndarray] = {}  # lead -> (errors, words) per session
    for lead in leads:
        errs, found = [], 0
        for audio, script in tqdm(sessions.values(), desc=f"lead {lead} ms", leave=False):
            heard = segments(audio, lead, options.pad_ms)
            found += len(heard)
            errs.append(errors(" ".join(script), " ".join(transcriber.transcribe(a) for a in heard)))
        scored[lead] = np.array(errs)
        metrics[f"lead{lead}_wer"] = round(float(scored[lead][:, 0].sum() / scored[lead][:, 1].sum()), 4)
        metrics[f"lead{lead}_utterances_found"] = found
        print(f"lead {lead} ms: WER {metrics[f'lead{lead}_wer']:.4f} over {found} utterances", flush=True)
    rng = np.random.default_rng(0)
    for lead in leads[1:]:
        low, high = paired_interval(scored[lead], scored[0], rng)
        metrics[f"lead{lead}_wer_delta"] = round(metrics[f"lead{lead}_wer"] - metrics["lead0_wer"], 4)
        metrics[f"lead{lead}_wer_delta_ci_low"], metrics[f"lead{lead}_wer_delta_ci_high"] = round(low, 4), round(high, 4)
    write(args.out, result_json(
        "asr_lead", started, args.threads, metrics, model=options.model, dev_seeds=list(DEV_SEEDS),
        notes="utterances found by the real segmenter over whole sessions; WER of each session's transcripts "
              "joined against its script; delta CI: 95% paired bootstrap over sessions; espeak-ng speech, "
              "dev corpora only"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
