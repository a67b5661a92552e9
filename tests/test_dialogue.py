"""Dialogue context for the text branch: one prompt builder for training and serving,
the mask-token pooling of the exported encoder, and the fusion stage's session history."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.dialogue import UNKNOWN_SPEAKER, History, Turn, prompt, text_input
from engines.preprocess import Preprocessing
from trainer.data import Utterance

MASKED = Preprocessing(text_pooling="mask", text_context_turns=2, text_sep="[SEP]", text_mask="[MASK]")


def test_prompt_names_speakers_by_first_appearance():
    window = [Turn("Bob", "hi"), Turn("Ann", " hello "), Turn("Bob", "bye")]
    assert prompt(window, "[SEP]", "[MASK]") == "<s1> hi <s2> hello <s1> bye [SEP] Now <s1> feels [MASK]"
    with pytest.raises(ValueError):
        prompt([], "[SEP]", "[MASK]")


def test_text_input_mean_ignores_context_and_mask_keeps_the_last_turns():
    past = [Turn("a", f"t{i}") for i in range(5)]
    now = Turn("a", " now ")
    assert text_input(Preprocessing(), past, now) == "now"
    assert text_input(MASKED, past, now) == "<s1> t3 <s1> t4 <s1> now [SEP] Now <s1> feels [MASK]"
    assert text_input(MASKED, past[:1], now) == "<s1> t0 <s1> now [SEP] Now <s1> feels [MASK]"
    none = dataclasses.replace(MASKED, text_context_turns=0)
    assert text_input(none, past, now) == "<s1> now [SEP] Now <s1> feels [MASK]"
    every = dataclasses.replace(MASKED, text_context_turns=-1)  # -1: all past turns
    assert text_input(every, past, now) == "<s1> t0 <s1> t1 <s1> t2 <s1> t3 <s1> t4 <s1> now [SEP] Now <s1> feels [MASK]"


def test_history_is_bounded_and_skips_empty_transcripts():
    history = History(2)
    for text in ("one", "  ", "two", "three"):
        history.add(Turn(UNKNOWN_SPEAKER, text))
    assert [t.text for t in history.past] == ["two", "three"]
    assert History(0).past == []
    every = History(None)  # all turns, as a teacher tuned on whole dialogues read them
    for i in range(50):
        every.add(Turn(UNKNOWN_SPEAKER, str(i)))
    assert len(every.past) == 50
    with pytest.raises(ValueError):
        History(-1)


def test_context_without_mask_pooling_is_a_config_error():
    with pytest.raises(ValueError, match="text_pooling"):
        Preprocessing(text_context_turns=3)
    with pytest.raises(ValueError, match="mean or mask"):
        Preprocessing(text_pooling="cls")


def test_student_texts_use_only_the_past_of_the_same_session():
    from trainer.fit import student_texts

    utts = [Utterance(session=s, file=Path(), start=k, end=k + 1, text=f"{s}{k}", speaker=("Ann", "Bob")[k % 2],
                      labels=[], extra={"dialogue": s, "turn": k})
            for s in ("x", "y") for k in range(4)]
    utts.reverse()  # order of the list must not matter, only the turn numbers
    texts = dict(zip((u.text for u in utts), student_texts(utts, MASKED)))
    # The corpus's speakers become speaker tokens in order of appearance, as the fusion
    # stage's face ids do: Bob (x1, x3) is <s1>, Ann (x2) <s2>.
    assert texts["x3"] == "<s1> x1 <s2> x2 <s1> x3 [SEP] Now <s1> feels [MASK]"
    assert texts["y0"] == "<s1> y0 [SEP] Now <s1> feels [MASK]"
    every = dataclasses.replace(MASKED, text_context_turns=-1)  # all past turns of the dialogue
    assert student_texts(utts, every)[utts.index(next(u for u in utts if u.text == "x3"))] == \
        "<s1> x0 <s2> x1 <s1> x2 <s2> x3 [SEP] Now <s2> feels [MASK]"
    assert student_texts(utts, Preprocessing()) == [u.text for u in utts]
    # A corpus that names no speakers: every turn is the one unknown speaker.
    nameless = [Utterance(session="z", file=Path(), start=k, end=k + 1, text=f"z{k}", speaker="", labels=[],
                          extra={"dialogue": "z", "turn": k}) for k in range(3)]
    assert student_texts(nameless, MASKED)[2] == "<s1> z0 <s1> z1 <s1> z2 [SEP] Now <s1> feels [MASK]"


def test_manifest_sessions_are_dialogues_in_time_order(corpus):
    from trainer.data import load_corpus

    utts = load_corpus(corpus).utterances
    for session in {u.session for u in utts}:
        mine = sorted((u for u in utts if u.session == session), key=lambda u: u.extra["turn"])
        assert [u.extra["turn"] for u in mine] == list(range(len(mine)))
        assert [u.start for u in mine] == sorted(u.start for u in mine)
        assert all(u.extra["dialogue"] == session for u in mine)


# --------------------------------------------------------------------------- a bundle with context


@pytest.fixture(scope="module")
def context_bundle(run_dir, tmp_path_factory):
    """The test run's student exported with mask pooling and 2 turns of context (the
    weights saw mean-pooled text; what is checked here is the plumbing, not accuracy)."""
    from trainer.export import write_bundle
    from trainer.fit import load_run
    from trainer.fit import with_text_tokens
    from trainer.text_encoder import SentenceEncoder

    info, model = load_run(run_dir)
    pre = dataclasses.replace(model.pre, text_pooling="mask", text_context_turns=2)
    pre = with_text_tokens(pre, SentenceEncoder.for_preprocessing(info["text_encoder"], pre))
    model.pre = pre
    info = dict(info, preprocessing=pre.to_dict())
    out = tmp_path_factory.mktemp("context") / "bundle"
    write_bundle(model, info, out)
    return out


def test_exported_encoder_reads_the_mask_token(context_bundle, run_dir):
    import engines
    from trainer.text_encoder import SentenceEncoder

    engine = engines.load(context_bundle)
    assert engine.pre.text_sep == "[SEP]" and engine.pre.text_mask == "[MASK]"
    info = json.loads((run_dir / "run.json").read_text())
    encoder = SentenceEncoder.for_preprocessing(info["text_encoder"], engine.pre)
    from transformers import AutoTokenizer

    text = text_input(engine.pre, [Turn(UNKNOWN_SPEAKER, "we lost the game")], Turn(UNKNOWN_SPEAKER, "oh no"))
    tok = AutoTokenizer.from_pretrained(str(encoder.path))
    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.encoder(**batch).last_hidden_state[0]
    at_mask = hidden[batch["input_ids"][0].tolist().index(tok.mask_token_id)]
    # As it is, not normalised: a teacher's classifier reads it so (StudentConfig.text_classes).
    assert np.abs(engine.embed_text([text])[0] - at_mask.numpy()).max() < 1e-4


def test_long_context_is_cut_from_the_left(context_bundle):
    import engines

    engine = engines.load(context_bundle)
    long_turn = Turn(UNKNOWN_SPEAKER, " ".join(["word"] * 200))
    text = text_input(engine.pre, [long_turn], Turn(UNKNOWN_SPEAKER, "oh no"))
    ids = engine._tokenize([text])["input_ids"][0]
    assert len(ids) == engine.pre.text_max_tokens
    assert engine._tokenize.token_id("[MASK]") in ids.tolist()  # the prompt survived


def test_context_reaches_the_text_branch_only_with_mask_pooling(context_bundle, bundle):
    import engines
    from engines.runtime import Window

    past = [Turn(UNKNOWN_SPEAKER, "I failed the exam"), Turn(UNKNOWN_SPEAKER, "all of it")]
    for path, changes in ((context_bundle, True), (bundle, False)):
        engine = engines.load(path)
        alone, with_past = engine.infer([Window(0, 1, text="what now"), Window(0, 1, text="what now", context=past)])
        differs = any(abs(alone.peers["text"][k] - with_past.peers["text"][k]) > 1e-5 for k in engine.labels)
        assert differs == changes, path


def test_fusion_stage_gives_each_utterance_the_session_so_far(context_bundle):
    """The fusion stage's state machine, in process, with the real engine: its output
    goes to a list instead of a socket (the sockets are exercised in test_end_to_end)."""
    import engines
    from engines.runtime import Window
    from realtime.stages.fusion import Fusion, FusionOptions
    from tests.streams import CollectingPublisher

    engine, out = engines.load(context_bundle), CollectingPublisher()
    state = Fusion(engine, FusionOptions(window_rate=0), out)
    texts = ["I failed the exam", "all of it", "what now", "really"]
    audio = np.zeros(8000, np.float32)
    for i, text in enumerate(texts):
        state.on_message({"type": "transcript", "start": float(i), "end": i + 0.5, "text": text, "asr_s": 0.0},
                         audio)
    state.on_message({"type": "eos", "stream": "video"}, None)
    state.on_message({"type": "eos", "stream": "transcripts"}, None)
    assert not state.finished  # the segmenter's audio chunks may still be on their way
    state.on_message({"type": "eos", "stream": "audio"}, None)
    assert state.finished
    results = [b for b in out.bodies if b["type"] == "utterance"]
    assert [r["text"] for r in results] == texts
    for i, result in enumerate(results):
        past = [Turn(UNKNOWN_SPEAKER, t) for t in texts[max(0, i - 2):i]]  # 2 turns of context
        (expected,) = engine.infer([Window(float(i), i + 0.5, text=texts[i], audio=audio, context=past)])
        assert result["peers"]["text"] == expected.peers["text"]
