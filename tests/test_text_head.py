"""A `trainer teach` classifier as the student's text head ([train] text_head): the bundle
keeps the teacher's prediction of a transcript, and the fusion adjusts it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.features import Window
from engines.preprocess import Preprocessing
from engines.student import Student, StudentConfig

TEACHER_LABELS = ["anger", "happiness", "neutral", "sadness", "boredom"]  # boredom: no label of the corpus;
# the corpus's surprise: no class of the teacher


def test_the_text_logits_are_the_teachers_and_the_fusion_adds_to_them():
    torch.manual_seed(0)
    cfg = StudentConfig(n_labels=3, text_dim=8, dim=16, heads=2, layers=1, modalities=["text", "audio"],
                        text_classes=[1, -1, 0], text_teacher_classes=2)
    model = Student(cfg, Preprocessing()).eval()
    pre = model.pre
    b = 4
    inputs = dict(text_emb=torch.randn(b, 8), mel=torch.zeros(b, pre.n_mels, pre.audio_frames),
                  audio_mask=torch.zeros(b, pre.audio_tokens),
                  video=torch.zeros(b, pre.video_frames, pre.face_size, pre.face_size),
                  video_mask=torch.zeros(b, pre.video_frames), present=torch.tensor([[1.0, 0, 0]] * 3 + [[0, 1.0, 0]]))
    with torch.no_grad():
        logits = model(**inputs)
        probs = model.text_teacher(inputs["text_emb"]).softmax(-1)
        told = torch.log(probs) - torch.log1p(-probs)
        assert torch.allclose(logits[:, 1, 0], told[:, 1], atol=1e-5)  # label 0 is the teacher's class 1
        assert torch.allclose(logits[:, 1, 2], told[:, 0], atol=1e-5)
        # The fusion head's own logits plus the teacher's, where there is text.
        torch.nn.init.zeros_(model.fusion_head.weight)
        torch.nn.init.zeros_(model.fusion_head.bias)
        fused = model(**inputs)[:, 0]
    assert torch.allclose(fused[:3, 0], told[:3, 1], atol=1e-5) and torch.allclose(fused[:3, 2], told[:3, 0], atol=1e-5)
    assert torch.all(fused[:3, 1] == 0) and torch.all(fused[3] == 0)  # a label it lacks; no text
    assert not any(p.requires_grad for p in model.text_teacher.parameters())  # frozen: it is the teacher's


def test_text_classes_must_name_the_teachers_classes():
    with pytest.raises(ValueError, match="text_classes"):
        StudentConfig(n_labels=2, text_classes=[0, 3], text_teacher_classes=2)
    with pytest.raises(ValueError, match="text_classes"):
        StudentConfig(n_labels=2, text_classes=[0])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from trainer.text_teacher import TeacherConfig, TextTeacher

    torch.manual_seed(0)
    teacher = TextTeacher.create(TeacherConfig(labels=TEACHER_LABELS, max_len=48, max_turns=2, epochs=1))
    return teacher.save(tmp_path_factory.mktemp("teach") / "teacher")


@pytest.fixture(scope="module")
def head_bundle(corpus, teacher_dir, tmp_path_factory):
    """The recipe's wiring (trainer.recipe.text_from_teacher), one epoch on the synthetic corpus."""
    from engines.faces import FaceOptions
    from trainer.export import export
    from trainer.fit import TrainOptions, fit
    from trainer.recipe import text_from_teacher

    train, pre = text_from_teacher(teacher_dir, TrainOptions(epochs=1, dim=32, layers=1,
                                                             cache_dir=str(tmp_path_factory.mktemp("cache"))),
                                   Preprocessing())
    run = tmp_path_factory.mktemp("head") / "run"
    fit(f"synthetic:{corpus}", run, train, pre, FaceOptions(), progress=False)
    export(run, run.parent / "bundle")
    return run.parent / "bundle"


def test_the_bundle_gives_the_teachers_prediction_of_a_transcript(head_bundle, teacher_dir):
    """Through the exported graphs (ONNX Runtime), after training: the text encoder gives the
    teacher's own features, and the text head its probabilities."""
    import engines
    from engines.dialogue import UNKNOWN_SPEAKER
    from trainer.data import Utterance
    from trainer.text_teacher import TextTeacher

    engine = engines.load(head_bundle, backend="onnxruntime")
    teacher = TextTeacher.load(teacher_dir)
    said = ["we lost the game again", "that is wonderful news", "fine, whatever you say"]
    windows = [Window(start=0.0, end=1.0, text=text) for text in said]
    utterances = [Utterance(session=f"s{i}", file=None, start=0.0, end=1.0, text=text, speaker=UNKNOWN_SPEAKER,
                            labels=[], extra={"dialogue": f"s{i}", "turn": 0}) for i, text in enumerate(said)]
    feeds = engine.features(windows)
    assert np.abs(feeds["text_emb"] - teacher.embed(utterances)).max() < 1e-3
    expected = teacher.predict_proba(utterances)  # softmax over the teacher's classes
    for prediction, row in zip(engine.predict(feeds), expected):
        text = prediction.peers["text"]
        for label in ("anger", "happiness", "neutral", "sadness"):
            assert text[label] == pytest.approx(row[TEACHER_LABELS.index(label)], abs=1e-3)
