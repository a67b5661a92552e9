"""Training and serving see the same thing: one assembler (engines.features) for both.

The replay test runs the real pipeline (processes, ZeroMQ, VAD, ASR, face stage) with
the fusion stage's feature dump switched on, and recomputes every scored utterance with
`trainer fit`'s code from the recording file.
"""
from __future__ import annotations

import json

import numpy as np

from engines.faces import FaceFrame, FaceOptions, SeenFace
from engines.features import Recording, pad_spans
from engines.preprocess import Preprocessing
from tests.conftest import free_port
from tests.helpers import run_replay


def test_pad_spans_pads_like_the_vad_and_never_overlaps_the_previous_span():
    spans = [(5.0, 6.0), (1.0, 2.0), (2.3, 3.0)]  # any order; returned in that order
    padded = pad_spans(spans, 0.2)
    assert np.allclose(padded, [(4.8, 6.2), (0.8, 2.2), (2.2, 3.2)])  # 2.3 - 0.2 would reach back into 2.2
    assert pad_spans(spans, 0.0) == spans


def test_training_pads_by_the_vads_own_setting():
    import pytest

    from common.settings import ConfigError
    from realtime.config import load_config as runtime_config
    from trainer.config import load_config as trainer_config

    assert trainer_config(None).speech_pad_ms == runtime_config(None).vad.speech_pad_ms == 200
    assert trainer_config(None, ["vad.speech_pad_ms=120"]).speech_pad_ms == 120
    with pytest.raises(ConfigError, match="speech_pad_ms"):
        trainer_config(None, ["vad.speech_pad_ms=-5"])


def test_a_recording_window_is_the_span_cut_and_clipped_to_the_audio():
    rate = 16000
    audio = np.arange(rate, dtype=np.float32)  # 1 s, sample i = i
    crops = [(t, np.full((4, 4), i, np.uint8)) for i, t in enumerate(np.arange(0.0, 1.01, 0.2))]
    rec = Recording(audio, t0=0.5, sample_rate=rate,
                    frames=[FaceFrame(t + 0.5, [SeenFace(1, (0, 0, 4, 4), c, None)], 0) for t, c in crops])
    w = rec.window(0.75, 1.0, text="hi")
    assert (w.start, w.end, w.text) == (0.75, 1.0, "hi")
    assert np.array_equal(w.audio, audio[4000:8000])
    assert [t for t, _ in w.crops] == [0.9]
    # Padding that runs past either end of the recording stops where the audio does.
    w = rec.window(0.3, 1.7)
    assert (w.start, w.end) == (0.5, 1.5) and np.array_equal(w.audio, audio)
    assert len(w.crops) == 6  # both ends are in (0.5 s and 1.5 s), as in the fusion stage


def test_text_settings_do_not_decode_media_again(corpus, tmp_path):
    from trainer.data import load_corpus, media_features

    utts = load_corpus(corpus).utterances[:2]
    first = media_features(utts, Preprocessing(), FaceOptions(), tmp_path)
    cached = sorted(tmp_path.iterdir())
    again = media_features(utts, Preprocessing(text_pooling="mask", text_context_turns=2, text_max_tokens=32,
                                               text_sep="[SEP]", text_mask="[MASK]"), FaceOptions(), tmp_path)
    assert sorted(tmp_path.iterdir()) == cached  # no new cache file: nothing decoded
    assert all(np.array_equal(first[k], again[k]) for k in first)
    # A media setting does decode again.
    media_features(utts, Preprocessing(video_frames=4), FaceOptions(), tmp_path)
    assert len(list(tmp_path.iterdir())) == len(cached) + 1


def test_fit_computes_the_features_the_pipeline_scored(run_dir, bundle, held_out_session, tmp_path):
    from trainer.data import Corpus, Utterance, with_speech_padding
    import torch

    from trainer.fit import TrainOptions, build_inputs, student_texts, take
    from trainer.text_encoder import SentenceEncoder

    truth = [json.loads(line) for line in (held_out_session / "manifest.jsonl").read_text().splitlines()]
    media = held_out_session / truth[0]["file"]
    dumps = tmp_path / "features"
    result = run_replay(media, bundle, tmp_path / "out.jsonl", f"tcp://127.0.0.1:{free_port()}",
                     "--set", f'fusion.dump_features="{dumps}"')
    assert result.returncode == 0, result.stderr
    served = []
    for path in sorted(dumps.glob("utterance-*.npz")):
        with np.load(path) as data:
            served.append({k: data[k] for k in data.files})
    published = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(served) == len(published) == len(truth)

    # fit's code on the same utterances: the pipeline's VAD spans (padded by the VAD
    # already, so not padded again) and transcripts, one dialogue in time order.
    utts = [Utterance(session="s", file=media, start=float(d["start"]), end=float(d["end"]), text=str(d["text"]),
                      speaker="", labels=[], extra={"dialogue": "s", "turn": k}) for k, d in enumerate(served)]
    info = json.loads((run_dir / "run.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    pre, faces = Preprocessing.from_dict(manifest["preprocessing"]), FaceOptions(**manifest["faces"])
    fitted = build_inputs(Corpus(info["labels"], utts), "train", pre, faces,
                          TrainOptions(cache_dir=str(tmp_path / "cache")),
                          SentenceEncoder.for_preprocessing(info["text_encoder"], pre), progress=False)
    fitted = take(fitted, torch.arange(len(utts)))  # one row per utterance (media rows are shared)
    texts = student_texts(utts, pre)
    for k, d in enumerate(served):
        assert d["present"].tolist() == [1, 1, 1] and d["video_mask"].any(), k  # every modality compared
        assert str(d["text_input"]) == texts[k]
        for name in ("mel", "audio_mask", "video", "video_mask", "present", "text_emb"):
            np.testing.assert_allclose(fitted[name][k].numpy(), d[name], atol=1e-5, rtol=0, err_msg=f"{k} {name}")

    # Training cuts manifest spans as the VAD cuts speech: padded by [vad] speech_pad_ms,
    # a manifest span lands close to the span the pipeline scored.
    padded = with_speech_padding(Corpus(info["labels"], [
        Utterance(session="s", file=media, start=t["start"], end=t["end"], text=t["text"], speaker="",
                  labels=t["labels"]) for t in truth]), info["speech_pad_ms"]).utterances
    assert info["speech_pad_ms"] == 200
    for u, d, t in zip(padded, served, truth):
        assert float(d["start"]) < t["start"] and t["end"] < float(d["end"])  # the VAD pads speech
        assert abs(u.start - float(d["start"])) < 0.15 and abs(u.end - float(d["end"])) < 0.15, (u, t, d)
