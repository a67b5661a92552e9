"""`trainer evaluate`: the report of the session's run, and the metric functions on known cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.evaluate import (calibration, confusion, evaluate, multi_label_metrics,
                              single_label_metrics)

LABELS = ["a", "b", "c"]


def test_evaluate_writes_a_report_of_the_run(run_dir, corpus, tmp_path):
    from trainer.cli import main

    out = tmp_path / "report"
    assert main(["--no-progress", "evaluate", str(run_dir), "--data", f"synthetic:{corpus}",
                 "--split", "dev", "--report", str(out)]) == 0
    for name in ("report.json", "report.md", "confusion.png", "reliability.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["utterances"] > 0 and not report["single_label"]  # synthetic: some have 2 labels
    for key in ("weighted_f1", "macro_f1", "micro_f1", "samples_f1", "accuracy", "mAP"):
        assert 0 <= m[key] <= 100, key
    assert 0 <= m["hamming_loss"] <= 1 and 0 <= m["ece"] <= 1
    assert set(m["per_class_f1"]) == set(report["labels"])
    assert np.asarray(report["confusion"]).shape == (len(report["labels"]),) * 2
    assert "weighted_f1" in (out / "report.md").read_text()


def test_evaluate_split_all_and_unknown_split(run_dir, corpus, tmp_path):
    import pytest

    report = evaluate(run_dir, f"synthetic:{corpus}", "all", tmp_path / "all", progress=False)
    assert report["utterances"] == sum(1 for line in (corpus / "manifest.jsonl").read_text().splitlines()
                                       if line.strip())
    with pytest.raises(ValueError, match="no utterances"):
        evaluate(run_dir, f"synthetic:{corpus}", "test", tmp_path / "none", progress=False)


def test_perfect_single_label_predictions_score_100():
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]]
    probs = np.where(y > 0, 0.9, 0.05).astype(np.float32)
    m = single_label_metrics(probs, y, LABELS)
    assert m["weighted_f1"] == m["macro_f1"] == m["accuracy"] == 100
    assert all(f == 100 for f in m["per_class_f1"].values())
    assert np.array_equal(confusion(y, y), np.diag(y.sum(0)).astype(int))


def test_perfect_multi_label_predictions_score_100_and_0_loss():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    m = multi_label_metrics(y.copy(), y, LABELS, np.full(3, 0.5))
    for key in ("weighted_f1", "macro_f1", "micro_f1", "samples_f1", "accuracy", "mAP"):
        assert m[key] == 100, key
    assert m["hamming_loss"] == 0
    assert m["ece"] == 0  # probabilities 0 and 1 that are always right
    wrong = multi_label_metrics(1 - y, y, LABELS, np.full(3, 0.5))
    assert wrong["hamming_loss"] == 1 and wrong["weighted_f1"] == 0 and wrong["ece"] == 1


def test_calibration_error_of_a_calibrated_bin_is_zero():
    conf = np.full(10, 0.75)
    correct = np.array([1] * 7 + [0] * 3)  # 70% right at 75% confidence
    assert abs(calibration(conf, correct)["ece"] - 0.05) < 1e-9
    assert calibration(np.full(4, 0.5), np.array([1, 0, 1, 0]))["ece"] == 0


def test_a_bundle_scores_as_the_run_it_was_exported_from(run_dir, bundle, corpus, tmp_path):
    """`trainer evaluate BUNDLE` runs ONNX Runtime on the fusion stage's Windows; the run
    it came from, PyTorch on the trainer's inputs.  Same utterances, same probabilities.
    (This bundle has no calibration: its run has 6 dev utterances; tests/test_calibration.)"""
    from trainer.evaluate import model_scores, write_report

    spec = f"synthetic:{corpus}"
    run = model_scores(run_dir, spec, "all", progress=False)
    onnx = model_scores(bundle, spec, "all", progress=False)
    assert (run.source, run.backend, onnx.source, onnx.backend) == ("run", "torch", "bundle", "onnxruntime")
    assert onnx.labels == run.labels and np.array_equal(onnx.y, run.y)
    assert np.allclose(onnx.thresholds, run.thresholds) and onnx.raw is None
    # fp32 export parity is 1e-4; Engine.infer rounds to 1e-6.
    assert np.abs(onnx.probs - run.probs).max() < 2e-4
    by_run = write_report(run, spec, "all", tmp_path / "run")
    by_bundle = write_report(onnx, spec, "all", tmp_path / "bundle")
    assert by_bundle["source"] == "bundle" and by_bundle["model"] == str(bundle)
    assert (tmp_path / "bundle" / "report.md").read_text().startswith(f"# Evaluation of bundle {bundle}")
    for key in ("weighted_f1", "macro_f1", "micro_f1", "accuracy", "mAP", "ece", "per_label_ece"):
        assert abs(by_bundle["metrics"][key] - by_run["metrics"][key]) < 1e-2, key


def test_ece_scores_the_sigmoid_probabilities_as_published():
    """Top-label ECE is the largest probability as it is, not renormalised over the labels;
    per-label ECE takes every (utterance, label) pair."""
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    probs = np.array([[0.6, 0.6, 0.6], [0.1, 0.6, 0.1], [0.1, 0.1, 0.6], [0.6, 0.1, 0.1]], np.float32)
    m = single_label_metrics(probs, y, LABELS)
    assert m["ece"] == pytest.approx(0.4)  # every top label is right, at 0.6
    pairs = calibration(probs.ravel(), y.ravel())["ece"]
    assert m["per_label_ece"] == pytest.approx(pairs) and m["per_label_ece"] > 0
    assert set(m["ece_by_label"]) == set(LABELS)


def test_evaluate_refuses_what_is_neither_a_run_nor_a_bundle(corpus, tmp_path, capsys):
    import pytest

    from trainer.cli import main

    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a run directory .* nor a model bundle"):
        evaluate(tmp_path / "model", f"synthetic:{corpus}", "all", tmp_path / "report", progress=False)
    assert main(["evaluate", str(tmp_path / "model"), "--data", f"synthetic:{corpus}",
                 "--report", str(tmp_path / "report")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
