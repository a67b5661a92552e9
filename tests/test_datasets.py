"""Corpus adapters on the real files in ../shared/data (skipped when absent) and on small
files generated here for the corpora we do not have (MOSEI, CREMA-D)."""
from __future__ import annotations

import json
import random
import wave
from collections import Counter
from pathlib import Path

import pytest

from trainer.data import DataError, Utterance
from trainer.datasets import context_prompts, load

from tests.conftest import need


# --------------------------------------------------------------------------- MELD


def test_meld_counts_labels_and_dialogues():
    corpus = load(f"meld:{need('meld')}")
    assert corpus.labels == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert Counter(u.split for u in corpus.utterances) == {"train": 9989, "dev": 1109, "test": 2610}
    assert all(len(u.labels) == 1 for u in corpus.utterances)
    first = corpus.utterances[0]
    assert first.speaker == "Chandler" and first.labels == ["neutral"]
    assert first.extra["dialogue"] == "train/dia0" and first.extra["turn"] == 0
    assert first.end == pytest.approx((21.731 - 16.059), abs=1e-6)  # 00:16:16,059 -> 00:16:21,731
    # no clips here: every utterance is text-only, and says so
    assert not any(u.extra["has_media"] for u in corpus.utterances)
    # dialogue ids restart per split, so the split is part of the dialogue key
    assert {u.extra["dialogue"] for u in corpus.split("dev")}.isdisjoint(
        {u.extra["dialogue"] for u in corpus.split("train")})


def test_meld_media_lookup(tmp_path):
    root = tmp_path / "MELD.Raw"
    (root / "train_splits").mkdir(parents=True)
    (root / "train_splits" / "dia0_utt1.mp4").write_bytes(b"\0")
    (root / "dia0_utt0.mp4").write_bytes(b"\0")  # a flat folder works too
    corpus = load(f"meld:{need('meld')}", media_root=root, limit=3)
    train = {u.extra["utterance_id"]: u for u in corpus.split("train")}
    assert train[1].extra["has_media"] and train[1].file == root / "train_splits" / "dia0_utt1.mp4"
    assert train[0].extra["has_media"] and train[0].file == root / "dia0_utt0.mp4"
    assert not train[2].extra["has_media"]  # missing clip: text-only, still in the corpus
    assert train[2].file.name == "dia0_utt2.mp4"
    # dev's dia0_utt1 is another clip: train's file must not be taken for it
    dev = {u.extra["utterance_id"]: u for u in corpus.split("dev")}
    assert not dev[1].extra["has_media"]


# --------------------------------------------------------------------------- IEMOCAP


def test_iemocap_counts_labels_and_speakers():
    corpus = load(f"iemocap:{need('iemocap')}")
    assert Counter(u.split for u in corpus.utterances) == {"train": 5163, "dev": 647, "test": 1623}
    assert corpus.labels == ["anger", "excited", "frustration", "happiness", "neutral", "sadness"]
    assert {u.speaker for u in corpus.utterances} == {"F", "M"}
    first = corpus.utterances[0]
    assert first.extra["utterance_id"] == "Ses01F_impro01_F000" and first.speaker == "F"
    for u in corpus.utterances:
        assert u.speaker == u.extra["utterance_id"].rsplit("_", 1)[1][0]
    # Session 5 is the test split
    assert {u.session[:5] for u in corpus.split("test")} == {"Ses05"}


def test_iemocap_turns_follow_the_end_times():
    corpus = load(f"iemocap:{need('iemocap')}", limit=200)
    by_dialogue: dict[str, list[Utterance]] = {}
    for u in corpus.utterances:
        by_dialogue.setdefault(u.extra["dialogue"], []).append(u)
    for members in by_dialogue.values():
        members.sort(key=lambda u: u.extra["turn"])
        assert [u.extra["turn"] for u in members] == list(range(len(members)))
        ends = [u.extra["dialogue_end"] for u in members]
        assert ends == sorted(ends)


# --------------------------------------------------------------------------- GoEmotions


def test_goemotions_multilabel_and_ekman_grouping():
    path = need("goemotions")
    fine = load(f"goemotions:{path}", limit=1500)
    assert len(fine.labels) == 28 and fine.labels[0] == "admiration" and fine.labels[-1] == "neutral"
    assert sum(len(u.labels) > 1 for u in fine.utterances) > 100  # multi-label rows exist
    ekman = load(f"goemotions-ekman:{path}", limit=1500)
    assert ekman.labels == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    mapping = json.loads((path / "ekman_mapping.json").read_text())
    group_of = {label: group for group, members in mapping.items() for label in members}
    assert len(group_of) == 28
    for f, e in zip(fine.utterances, ekman.utterances):
        assert f.text == e.text
        assert set(e.labels) == {group_of[label] for label in f.labels}
    # two fine labels of one group become a single Ekman label
    merged = [e for f, e in zip(fine.utterances, ekman.utterances) if len(e.labels) < len(f.labels)]
    assert merged
    assert group_of["admiration"] == "joy" and group_of["annoyance"] == "anger"


# --------------------------------------------------------------------------- ElderReact


def test_elderreact_features_and_labels():
    corpus = load(f"elderreact:{need('elderreact')}")
    assert Counter(u.split for u in corpus.utterances) == {"train": 615, "dev": 355, "test": 353}
    assert corpus.labels == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert all(len(u.extra["audio_features"]) == 148 for u in corpus.utterances)
    assert all(set(u.labels) <= set(corpus.labels) for u in corpus.utterances)
    assert any(len(u.labels) > 1 for u in corpus.utterances)
    first = corpus.utterances[0]  # 50_50_100.mp4 0 1 1 0 0 1 f 1.67
    assert first.labels == ["disgust", "fear", "surprise"]
    assert first.extra["audio_features"][0] == pytest.approx(185.99278700885407)
    assert first.extra["gender"] == "f" and not first.extra["has_media"]


def test_elderreact_media_lookup_and_duration(tmp_path):
    # a real clip's header gives the utterance its length (PyAV reads it; WAV content is
    # enough for that, whatever the file is called)
    write_wav(tmp_path / "50_50_100.mp4", 0.75)
    corpus = load(f"elderreact:{need('elderreact')}", media_root=tmp_path, limit=2)
    clip = next(u for u in corpus.split("train") if u.file.name == "50_50_100.mp4")
    assert clip.extra["has_media"] and clip.file == tmp_path / "50_50_100.mp4"
    assert clip.end == pytest.approx(0.75, abs=0.01)
    assert sum(u.extra["has_media"] for u in corpus.utterances) == 1


# --------------------------------------------------------------------------- MOSEI (generated)

MOSEI_HEADER = "video_id,clip_id,text,happy,sad,anger,surprise,disgust,fear,mode"


def test_mosei_csv_binarises_intensity(tmp_path):
    table = tmp_path / "mosei.csv"
    table.write_text("\n".join([
        MOSEI_HEADER,
        "vidA,10,later words,0.0,0.0,0.0,0.0,0.0,0.0,train",
        "vidA,2,first words,1.0,0.333,0.0,0.0,0.0,0.0,train",
        "vidB,0,hello,0.0,0.0,2.0,0.0,0.0,0.666,valid",
        "vidC,1,bye,0.0,0.0,0.0,3.0,0.0,0.0,test",
    ]) + "\n")
    corpus = load(f"mosei:{table}")
    assert corpus.labels == ["happiness", "sadness", "anger", "surprise", "disgust", "fear"]
    by_clip = {(u.session, u.extra["clip_id"]): u for u in corpus.utterances}
    assert by_clip["vidA", "2"].labels == ["happiness", "sadness"]
    assert by_clip["vidA", "10"].labels == []  # all zero: no emotion
    assert by_clip["vidB", "0"].labels == ["anger", "fear"] and by_clip["vidB", "0"].split == "dev"
    assert by_clip["vidC", "1"].split == "test"
    # clips of one video are turns of one monologue, in clip order ('2' before '10')
    assert by_clip["vidA", "2"].extra["turn"] == 0 and by_clip["vidA", "10"].extra["turn"] == 1


def test_mosei_folder_layout_and_errors(tmp_path):
    header = MOSEI_HEADER.rsplit(",", 1)[0]
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.csv").write_text(f"{header}\nv{name},0,x,0,1,0,0,0,0\n")
    corpus = load(f"mosei:{tmp_path}")
    splits = {u.session: u.split for u in corpus.utterances}
    assert splits == {"vtrain": "train", "vvalid": "dev", "vtest": "test"}
    lone = tmp_path / "lone.csv"
    lone.write_text(f"{header}\nv,0,x,0,1,0,0,0,0\n")
    with pytest.raises(DataError, match="split"):
        load(f"mosei:{lone}")


# --------------------------------------------------------------------------- CREMA-D (generated)


def write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))


def test_cremad_file_names(tmp_path):
    clips = tmp_path / "AudioWAV"
    clips.mkdir()
    rng = random.Random(0)
    codes = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    for actor in range(1001, 1021):
        write_wav(clips / f"{actor}_DFA_{rng.choice(codes)}_XX.wav", 0.25)
    write_wav(clips / "1001_IEO_HAP_HI.wav", 0.5)
    (clips / "notes.txt").write_text("not a clip")
    corpus = load(f"cremad:{tmp_path}")
    assert corpus.labels == ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert len(corpus.utterances) == 21
    u = next(u for u in corpus.utterances if u.file.name == "1001_IEO_HAP_HI.wav")
    assert (u.speaker, u.labels, u.extra["intensity"]) == ("1001", ["happiness"], "HI")
    assert u.text == "It's eleven o'clock."
    assert u.end == pytest.approx(0.5)
    # the split is by actor: no actor in two splits, and every split used
    splits: dict[str, set[str]] = {}
    for v in corpus.utterances:
        splits.setdefault(v.speaker, set()).add(v.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {v.split for v in corpus.utterances} == {"train", "dev", "test"}
    write_wav(clips / "1002_DFA_XYZ_XX.wav", 0.1)
    with pytest.raises(DataError, match="unknown"):
        load(f"cremad:{tmp_path}")


# --------------------------------------------------------------------------- registry


def test_registry_keeps_manifest_and_rejects_bad_specs(tmp_path):
    rows = [{"file": "a.wav", "start": 0, "end": 1, "text": "hi", "labels": ["x"], "split": "train"},
            {"file": "a.wav", "start": 1, "end": 2, "text": "yo", "labels": ["y"], "split": "dev"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = load(f"manifest:{tmp_path}")
    assert corpus.labels == ["x", "y"] and [u.split for u in corpus.utterances] == ["train", "dev"]
    with pytest.raises(DataError, match="KIND"):
        load(f"nope:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load(f"meld:{tmp_path / 'missing'}")


# --------------------------------------------------------------------------- dialogue context


def _dialogues(seed: int = 0) -> list[Utterance]:
    """Two dialogues of 6 turns, texts naming their own dialogue and turn, shuffled."""
    utts = [
        Utterance(session=d, file=Path(), start=0, end=0, text=f"{d}-T{k}",
                  speaker=("Ann", "Bob")[k % 2], labels=[], extra={"dialogue": d, "turn": k})
        for d in ("d1", "d2") for k in range(6)
    ]
    random.Random(seed).shuffle(utts)
    return utts


def test_context_prompts_use_only_the_past_of_the_same_dialogue():
    utts = _dialogues()
    for max_turns in (None, 2, 0):
        prompts = context_prompts(utts, max_turns)
        assert len(prompts) == len(utts)
        for u, prompt in zip(utts, prompts):  # one prompt per utterance, in input order
            d, k = u.extra["dialogue"], u.extra["turn"]
            shown = [int(w.split("-T")[1]) for w in prompt.split() if w.startswith(d + "-T")]
            first = 0 if max_turns is None else max(0, k - max_turns)
            assert shown == list(range(first, k + 1))  # past turns in order, then the current one
            other = "d2" if d == "d1" else "d1"
            assert other not in prompt


def test_context_prompts_format_and_speaker_tokens():
    utts = sorted(_dialogues(), key=lambda u: (u.session, u.extra["turn"]))
    i = next(n for n, u in enumerate(utts) if u.session == "d1" and u.extra["turn"] == 2)
    assert context_prompts(utts)[i] == "<s1> d1-T0 <s2> d1-T1 <s1> d1-T2 </s> Now <s1> feels <mask>"
    # the window starts at Bob here, so Bob is <s1>; names never appear
    assert context_prompts(utts, 1, sep="[SEP]", mask="[MASK]")[i] == \
        "<s1> d1-T1 <s2> d1-T2 [SEP] Now <s2> feels [MASK]"


def test_context_prompts_on_meld_never_reach_ahead():
    corpus = load(f"meld:{need('meld')}", limit=60)
    utts = corpus.split("train")
    later = {}
    for u in utts:
        later.setdefault(u.extra["dialogue"], []).append(u)
    for u, prompt in zip(utts, context_prompts(utts, 5)):
        assert prompt.endswith(f"{u.text.strip()} </s> Now {prompt.split()[-3]} feels <mask>")
        future = [v.text.strip() for v in later[u.extra["dialogue"]]
                  if v.extra["turn"] > u.extra["turn"] and len(v.text.strip()) > 25]
        assert not any(text in prompt for text in future)


def test_text_only_corpora_take_no_memory_for_media():
    """GoEmotions has 43k utterances and no media: zero-filled media arrays would be 14 GB.
    (fit itself keeps media per media row: tests/test_real_model.py.)"""
    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from trainer.data import media_features

    utts = load(f"goemotions:{need('goemotions')}", limit=300).utterances
    feats = media_features(utts, Preprocessing(), FaceOptions(), Path("/nonexistent"))
    assert feats["mel"].shape[0] == len(utts) and not feats["mel"].any()
    assert all(v.strides[0] == 0 for v in feats.values())  # one shared row
