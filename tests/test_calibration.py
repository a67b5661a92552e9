"""Per-label calibration (engines.calibration, trainer.calibrate): fitted at export on the
run's dev split, hash-checked in the bundle, applied the same way by every backend that runs
here (ONNX Runtime, PyTorch, the inference service of `realtime infer`, a real Triton server),
the identity for bundles exported without it, and lower ECE on a model made overconfident."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engines
from engines.bundle import BundleError, open_bundle, write_manifest
from engines.calibration import CALIBRATION, load_calibration
from tests.helpers import infer_service, max_difference, sample_windows
from trainer.calibrate import fit_calibration, fit_label
from trainer.evaluate import per_label_calibration, top_label_calibration

TOLERANCE = 1e-4  # backends' graphs agree within this (tests/test_triton, test_engines)
DEV_FRACTION = 0.8  # of the session corpus's 5 sessions: 24 dev utterances, enough to fit on


def _run_with_a_larger_dev(run_dir, out, fusion_factor: float = 1.0):
    """The session's run (whose dev split is one session, 6 utterances: too few to calibrate on)
    with run.json naming a dev split of 4 sessions, which export then reads again and fits on;
    fusion_factor multiplies the fusion head's logits (same predictions, other confidence)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("last_state.pt"))
    info = json.loads((out / "run.json").read_text())
    info["options"]["dev_fraction"] = DEV_FRACTION
    (out / "run.json").write_text(json.dumps(info))
    if fusion_factor != 1.0:
        weights = load_file(str(out / "model.safetensors"))
        for key in ("fusion_head.weight", "fusion_head.bias"):
            weights[key] = weights[key] * fusion_factor
        save_file(weights, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def calibrated(run_dir, tmp_path_factory):
    """A real bundle with a calibration that `trainer export` fitted."""
    from trainer.export import export

    work = tmp_path_factory.mktemp("calibrated")
    export(_run_with_a_larger_dev(run_dir, work / "run"), work / "bundle")
    return work / "bundle"


# --------------------------------------------------------------------------- fitting


def test_platt_scaling_undoes_a_known_miscalibration():
    """Probabilities sigmoid(3z + 1) of events that happen with sigmoid(z): fitted on one half,
    the other half's ECEs fall to near 0 and the fit finds scale 1/3, bias -1/3."""
    rng = np.random.default_rng(0)
    z = rng.normal(-1, 2, (4000, 5))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    shown = 1 / (1 + np.exp(-(3 * z + 1)))
    probs = np.repeat(shown[:, None, :], 4, axis=1).astype(np.float32)  # every head the same
    cal = fit_calibration(probs[:2000], np.ones((2000, 3)), y[:2000])
    assert np.allclose(cal.scale, 1 / 3, atol=0.05) and np.allclose(cal.bias, -1 / 3, atol=0.15)
    after = cal.apply(probs[2000:])[:, 0]
    before_pl, after_pl = per_label_calibration(shown[2000:], y[2000:])["ece"], per_label_calibration(after, y[2000:])["ece"]
    before_top, after_top = top_label_calibration(shown[2000:], y[2000:])["ece"], top_label_calibration(after, y[2000:])["ece"]
    assert before_pl > 0.1 and after_pl < 0.03, (before_pl, after_pl)
    assert before_top > 0.1 and after_top < 0.05, (before_top, after_top)
    # each label's order is kept: a non-decreasing map of each probability
    for j in range(5):
        order = np.argsort(probs[2000:, 0, j])
        assert np.all(np.diff(after[order, j]) >= 0)


def test_a_label_never_true_on_dev_gets_a_finite_low_probability():
    scale, bias = fit_label(np.linspace(-3, 3, 50), np.zeros(50))
    assert np.isfinite(bias) and 0 < scale and 1 / (1 + np.exp(-(scale * 3 + bias))) < 0.1
    scale, _ = fit_label(np.linspace(-3, 3, 50), np.zeros(50), method="temperature")
    assert 0 < scale


def test_a_peer_without_enough_present_rows_keeps_the_identity():
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.01, 0.99, (200, 4, 3)).astype(np.float32)
    y = (rng.random((200, 3)) < 0.3).astype(np.float32)
    present = np.zeros((200, 3))
    present[:, 0] = 1  # text always, audio never, video on 5 rows
    present[:5, 2] = 1
    cal = fit_calibration(probs, present, y, modalities=("text", "video"))
    assert not np.allclose(cal.scale[:2], 1)  # fusion and text fitted
    assert np.all(cal.scale[2:] == 1) and np.all(cal.bias[2:] == 0)  # audio not read, video too few rows


def test_an_unknown_method_is_refused(run_dir, tmp_path):
    from trainer.export import export

    with pytest.raises(ValueError, match="calibration 'isotonic': expected one of platt, temperature, none"):
        export(run_dir, tmp_path / "b", calibration="isotonic")


# --------------------------------------------------------------------------- in the bundle


def test_too_few_dev_utterances_export_no_calibration_and_say_why(bundle):
    opened = open_bundle(bundle)  # the session's bundle: its run has 6 dev utterances
    assert "calibration" not in opened.manifest["graphs"] and not (bundle / CALIBRATION).exists()
    assert opened.manifest["calibration"] == {"method": "none", "why": "6 dev utterances, fewer than 20 to fit on"}
    assert load_calibration(opened).is_identity
    assert "None: 6 dev utterances" in (bundle / "card.md").read_text()


def test_export_stores_a_calibration_and_retunes_the_thresholds(calibrated):
    bundle = calibrated
    opened = open_bundle(bundle)
    assert opened.manifest["graphs"]["calibration"] == CALIBRATION and CALIBRATION in opened.manifest["files"]
    cal = load_calibration(opened)
    assert cal.method == "platt" and not cal.is_identity
    summary = opened.manifest["calibration"]
    assert summary["fitted_on"] == "dev" and summary["dev_utterances"] == 24
    assert len(summary["uncalibrated_thresholds"]) == len(opened.labels)
    card = json.loads((bundle / "card.json").read_text())
    assert list(card["thresholds"].values()) == opened.thresholds  # the re-tuned ones, on the card too
    assert card["calibration"]["dev"] == summary["dev"]
    assert "## Calibration" in (bundle / "card.md").read_text()


@pytest.fixture(scope="module")
def service(calibrated, tmp_path_factory):
    """`realtime infer` as a process of its own; yields its endpoint."""
    yield from infer_service(calibrated, tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def triton(calibrated, tmp_path_factory):
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install -e '.[triton]'")
    from engines.triton import write_model_repository
    from tests.triton_server import server_files, triton_server

    server_files()  # skips, saying why, where the server cannot run
    work = tmp_path_factory.mktemp("triton")
    write_model_repository(calibrated, work / "exported")
    with triton_server(work / "exported", work) as url:
        yield url


def test_every_backend_publishes_the_same_calibrated_probabilities(calibrated, service, triton):
    bundle = calibrated
    windows = sample_windows(12)
    local = engines.load(bundle, "onnxruntime", "cpu")
    feeds = local.features(windows)
    calibrated, raw = local.predict(feeds), local.predict(feeds, calibrated=False)
    # The calibration changes what is published, by the bundle's numbers.
    assert max_difference(calibrated, raw) > 1e-2
    graph = local.backend.run_student(feeds)
    expected = local.calibration.apply(graph, feeds["present"] if local.peer_base else None)
    assert np.allclose([list(p.probabilities.values()) for p in calibrated], expected[:, 0], atol=1e-6)
    others = {"torch": engines.load(bundle, "torch", "cpu"),
              "service": engines.load(bundle, "service", service_endpoint=service),
              "triton": engines.load(bundle, "triton", triton_url=triton)}
    for name, engine in others.items():
        assert engine.backend.name == name
        worst = max_difference(engine.infer(windows), calibrated)
        assert worst < TOLERANCE, (name, worst)


@pytest.fixture
def copy(calibrated, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(calibrated, out)
    return out


def _rewrite(bundle, change) -> None:
    """Change the manifest and re-hash every file: what a careless re-packaging would do."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})


def test_a_tampered_calibration_is_refused(copy):
    data = json.loads((copy / CALIBRATION).read_text())
    data["scale"][0][0] *= 2
    (copy / CALIBRATION).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="calibration.json: sha256 does not match"):
        engines.load(copy, "onnxruntime", "cpu")
    # Re-hashed but not a calibration the engine can apply: refused with what is wrong.
    data["scale"][0][0] = -1.0
    (copy / CALIBRATION).write_text(json.dumps(data))
    _rewrite(copy, lambda m: None)
    with pytest.raises(BundleError, match="calibration.json: scale must be finite and > 0"):
        engines.load(copy, "onnxruntime", "cpu")
    data["labels"] = data["labels"][::-1]
    (copy / CALIBRATION).write_text(json.dumps(data))
    _rewrite(copy, lambda m: None)
    with pytest.raises(BundleError, match="labels .* are not the bundle's"):
        engines.load(copy, "onnxruntime", "cpu")


def test_a_bundle_without_calibration_runs_with_the_identity(calibrated, copy):
    bundle = calibrated
    def uncalibrated(manifest):
        del manifest["graphs"]["calibration"], manifest["calibration"]

    (copy / CALIBRATION).unlink()
    _rewrite(copy, uncalibrated)
    old = engines.load(copy, "onnxruntime", "cpu")
    assert old.calibration.is_identity
    windows = sample_windows(6)
    reference = engines.load(bundle, "onnxruntime", "cpu")
    assert max_difference(old.infer(windows), reference.predict(reference.features(windows), calibrated=False)) == 0
    # A calibration.json the manifest does not list was not written by the export.
    shutil.copy(bundle / CALIBRATION, copy / CALIBRATION)
    with pytest.raises(BundleError, match="calibration.json: not listed"):
        engines.load(copy, "onnxruntime", "cpu")


# --------------------------------------------------------------------------- scored


def test_calibration_lowers_the_ece_of_an_overconfident_model(run_dir, held_out_session, tmp_path):
    """The session's run with its fusion logits multiplied by 4 (overconfident, same
    predictions), exported with calibration and scored by `trainer evaluate` on a session it
    never saw: both ECEs before and after, the per-label one lower.  (This run is nearly
    uninformative, and its held-out session has 6 utterances: the top-label ECE of per-label
    calibration is tested on known logits above, not on it.)"""
    from trainer.evaluate import evaluate
    from trainer.export import export

    export(_run_with_a_larger_dev(run_dir, tmp_path / "run", fusion_factor=4.0), tmp_path / "bundle")
    report = evaluate(tmp_path / "bundle", f"synthetic:{held_out_session}", "all", tmp_path / "report",
                      progress=False)
    before, after = report["uncalibrated"], report["metrics"]
    print(f"overconfident run, held-out session: per-label ECE {before['per_label_ece']:.3f} -> "
          f"{after['per_label_ece']:.3f}, top-label ECE {before['ece']:.3f} -> {after['ece']:.3f}")
    assert report["calibrated"] and after["per_label_ece"] < before["per_label_ece"]
    assert 0 <= after["ece"] <= 1 and 0 <= before["ece"] <= 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| per-label ECE |" in md and "before | after" in md


def test_a_lone_modality_s_fused_output_takes_its_peer_s_calibration():
    """With peer_base the graph's fused output of a face alone IS the video peer's; calibrating
    it with the fusion's own per-label scalings could reorder the face's labels.  Such a row
    gets the peer's calibration, so fused and peer still agree; rows with several modalities
    keep the fusion's."""
    from engines.calibration import Calibration

    rng = np.random.default_rng(0)
    labels = 5
    scale = rng.uniform(0.3, 3.0, (4, labels))
    bias = rng.uniform(-2, 2, (4, labels))
    cal = Calibration("platt", scale, bias)
    peer = rng.uniform(0.01, 0.99, (64, labels))
    probs = np.stack([peer, rng.uniform(size=(64, labels)), rng.uniform(size=(64, labels)), peer], axis=1)
    video_only = np.tile([0.0, 0.0, 1.0], (64, 1))
    out = cal.apply(probs, video_only)
    np.testing.assert_allclose(out[:, 0], out[:, 3], rtol=1e-6)
    # Without the presence (an older student, whose fusion is its own), the fusion's scalings
    # reorder some rows' labels: the case the presence is there for.
    plain = cal.apply(probs)
    assert (plain[:, 0].argmax(1) != plain[:, 3].argmax(1)).any()
    both = np.tile([1.0, 0.0, 1.0], (64, 1))
    np.testing.assert_allclose(cal.apply(probs, both)[:, 0], plain[:, 0], rtol=1e-6)
