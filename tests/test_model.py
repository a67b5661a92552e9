"""The student's structure: masks really remove a modality, samples never mix."""
from __future__ import annotations

import torch

from engines.preprocess import Preprocessing
from engines.student import Student, StudentConfig
from trainer.export import example_inputs


def _model():
    torch.manual_seed(0)
    return Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2), Preprocessing()).eval()


def test_absent_modality_does_not_change_the_fusion_output():
    model = _model()
    x = list(example_inputs(model, batch=2))
    x[5] = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # video absent
    with torch.no_grad():
        a = model(*x)
        x[3] = torch.randn_like(x[3]) * 5  # change the absent video
        b = model(*x)
        x[1] = torch.randn_like(x[1])  # change the present audio
        c = model(*x)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
    assert not torch.allclose(a[:, 0], c[:, 0], atol=1e-3)


def test_samples_of_a_batch_do_not_attend_to_each_other():
    model = _model()
    x = example_inputs(model, batch=4)
    with torch.no_grad():
        whole = model(*x)
        first = model(*(t[:1] for t in x))
    assert torch.allclose(whole[:1], first, atol=1e-5)


def test_forward_train_adds_joint_embeddings_and_kd_features():
    torch.manual_seed(0)
    model = Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2, embed_dim=16,
                                  kd_dims={"face": 24, "text": 12}),
                    Preprocessing()).eval()
    x = example_inputs(model, batch=3)
    with torch.no_grad():
        out = model.forward_train(*x)
        logits = model(*x)
    assert torch.allclose(out["logits"], logits)
    assert set(out["embeddings"]) == {"fusion", "text", "audio", "video"}
    assert all(e.shape == (3, 16) for e in out["embeddings"].values())
    assert set(out["kd_features"]) == {"face", "text"}
    for teacher, size in (("face", 24), ("text", 12)):
        assert set(out["kd_features"][teacher]) == set(out["embeddings"])
        assert all(f.shape == (3, size) for f in out["kd_features"][teacher].values())
    # a config without embed_dim / kd_dims still builds, without KD projections
    plain = Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2), Preprocessing())
    assert "kd_features" not in plain.forward_train(*x)


def test_modality_shift_is_bounded_and_absent_without_audio_and_video():
    from engines.student import ModalityShift

    torch.manual_seed(0)
    cfg = StudentConfig(n_labels=3, dim=16, heads=2, shift_threshold=0.1)
    shift = ModalityShift(cfg).eval()
    text, nonverbal = torch.randn(4, 16), torch.randn(4, 2, 16) * 50
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with torch.no_grad():
        z = shift(text, nonverbal, present)
        moved = (z - text).norm(dim=-1)
    assert torch.all(moved <= 0.1 * text.norm(dim=-1) + 1e-5)  # eq. 19: lambda caps the shift
    assert moved[3] == 0  # no audio, no video: the text token unchanged
    assert moved[:3].min() > 0
    # an absent modality has no say: changing the missing video token changes nothing
    other = nonverbal.clone()
    other[1, 1] += 100
    with torch.no_grad():
        assert torch.allclose(shift(text, other, present)[1], z[1], atol=1e-5)
