"""How short a window Whisper's encoder can read per utterance: speed and WER on dev speech.

  python benchmarks/asr_window.py [--windows 10 15 20] [--sessions 24] [--threads 1]

faster-whisper pads every utterance to Whisper's 30 s window, and on the CPU that encoder pass
is most of an utterance's ASR time.  realtime.stages.asr.Transcriber reads a shorter window
([asr] window_s, twice the utterance at least).  This scores each window against faster-whisper's
own transcription (window_s = 30), on the same utterances, with the same model and threads:

- singles: every utterance of two synthetic corpora (`trainer synth`, seeds 101 and 202, not
  the pipeline benchmark's 4242), cut as the segmenter cuts them (0.2 s before the speech,
  0.1 s after, as [asr] pad_ms reads);
- pairs: two consecutive utterances of a session with the pause between them (5-10 s of
  audio), for the longer turns of a real conversation.

Per set and window: the WER, the mean ASR time per utterance, how many decodes looped and
were redone in the full window, and the WER's difference from faster-whisper's with a 95%
paired bootstrap interval over utterances.  The speech is espeak-ng's, not people's: the
figures choose a default, they do not promise a WER on real speech.

Writes benchmarks/results/asr_window.json (benchmarks.report keys).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import check_tree, result_json, write  # noqa: E402
from benchmarks.transcripts import normalise  # noqa: E402

SAMPLE_RATE = 16000
DEV_SEEDS = (101, 202)
BEFORE_S, AFTER_S = 0.2, 0.1  # [vad] speech_pad_ms before the speech; [asr] pad_ms after it
BOOTSTRAP = 2000


def corpus(out: Path, seed: int, sessions: int) -> list[tuple[np.ndarray, str, str]]:
    """(session audio, reference text, session) per utterance; the audio cut to the utterance."""
    from engines.media import read_media
    from trainer.synth import generate

    manifest = generate(out, sessions=sessions, seed=seed, utterances_per_session=10, progress=False, workers=1)
    audio: dict[str, np.ndarray] = {}
    items = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row["file"] not in audio:
            audio[row["file"]] = read_media(out / row["file"], SAMPLE_RATE)[0]
        items.append((audio[row["file"]], row, row["file"]))
    return items


def cut(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    return audio[max(0, int((start - BEFORE_S) * SAMPLE_RATE)):int((end + AFTER_S) * SAMPLE_RATE)]


def errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) of one utterance."""
    import jiwer

    reference, hypothesis = normalise(reference), normalise(hypothesis)
    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions, len(reference.split())


def paired_interval(errs: np.ndarray, base: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% bootstrap interval of WER(errs) - WER(base), resampling utterances."""
    deltas = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(errs), len(errs))
        deltas.append(errs[i, 0].sum() / errs[i, 1].sum() - base[i, 0].sum() / base[i, 1].sum())
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=float, nargs="+", default=[10.0, 15.0, 20.0],
                        help="[asr] window_s values to score against Whisper's 30 s")
    parser.add_argument("--sessions", type=int, default=24, help="sessions per corpus (10 utterances each)")
    parser.add_argument("--threads", type=int, default=1, help="[asr] cpu_threads")
    parser.add_argument("--model", default="tiny.en", help="[asr] model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/asr_window.json")
    args = parser.parse_args(argv)
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from realtime.stages.asr import AsrOptions, Transcriber

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-asr-window-") as tmp:
        rows = [item for seed in DEV_SEEDS for item in corpus(Path(tmp) / str(seed), seed, args.sessions)]
    singles = [(cut(audio, row["start"], row["end"]), row["text"]) for audio, row, _ in rows]
    pairs = [(cut(audio, row["start"], after["end"]), f"{row['text']} {after['text']}")
             for (audio, row, session), (_, after, next_session) in zip(rows, rows[1:]) if session == next_session]
    sets = {"singles": singles, "pairs": pairs}
    windows = [30.0, *sorted(set(args.windows) - {30.0})]
    metrics: dict[str, float] = {f"{name}_utterances": len(items) for name, items in sets.items()}
    scored: dict[str, dict[float, np.ndarray]] = {}  # set -> window -> (errors, words) per utterance
    metrics.update({f"{name}_audio_s_max": round(max(len(a) for a, _ in items) / SAMPLE_RATE, 2)
                    for name, items in sets.items()})
    for window in windows:
        transcriber = Transcriber(AsrOptions(model=args.model, device="cpu", cpu_threads=args.threads,
                                             window_s=window))
        transcriber.transcribe(singles[0][0])  # warm up
        for name, items in sets.items():
            transcriber.loops_redone = 0
            errs, seconds = [], 0.0
            for audio, reference in tqdm(items, desc=f"{name}, window {window:g} s", leave=False):
                t0 = time.perf_counter()
                text = transcriber.transcribe(audio)
                seconds += time.perf_counter() - t0
                errs.append(errors(reference, text))
            errs = np.array(errs)
            key = f"{name}_w{window:g}"
            metrics[f"{key}_wer"] = round(float(errs[:, 0].sum() / errs[:, 1].sum()), 4)
            metrics[f"{key}_ms_per_utterance"] = round(1000 * seconds / len(items), 1)
            metrics[f"{key}_loops_redone"] = transcriber.loops_redone
            scored.setdefault(name, {})[window] = errs
            print(f"{key}: WER {metrics[f'{key}_wer']:.4f}, {metrics[f'{key}_ms_per_utterance']:.0f} ms, "
                  f"{transcriber.loops_redone} loops redone", flush=True)
    rng = np.random.default_rng(0)
    for name, by_window in scored.items():
        base = by_window[30.0]
        for window in windows[1:]:
            low, high = paired_interval(by_window[window], base, rng)
            key = f"{name}_w{window:g}"
            metrics[f"{key}_wer_delta"] = round(metrics[f"{key}_wer"] - metrics[f"{name}_w30_wer"], 4)
            metrics[f"{key}_wer_delta_ci_low"], metrics[f"{key}_wer_delta_ci_high"] = round(low, 4), round(high, 4)
            metrics[f"{key}_speedup"] = round(metrics[f"{name}_w30_ms_per_utterance"]
                                              / metrics[f"{key}_ms_per_utterance"], 2)
    write(args.out, result_json(
        "asr_window", started, args.threads, metrics, model=args.model, dev_seeds=list(DEV_SEEDS),
        notes="window 30 = faster-whisper's own transcription; WER over all words of a set; "
              "delta CI: 95% paired bootstrap over utterances; espeak-ng speech, dev corpora only"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
