"""The text teacher (trainer/text_teacher.py): TelME prompts, left-truncation, a tiny fit, save/load."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import Utterance

from tests.conftest import need


def utt(dialogue: str, turn: int, speaker: str, text: str, label: str = "joy") -> Utterance:
    return Utterance(session=dialogue, file=Path(), start=0.0, end=0.0, text=text, speaker=speaker,
                     labels=[label], split="train", extra={"dialogue": dialogue, "turn": turn})


@pytest.fixture(scope="module")
def teacher():
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    return TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=32, epochs=1))


def test_prompt_is_past_only_and_uses_the_encoders_tokens(teacher):
    # Given out of order, with the future turns' words unique to them.
    dialogue = [utt("d", 2, "Ann", "alpha future"), utt("d", 0, "Bob", "first words"),
                utt("d", 1, "Ann", "second words"), utt("d", 3, "Bob", "omega later")]
    prompts = teacher.prompts(dialogue)
    tok = teacher.tokenizer
    by_turn = {u.extra["turn"]: p for u, p in zip(dialogue, prompts)}
    assert by_turn[0] == f"<s1> first words {tok.sep_token} Now <s1> feels {tok.mask_token}"
    assert "future" not in by_turn[1] and "omega" not in by_turn[1]
    assert "omega" not in by_turn[2] and by_turn[2].endswith(f"Now <s2> feels {tok.mask_token}")
    for turn, p in by_turn.items():
        later = [u.text for u in dialogue if u.extra["turn"] > turn]
        assert not any(text in p for text in later)
    # Speaker tokens are single special tokens, never split or lower-cased away.
    ids = tok("<s1> hi <s2>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<s1>") and ids[-1] == tok.convert_tokens_to_ids("<s2>")


def test_left_truncation_keeps_the_prompt(teacher):
    long_past = [utt("d", i, f"p{i % 2}", " ".join(["word"] * 30)) for i in range(10)]
    current = utt("d", 10, "p0", "the current utterance")
    prompts = teacher.prompts(long_past + [current])
    batch = teacher.encode([prompts[-1]])
    ids = batch["input_ids"][0].tolist()
    tok = teacher.tokenizer
    assert len(ids) == teacher.config.max_len
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    text = tok.decode(ids)
    assert text.rstrip().endswith(f"the current utterance {tok.sep_token} now <s1> feels {tok.mask_token} {tok.sep_token}".lower()) \
        or "the current utterance" in text and tok.mask_token in text
    assert tok.mask_token_id in ids
    # The features come from the mask position, for every row of a padded batch.
    feats = teacher.features(**teacher.encode(prompts))
    assert feats.shape == (len(prompts), teacher.encoder.config.hidden_size)


def test_tiny_fit_on_meld_saves_and_loads(tmp_path):
    meld = need("meld")
    from trainer.datasets import load
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    corpus = load(f"meld:{meld}")
    dev = corpus.split("dev")[:64]
    teacher = TextTeacher.create(TeacherConfig(labels=corpus.labels, max_len=64, epochs=1, batch_size=16,
                                               eval_batch_size=32))
    history = teacher.fit(dev[:48], dev[48:], log=lambda m: None)
    assert len(history) == 1 and history[0]["steps"] == 3 and np.isfinite(history[0]["train_loss"])
    logits, feats = teacher.logits(dev[48:]), teacher.embed(dev[48:])
    assert logits.shape == (16, 7) and feats.shape == (16, teacher.encoder.config.hidden_size)
    teacher.save(tmp_path / "teacher")
    assert (tmp_path / "teacher" / "head.safetensors").is_file()
    assert (tmp_path / "teacher" / "encoder" / "model.safetensors").is_file()
    again = TextTeacher.load(tmp_path / "teacher")
    np.testing.assert_allclose(again.logits(dev[48:]), logits, atol=1e-4)
    np.testing.assert_allclose(again.embed(dev[48:]), feats, atol=1e-4)


def test_multi_label_mode_uses_bce():
    from trainer.text_teacher import TeacherConfig, TextTeacher

    teacher = TextTeacher.create(TeacherConfig(labels=["a", "b", "c"], multi_label=True, max_len=16))
    y = torch.tensor([[1.0, 0.0, 1.0]])
    logits = torch.zeros(1, 3)
    assert torch.isclose(teacher.loss(logits, y), torch.tensor(np.log(2.0), dtype=torch.float32))
    assert torch.allclose(teacher.probabilities(logits), torch.full((1, 3), 0.5))


def test_freeze_layers_fixes_the_embeddings_and_the_lower_layers_only():
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    words = ["great news today", "so tired of this", "what a lovely day", "nothing to say"]
    rows = [utt(f"d{i // 4}", i % 4, "Ann" if i % 2 else "Bob", words[i % 4], "joy" if i % 3 else "neutral")
            for i in range(32)]
    teacher = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=32, epochs=1, batch_size=16,
                                               lr=1e-3, freeze_layers=2))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = teacher.fit(rows[:24] + rows[:8], rows[24:], log=lambda m: None)
    assert history[0]["steps"] == 2
    after = teacher.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    layers = len(teacher.encoder.encoder.layer)
    assert not any(k.startswith("encoder.embeddings.") for k in changed)
    assert not any(k.startswith(("encoder.encoder.layer.0.", "encoder.encoder.layer.1.")) for k in changed)
    for i in range(2, layers):  # every layer above the frozen ones trained
        assert any(k.startswith(f"encoder.encoder.layer.{i}.") for k in changed), i
    assert "head.weight" in changed
    with pytest.raises(ValueError, match="has 6 layers"):
        teacher.freeze(layers + 1)


def test_cached_lower_layers_train_the_model_the_full_forward_trains():
    """cache_frozen runs the fixed layers once; without dropout, the run it gives is the run
    that runs them at every step (up to the float16 the outputs are stored in)."""
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    words = ["great news today", "so tired of this", "what a lovely day", "nothing to say at all, really"]
    rows = [utt(f"d{i // 4}", i % 4, "Ann" if i % 2 else "Bob", words[i % 4], "joy" if i % 3 else "neutral")
            for i in range(24)]
    runs = {}
    for cached in (True, False):
        teacher = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=32, epochs=1, batch_size=8,
                                                   lr=1e-3, dropout=0.0, freeze_layers=3, cache_frozen=cached))
        teacher.encoder.config.hidden_dropout_prob = teacher.encoder.config.attention_probs_dropout_prob = 0.0
        for module in teacher.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        key = "encoder.encoder.layer.5.output.dense.weight"
        start = teacher.state_dict()[key].clone()
        messages = []
        teacher.fit(rows[:16], rows[16:], log=messages.append)
        assert any("run once" in m for m in messages) == cached
        runs[cached] = (teacher.logits(rows), teacher.state_dict()[key] - start)
        # From stored lower outputs, the upper layers give what the whole encoder gives.
        lower = teacher.lower_outputs(teacher.prompts(rows), 3)
        with torch.no_grad():
            whole = teacher.features(**teacher.encode(teacher.prompts(rows)))
            upper = torch.cat([teacher.upper_features(*lower.batch(range(i, min(i + 5, len(rows))), "cpu"), 3)
                               for i in range(0, len(rows), 5)])
        assert torch.allclose(whole, upper, atol=5e-3), (whole - upper).abs().max()
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=2e-2)
    # The top layer's update is the same step (Adam turns float16-sized gradient differences
    # into a few elements' sign flips, so the direction is compared, not every element).
    moved, whole_run = runs[True][1].flatten(), runs[False][1].flatten()
    assert moved.abs().max() > 1e-4
    assert torch.nn.functional.cosine_similarity(moved, whole_run, dim=0) > 0.95


class _StepClock:
    """A clock for trainer.text_teacher that moves only when a training step computes its loss."""

    def __init__(self, seconds_per_step):
        self.now, self.steps, self.seconds_per_step = 0.0, 0, seconds_per_step

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.steps += 1
        self.now += self.seconds_per_step(self.steps)


@pytest.fixture(scope="module")
def tiny_rows():
    words = ["great news today", "so tired of this", "what a lovely day", "nothing to say", "fine"]
    return [utt(f"d{i // 5}", i % 5, "Ann" if i % 2 else "Bob", words[i % 5], "joy" if i % 3 else "neutral")
            for i in range(36)]


def _budget_fit(monkeypatch, rows, budget, seconds_per_step):
    from trainer import loop
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    teacher = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=16, epochs=2, batch_size=1,
                                               max_train_seconds=budget))
    clock = _StepClock(seconds_per_step)
    monkeypatch.setattr(loop, "time", clock)  # the time budget's clock (trainer.loop.TimeBudget)
    loss = teacher.loss
    monkeypatch.setattr(teacher, "loss", lambda *a: (clock.step(), loss(*a))[1])
    messages = []
    history = teacher.fit(rows[:30], rows[30:], log=messages.append)
    return history, [m for m in messages if "time budget" in m]


def test_time_budget_refits_the_schedule_when_the_machine_speeds_up(monkeypatch, tiny_rows):
    # 30 rows x 2 epochs = 60 steps.  The first 10 take 3 s each (the budget of 100 s then allows
    # 33 steps), later ones 0.5 s: re-estimated at step 25, all 60 steps fit.
    history, budget_log = _budget_fit(monkeypatch, tiny_rows, 100.0, lambda s: 3.0 if s <= 10 else 0.5)
    assert budget_log == ["time budget: schedule set to 33 of 60 steps",
                          "time budget: schedule set to 60 of 60 steps"]
    assert [h["steps"] for h in history] == [30, 60] and not history[-1]["stopped_early"]


def test_time_budget_stops_a_slow_run_with_the_schedule_ended(monkeypatch, tiny_rows):
    history, budget_log = _budget_fit(monkeypatch, tiny_rows, 100.0, lambda s: 10.0)
    assert budget_log == ["time budget: schedule set to 11 of 60 steps",
                          "time budget 100.0s: stopped after step 11/60"]
    assert len(history) == 1 and history[0]["steps"] == 11 and history[0]["stopped_early"]


def test_anonymous_speakers_make_every_turn_one_speaker(tiny_rows):
    from trainer.text_teacher import TeacherConfig, TextTeacher

    corpus = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=32))
    anonymous = TextTeacher(dataclasses.replace(corpus.config, speakers="anonymous"), corpus.encoder,
                            corpus.tokenizer)
    named, anon = corpus.prompts(tiny_rows[:5]), anonymous.prompts(tiny_rows[:5])
    assert any("<s2>" in p for p in named)  # Ann and Bob take turns
    assert not any("<s2>" in p for p in anon) and all(p.count("<s1>") >= 2 for p in anon[1:])
    with pytest.raises(ValueError, match="speakers"):
        TeacherConfig(labels=["joy"], speakers="everyone")


def _dist(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    from trainer.losses import dist_response_kd

    return float(dist_response_kd(torch.from_numpy(student_logits), torch.from_numpy(teacher_logits)))


def test_kd_pulls_the_student_towards_the_teachers_outputs(tmp_path, tiny_rows):
    """distil() reads a saved teacher (labels in its own order) and fit(kd=...) moves the student's
    logits towards the teacher's further than the same fit without KD."""
    from trainer.text_teacher import TeacherConfig, TextTeacher, distil

    torch.set_num_threads(2)
    train = tiny_rows[:30]
    # A "teacher" whose ranking disagrees with the labels: it must come from KD, not from CE.
    big = TextTeacher.create(TeacherConfig(labels=["neutral", "joy"], max_len=16))
    with torch.no_grad():
        big.head.weight.normal_(0, 3.0)
    big.save(tmp_path / "big")

    student = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=16))
    kd = distil(tmp_path / "big", student, train, log=lambda m: None)
    np.testing.assert_allclose(kd["logits"], big.logits(train)[:, ::-1], atol=1e-5)  # student's order
    assert kd["features"].shape == (30, big.encoder.config.hidden_size)
    # Three labels (DIST's ranking of two classes has no gradient).  The targets follow the
    # words and the labels do not, so only KD can teach them: with KD the student's top class
    # agrees with the target's on most training rows, without it on about a third.
    labels = ["joy", "neutral", "anger"]
    words = ["great news today", "so tired of this", "what a lovely day", "nothing to say", "fine"]
    rows = [utt(f"d{i // 5}", i % 5, "Ann", words[i % 5], labels[i % 3]) for i in range(36)]
    target = {"logits": np.stack([np.roll([3.0, 0.0, -3.0], i % 5 % 3) for i in range(30)]).astype(np.float32),
              "features": np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)}
    agree = {}
    for weight in (0.0, 5.0):
        s = TextTeacher.create(TeacherConfig(labels=labels, max_len=16, epochs=6, batch_size=6, lr=3e-4,
                                             response_kd=weight, feature_kd=weight / 5))
        s.fit(rows[:30], rows[30:], log=lambda m: None, kd=target)
        agree[weight] = float(np.mean(s.logits(rows[:30]).argmax(1) == target["logits"].argmax(1)))
    assert agree[5.0] >= agree[0.0] + 0.3, agree  # measured: 0.8 against 0.4
    with pytest.raises(ValueError, match="labels"):
        distil(tmp_path / "big", TextTeacher.create(TeacherConfig(labels=["joy", "anger"], max_len=16)), train)


def test_a_time_budget_run_resumed_after_a_kill_ends_as_the_uninterrupted_one(monkeypatch, tiny_rows, tmp_path):
    """The budget's schedule and the time spent travel in the checkpoint: killed during epoch 2
    and resumed, the run stops at the same step with the same losses as the run never killed."""
    import copy

    from trainer import loop
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.set_num_threads(2)
    # 10 steps an epoch at 10 s each; at step 10 the 150 s budget cuts the schedule to 15 of 20.
    fresh = TextTeacher.create(TeacherConfig(labels=["joy", "neutral"], max_len=16, epochs=2, batch_size=2,
                                             freeze_layers=5, max_train_seconds=150.0))

    def run(checkpoint=None, resume=False, die_at=None):
        teacher = copy.deepcopy(fresh)
        clock = _StepClock(lambda s: 10.0)
        monkeypatch.setattr(loop, "time", clock)  # the time budget's clock (trainer.loop.TimeBudget)
        loss = teacher.loss

        def step(*a):
            clock.step()
            if clock.steps == die_at:
                raise KeyboardInterrupt
            return loss(*a)

        monkeypatch.setattr(teacher, "loss", step)
        messages = []
        history = teacher.fit(tiny_rows[:20], tiny_rows[30:], log=messages.append, checkpoint=checkpoint,
                              resume=resume)
        return history, [m for m in messages if "time budget" in m or "resume" in m]

    whole, whole_log = run()
    assert [h["steps"] for h in whole] == [10, 15] and whole[-1]["stopped_early"]
    assert whole_log == ["time budget: schedule set to 15 of 20 steps", "time budget 150.0s: stopped after step 15/20"]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, die_at=12)  # 2 steps into epoch 2
    history, log = run(tmp_path, resume=True)
    assert log == ["resume: 1 epochs done, continuing with epoch 2", "time budget 150.0s: stopped after step 15/20"]
    assert [(h["steps"], h["stopped_early"], h["seconds"]) for h in history] == \
        [(h["steps"], h["stopped_early"], h["seconds"]) for h in whole]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in whole], rel=1e-5)


def test_device_auto_takes_the_gpu_only_where_torch_sees_one():
    from trainer.placement import training_device

    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: asking for one is no error here")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        training_device("cuda")


def test_precision_auto_runs_in_bf16_where_the_cpu_has_bf16_units_and_float32_stays_float32(teacher):
    from trainer.placement import has_bf16_units
    from trainer.text_teacher import TeacherConfig

    batch = teacher.encode(teacher.prompts([utt("d", 0, "Ann", "so happy today")]))
    with torch.no_grad(), teacher._autocast():
        auto = teacher.head(teacher.features(**batch))
    assert auto.dtype == (torch.bfloat16 if has_bf16_units(torch.device("cpu")) else torch.float32)
    old = teacher.config
    teacher.config = dataclasses.replace(old, precision="float32")
    try:
        with torch.no_grad(), teacher._autocast():
            exact = teacher.head(teacher.features(**batch))
    finally:
        teacher.config = old
    assert exact.dtype == torch.float32
    # bf16 keeps about 3 significant digits: the same logits, to that precision.
    assert torch.allclose(auto.float(), exact, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="precision"):
        TeacherConfig(labels=["joy"], precision="fp16")
