"""One synthetic session rendered to an mp4 with its manifest rows, and the corpus of many."""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from engines.preprocess import SAMPLE_RATE
from trainer.synth.face import FACE_FILES, FPS, HEIGHT, WIDTH, load_face, session_frames
from trainer.synth.plan import LABELS, plan_session
from trainer.synth.voice import espeak, jitter_prosody, mix_session, prosody_for, require_espeak


def write_mp4(path: Path, audio: np.ndarray, frames) -> None:
    """Mux BGR frames (FPS) and mono float audio (SAMPLE_RATE) into an mp4."""
    from engines.media import MediaWriter

    fed = 0
    with MediaWriter(path, FPS, WIDTH, HEIGHT, SAMPLE_RATE) as writer:
        for i, image in enumerate(frames):
            writer.video(image)
            # Keep audio in step with video so the muxer interleaves without buffering.
            until = min(len(audio), int((i + 1) * SAMPLE_RATE / FPS))
            writer.audio(audio[fed:until])
            fed = max(fed, until)
        writer.audio(audio[fed:])


# --------------------------------------------------------------------------- sessions


def session_rng(seed: int, index: int) -> np.random.Generator:
    # Independent stream per session: results do not depend on how many
    # sessions are made or in which order workers render them.
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def render_session(out_dir: Path, index: int, seed: int, n_utterances: int, people: int = 1) -> list[dict]:
    """Writes one session's mp4; returns its manifest rows."""
    rng = session_rng(seed, index)
    speakers, utterances = plan_session(rng, n_utterances, people)
    for utt in utterances:
        prosody = jitter_prosody(rng, prosody_for(utt.labels, utt.cues["audio"]))
        utt.audio = espeak(utt.text, speakers[utt.speaker], prosody)
    audio = mix_session(rng, utterances)
    name = f"s{index:03d}"
    write_mp4(out_dir / f"{name}.mp4", audio, session_frames(rng, speakers, utterances, audio, people))
    return [
        {
            "session": name,
            "file": f"{name}.mp4",
            "index": utt.index,
            "start": round(utt.start_sample / SAMPLE_RATE, 3),
            "end": round(utt.end_sample / SAMPLE_RATE, 3),
            "text": utt.text,
            "speaker": utt.speaker,
            "labels": list(utt.labels),
            "cues": dict(utt.cues),
        }
        for utt in utterances
    ]


def generate(
    out_dir: str | Path,
    sessions: int,
    seed: int,
    utterances_per_session: int = 6,
    progress: bool = True,
    workers: int | None = None,
    people: int = 1,
) -> Path:
    """Writes out_dir/s000.mp4 ..., out_dir/manifest.jsonl, out_dir/labels.json; returns manifest path.

    workers: processes rendering sessions in parallel (default: one per CPU).
    people: faces in view; 1, the speaker's alone, or 2, both side by side (A left, B
    right), only the speaker's mouth moving.
    """
    if sessions < 1 or utterances_per_session < 1:
        raise ValueError("sessions and utterances_per_session must be >= 1")
    if people not in (1, 2):
        raise ValueError(f"people must be 1 or 2, got {people}")
    require_espeak()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for speaker in FACE_FILES:
        load_face(speaker)  # fail early, before any worker starts, if an asset is broken
    workers = max(1, min(workers or _cpu_count(), sessions))
    jobs = [(out_dir, i, seed, utterances_per_session, people) for i in range(sessions)]
    with ExitStack() as stack:
        if workers == 1:
            results = map(_render_job, jobs)
        else:
            # spawn, not fork: the caller may already hold threads (torch, tqdm)
            # that a forked child would inherit in a broken state.
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            )
            results = pool.map(_render_job, jobs)  # yields in session order
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=sessions, desc="synth sessions", unit="session")
        rows = [row for session_rows in results for row in session_rows]
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out_dir / "labels.json").write_text(json.dumps({"labels": list(LABELS)}, indent=2) + "\n")
    return manifest


def _render_job(job: tuple) -> list[dict]:
    return render_session(*job)


def _cpu_count() -> int:
    # CPUs this process may use, which in a container can be fewer than the machine's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
