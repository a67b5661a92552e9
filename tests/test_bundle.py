"""Bundles: hashes are checked, a damaged bundle is refused with the file's name,
and ONNX Runtime runs the exported graphs as PyTorch does."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import engines
from engines.bundle import BundleError, open_bundle
from engines.runtime import Window


@pytest.fixture
def damaged(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_bundle_opens_and_lists_every_file(bundle):
    b = open_bundle(bundle)
    assert set(b.manifest["files"]) == {"student.onnx", "text_encoder.onnx", "tokenizer.json",
                                        "student.safetensors", "card.json", "card.md"}
    assert len(b.thresholds) == len(b.labels)


def test_tampered_graph_is_refused(damaged):
    graph = damaged / "student.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="student.onnx.*sha256"):
        open_bundle(damaged)


def test_truncated_and_missing_files_are_refused(bundle, damaged):
    (damaged / "text_encoder.onnx").write_bytes((bundle / "text_encoder.onnx").read_bytes()[:1000])
    with pytest.raises(BundleError, match="text_encoder.onnx"):
        open_bundle(damaged)
    shutil.copy(bundle / "text_encoder.onnx", damaged / "text_encoder.onnx")
    (damaged / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        open_bundle(damaged)


def test_corrupt_manifest_is_refused(damaged):
    (damaged / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json.*JSON"):
        open_bundle(damaged)


def test_replay_exits_nonzero_on_a_tampered_bundle(damaged, held_out_session, tmp_path):
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["thresholds"][0] = 0.0
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    (damaged / "tokenizer.json").write_text("{}")
    # The speech stages start while the bundle is checked; the refusal must still lose
    # nothing: the results file of an earlier run stays as it was.
    earlier = tmp_path / "results.jsonl"
    earlier.write_text('{"type": "utterance"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(held_out_session / "s000.mp4"),
         "--model", str(damaged), "--out", str(earlier)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "realtime replay: error:" in result.stderr and "Traceback" not in result.stderr
    assert "tokenizer.json" in result.stderr and "sha256" in result.stderr
    assert earlier.read_text() == '{"type": "utterance"}\n'


def test_replay_refuses_a_bundle_at_a_rate_the_pipeline_cannot_hear(damaged, tmp_path):
    """The VAD and the ASR run at 16 kHz only: a bundle whose features were computed at another
    rate (honestly exported: its hashes match) is refused before any media is read."""
    from engines.bundle import write_manifest
    from engines.media import MediaWriter

    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["preprocessing"]["sample_rate"] = 8000
    write_manifest(damaged, {k: v for k, v in manifest.items() if k != "files"})
    open_bundle(damaged)  # a valid bundle, only not one the pipeline can serve
    media = tmp_path / "clip.mp4"
    with MediaWriter(media, 5, 64, 48) as writer:
        for _ in range(5):
            writer.video(np.zeros((48, 64, 3), np.uint8))
            writer.audio(np.zeros(3200, np.float32))
    result = subprocess.run([sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(damaged)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "realtime replay: error:" in result.stderr and "Traceback" not in result.stderr
    assert "sample_rate = 8000 Hz" in result.stderr and "16000" in result.stderr, result.stderr


def test_onnxruntime_matches_pytorch(bundle, run_dir):
    from engines.student import INPUTS, ExportedStudent
    from trainer.export import example_inputs
    from trainer.fit import load_run

    _, model = load_run(run_dir)
    engine = engines.load(bundle, backend="onnxruntime")
    inputs = example_inputs(model, batch=5, seed=3)
    with torch.no_grad():
        expected = ExportedStudent(model)(*inputs).numpy()
    got = engine.backend.run_student({n: t.numpy() for n, t in zip(INPUTS, inputs)})
    assert np.abs(expected - got).max() < 1e-4


def test_text_encoder_graph_matches_pytorch(bundle, run_dir):
    from trainer.fit import embed_texts
    from trainer.text_encoder import SentenceEncoder

    texts = ["I am so happy today!", "Please put the files on my desk.", "no"]
    engine = engines.load(bundle)
    info = json.loads((run_dir / "run.json").read_text())
    expected = embed_texts(SentenceEncoder.for_preprocessing(info["text_encoder"], engine.pre), texts, engine.pre)
    assert np.abs(engine.embed_text(texts) - expected).max() < 1e-4


def test_engine_batches_windows_with_missing_modalities(bundle):
    engine = engines.load(bundle)
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    windows = [
        Window(0.0, 1.0, text="What a wonderful surprise!"),
        Window(0.0, 1.0, audio=rng.standard_normal(16000).astype(np.float32) * 0.1),
        Window(0.0, 1.0, crops=[(0.5, crop)]),
        Window(0.0, 1.0, text="fine", crops=[(0.5, None)]),  # a frame without a face
    ]
    preds = engine.infer(windows)
    assert [p.modalities for p in preds] == [["text"], ["audio"], ["video"], ["text"]]
    for p in preds:
        assert set(p.probabilities) == set(engine.labels)
        assert set(p.peers) == set(p.modalities)
    # A window scores the same alone as in a batch: samples never mix.
    alone = engine.infer([windows[1]])[0].probabilities
    assert alone == pytest.approx(preds[1].probabilities, abs=1e-5)
