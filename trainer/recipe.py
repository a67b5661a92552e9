"""`trainer recipe real --out DIR`: the default bundle, learnt from real data, in one command.

No corpus here has text, voice and face of real people aligned, so each branch learns
from the best real signal there is, and the fusion learns to combine them where they
do meet:

- text: a text teacher fine-tuned by the recipe itself on MELD's dialogues (TelME 3.2.2:
  past turns, speaker tokens, "Now <s> feels <mask>"), whose encoder is the text branch and
  whose classifier is the text head: the fusion adjusts its prediction, so the bundle keeps
  what the teacher learnt instead of re-learning it from frozen features.  On a CPU the
  teacher is all-MiniLM-L6-v2, on a CUDA GPU all-mpnet-base-v2 ([recipe] teacher_freeze_layers
  fixes and caches lower layers where a larger encoder must train on the CPU).  --quick (or [recipe] text_teacher = "none") reads
  the utterance alone with the frozen sentence encoder instead;
- video: the FER2013 face network inside the student (StudentConfig.video_encoder "fer"):
  its predictions are the video head's, its features the video peer's tokens;
- audio: no labelled real speech is available offline, so the bundle does not read
  audio at all (modalities text + video): a branch that only heard espeak-ng cannot
  outvote the others if it is never used;
- fusion: the text corpora teach it the text-only case; synthetic sessions (espeak-ng
  speech, drawn faces, transcripts; `trainer synth`) are the only data where a face and
  words come together, repeated so they weigh in beside 60,000 texts.

Steps, each skipped when its output is already there, so an interrupted recipe resumes
where it stopped (fit itself resumes from its last epoch):

  DIR/synthetic/   synthetic sessions for the fusion        (trainer synth)
  DIR/teacher/     the text teacher, resumed by epoch        (trainer teach; not with --quick)
  DIR/run/         the trained student                       (trainer fit, --resume)
  DIR/bundle/      the bundle realtime runs                  (trainer export)
  DIR/reports/     test scores of every corpus               (trainer evaluate, trainer card)

A bundle is exported again when its run is newer, and a report that scored another
bundle than DIR/bundle (engines.bundle.model_id) is scored again.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.atomic import replacing
from common import offline
from trainer.data import DataError

# corpus kind -> folder of the data root that holds it
FOLDERS = {"meld": "meld", "iemocap": "iemocap", "goemotions-ekman": "goemotions"}
CHECKOUT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@dataclass
class RecipeOptions:
    data_root: str = ""  # folder holding meld/, iemocap/, goemotions/ as the corpora ship them;
    # "" = $EMOTION_DATA, else ../shared/data beside the checkout
    corpora: list[str] = field(default_factory=lambda: ["meld", "iemocap"])  # the text corpora the
    # student's fit reads, of meld, goemotions-ekman, iemocap (iemocap where found: it is licensed on
    # request; --quick: meld alone); every corpus found is scored
    synthetic_sessions: int = 24  # synthetic sessions (face video + speech): the fusion's only aligned
    # text and face
    synthetic_repeat: int = 10  # each synthetic training utterance counts this often per epoch
    epochs: int = 8  # fit's epochs (--quick: at most 4)
    text_teacher: str = "train"  # the text branch.  "train": the recipe first fine-tunes its own text
    # teacher on the dialogues of teacher_corpora (TelME: past turns, speaker tokens, "Now <s> feels
    # <mask>"; the teacher_* settings) into DIR/teacher; a `trainer teach` directory: that teacher.  Either way its
    # encoder becomes the text branch, reading the prompt as it learnt to, and its classifier the
    # text head ([train] text_head), which the fusion adjusts.  "none": the frozen sentence encoder
    # on the utterance alone (--quick)
    teacher_corpora: list[str] = field(default_factory=lambda: ["meld", "iemocap"])  # the dialogue
    # corpora the teacher learns from, of meld and iemocap (where found), on the shared labels (trainer.datasets.mix:
    # IEMOCAP's frustration is dropped); the epoch kept is the best on their dev splits together
    teacher_encoder: str = ""  # the encoder the teacher starts from; "" = all-mpnet-base-v2 where the
    # device has bf16 matrix units (a CUDA GPU; a CPU with AMX or AVX-512 BF16), all-MiniLM-L6-v2 on
    # other CPUs (where mpnet in float32 costs several hours)
    teacher_freeze_layers: int = 0  # on the CPU, the teacher's embeddings and lower N layers stay fixed
    # and run once (TeacherConfig.cache_frozen), for an encoder too large to train whole there; 0 = every
    # layer trained (always on a GPU)
    teacher_max_len: int = 128  # tokens per teacher prompt, the oldest context cut first
    teacher_max_turns: int = 12  # past turns in the teacher's prompt
    teacher_epochs: int = 0  # the teacher's epochs, the best on dev kept; 0 = its encoder's
    # (TEACHER_DEFAULTS: mpnet 2, MiniLM 3)
    teacher_lr: float = 0.0  # the teacher's encoder learning rate; 0 = its encoder's (mpnet 4e-5,
    # MiniLM 8e-5)
    teacher_batch_size: int = 32  # prompts per teacher step
    teacher_budget_minutes: float = 75.0  # the teacher's training time at most (its schedule is fitted
    # to the steps that fit); 0 = no bound
    teacher_device: str = "auto"  # auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N

    def __post_init__(self):
        unknown = sorted(set(self.corpora) - set(FOLDERS))
        if unknown or not self.corpora:
            raise ValueError(f"corpora must be some of {', '.join(FOLDERS)}; got {self.corpora}")
        dialogues = sorted(set(self.teacher_corpora) - {"meld", "iemocap"})
        if dialogues or not self.teacher_corpora:
            raise ValueError(f"teacher_corpora must be some of meld, iemocap (corpora of dialogues); "
                             f"got {self.teacher_corpora}")
        if self.synthetic_sessions < 2 or self.synthetic_repeat < 1 or self.epochs < 1:
            raise ValueError("synthetic_sessions must be >= 2, synthetic_repeat and epochs >= 1")
        if self.teacher_epochs < 0 or self.teacher_max_len < 8 or self.teacher_batch_size < 1 \
                or self.teacher_freeze_layers < 0 or self.teacher_budget_minutes < 0 or self.teacher_lr < 0:
            raise ValueError("teacher_batch_size >= 1, teacher_max_len >= 8, teacher_epochs, teacher_lr, "
                             "teacher_freeze_layers and teacher_budget_minutes >= 0")


def data_root(setting: str) -> Path:
    """Where the corpora are: the setting, $EMOTION_DATA, or ../shared/data beside the checkout."""
    for candidate in (setting, os.environ.get("EMOTION_DATA", ""), str(CHECKOUT_DATA)):
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_dir() or candidate == setting:
                return path.resolve()
    return CHECKOUT_DATA.resolve()


# Licensed to researchers on request (`trainer data fetch` cannot get it): read where it is found,
# left out (and the recipe says so) where it is not.
LICENSED = ("iemocap",)


def corpus_specs(root: Path, corpora: list[str]) -> dict[str, str]:
    """kind -> "kind:PATH" for every corpus found, or a DataError naming the ones missing (a
    LICENSED one that is missing is left out)."""
    specs, missing = {}, []
    for kind in corpora:
        path = root / FOLDERS[kind]
        if path.is_dir():
            specs[kind] = f"{kind}:{path}"
        elif kind not in LICENSED:
            missing.append(str(path))
    if missing or (corpora and not specs):
        raise DataError(f"the real recipe needs {', '.join(missing)}; set [recipe] data_root "
                        "(or $EMOTION_DATA) to the folder that holds meld/, iemocap/ and goemotions/")
    return specs


def step(n: int, total: int, what: str, log) -> float:
    log(f"[{n}/{total}] {what}")
    return time.perf_counter()


def options(config, quick: bool) -> RecipeOptions:
    opts: RecipeOptions = config.recipe
    if quick:
        opts = replace(opts, corpora=["meld"], epochs=min(opts.epochs, 4),
                       synthetic_sessions=min(opts.synthetic_sessions, 12),
                       text_teacher="none" if opts.text_teacher == "train" else opts.text_teacher)
    return opts


MPNET, MINILM = "sentence-transformers/all-mpnet-base-v2", "sentence-transformers/all-MiniLM-L6-v2"
# Each encoder's epochs and learning rate where [recipe] leaves them 0, chosen on dev
# (docs/TRAINING.md): mpnet's 2 epochs at 4e-5 fit 2 CPU cores with bf16 units in about an hour.
TEACHER_DEFAULTS = {MPNET: {"epochs": 2, "lr": 4e-5}, MINILM: {"epochs": 3, "lr": 8e-5}}


def teacher_encoder(opts: RecipeOptions, device, log) -> str:
    """[recipe] teacher_encoder, or mpnet where `device` has bf16 matrix units and mpnet can be
    found (the hub, or its offline part packages), else MiniLM, saying why."""
    from trainer.placement import has_bf16_units

    if opts.teacher_encoder:
        return opts.teacher_encoder
    if not has_bf16_units(device):
        return MINILM
    try:
        offline.resolve_text_encoder(MPNET)  # looked up here: tests stand in for the part packages
    except offline.ModelNotFoundError as exc:
        log(f"text teacher: all-MiniLM-L6-v2, as {MPNET} is not here ({exc})")
        return MINILM
    return MPNET
QUICK_NOTE = ("--quick: the text branch is the frozen sentence encoder reading the utterance alone; "
              "`trainer recipe real --out DIR` (no --quick) fine-tunes a text teacher on MELD's "
              "dialogues first and builds the better bundle")


def teach(out: Path, opts: RecipeOptions, specs: dict[str, str], seed: int, progress: bool, log) -> Path:
    """The recipe's own text teacher in `out` (TelME 3.2.2 on the dialogues of `specs`, kind ->
    "kind:PATH"), trained once and resumed from its last finished epoch when interrupted; its
    card facts (data, device, wall time, dev and test scores, each corpus's too) go into its
    text_teacher.json.  A teacher put there by `trainer teach --out DIR/teacher` is kept, and
    gets its facts now (the device it was trained on taken to be this run's)."""
    from trainer.datasets import load
    from trainer.placement import training_device
    from trainer.text_teacher import CHECKPOINT_DIR, CONFIG_FILE, STATE_FILE, TeacherConfig, TextTeacher

    done = json.loads((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else None
    if done is not None and done.get("about"):
        return out
    device = training_device(opts.teacher_device, "[recipe] teacher_device")
    corpus = load("+".join(specs.values()))
    started = time.perf_counter()
    if done is not None:
        teacher = TextTeacher.load(out, device)
        encoder = teacher.config.encoder
    else:
        encoder = teacher_encoder(opts, device, log)
        own = TEACHER_DEFAULTS.get(encoder, TEACHER_DEFAULTS[MINILM])
        teacher = TextTeacher.create(TeacherConfig(
            labels=list(corpus.labels), encoder=encoder, max_turns=opts.teacher_max_turns,
            max_len=opts.teacher_max_len, lr=opts.teacher_lr or own["lr"], epochs=opts.teacher_epochs or own["epochs"],
            batch_size=opts.teacher_batch_size, seed=seed,
            freeze_layers=0 if device.type == "cuda" else opts.teacher_freeze_layers,
            max_train_seconds=opts.teacher_budget_minutes * 60 or None)).to(device)
        checkpoint = out / CHECKPOINT_DIR
        teacher.fit(corpus.split("train"), corpus.split("dev"), log=log if progress else (lambda m: None),
                    checkpoint=checkpoint, resume=(checkpoint / STATE_FILE).is_file(), progress=progress)
    best = max(teacher.history, key=lambda h: h["dev_weighted_f1"])
    about = {"data": "+".join(specs), "device": str(device), "precision": teacher.precision, "encoder": encoder,
             "train_seconds": round(teacher.history[-1]["seconds"], 1),
             **({} if done else {"wall_seconds_this_run": round(time.perf_counter() - started, 1)}),
             "epoch_chosen": best["epoch"], "dev_weighted_f1": round(best["dev_weighted_f1"], 2)}
    for split in ("dev", "test"):  # test once, with the chosen epoch; each corpus apart when several
        parts = {"": corpus.split(split)}
        if len(specs) > 1:
            parts.update({f"{kind}_": [u for u in parts[""] if u.extra.get("corpus") == kind] for kind in specs})
        for prefix, rows in parts.items():
            scores = teacher.score(teacher.predict_proba(rows), teacher.targets(rows))
            about.update({f"{prefix}{split}_{k}": round(v, 2) for k, v in scores.items()
                          if split == "test" or prefix})
    log(f"text teacher on {about['data']}: dev wF1 {about['dev_weighted_f1']}, test wF1 "
        f"{about['test_weighted_f1']} ({encoder}, {device})")
    teacher.save(out, about=about)
    return out


def text_from_teacher(teacher: Path, train, pre):
    """[train] and [features] for a text branch that is the fine-tuned encoder of `trainer
    teach`: the same prompt (past turns, speaker tokens, mask token) and length it was tuned on,
    and its classifier as the text head ([train] text_head)."""
    from trainer.text_teacher import CONFIG_FILE

    meta = teacher / CONFIG_FILE
    if not meta.is_file() or not (teacher / "encoder").is_dir():
        raise DataError(f"[recipe] text_teacher {teacher}: not a `trainer teach` directory "
                        f"(no {CONFIG_FILE} and encoder/)")
    tuned = json.loads(meta.read_text())["config"]
    turns = tuned["max_turns"] if tuned.get("context", True) else 0
    return (replace(train, text_encoder=str((teacher / "encoder").resolve()), text_head=str(teacher.resolve())),
            replace(pre, text_pooling="mask", text_context_turns=-1 if turns is None else turns,
                    text_max_tokens=tuned["max_len"], text_sep="", text_mask=""))


def scored_bundle(report: Path) -> str | None:
    """The bundle_id a `trainer evaluate` report directory scored; None: no report yet."""
    try:
        return json.loads((report / "report.json").read_text()).get("bundle_id")
    except (OSError, ValueError):
        return None


def check(config, quick: bool = False) -> dict[str, str]:
    """kind -> "kind:PATH" of the corpora the recipe would read, or a DataError."""
    opts = options(config, quick)
    return corpus_specs(data_root(opts.data_root), opts.corpora)


def real(out: Path, config, quick: bool = False, progress: bool = True, log=print) -> dict:
    """Run the real recipe into `out`; returns {"bundle", "reports", "seconds"}."""
    from engines.card import read_card
    from trainer.card import add_reports
    from trainer.evaluate import bundle_id, evaluate
    from trainer.export import export
    from trainer.fit import fit
    from trainer.synth import generate

    opts = options(config, quick)
    specs = check(config, quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_root(opts.data_root)
    training_teacher = opts.text_teacher == "train"
    started, total, seconds = time.perf_counter(), 4 + training_teacher, {}
    absent = [kind for kind in LICENSED if kind in {*opts.corpora, *opts.teacher_corpora} and kind not in specs
              and not (root / FOLDERS[kind]).is_dir()]
    if absent and not quick:
        log(f"{', '.join(absent)} not found under {root} (licensed: its owners give it on request): "
            "the recipe reads the other corpora without it")
    if opts.text_teacher == "none":
        log(QUICK_NOTE if quick else "[recipe] text_teacher = \"none\": the text branch is the frozen sentence "
                                     "encoder reading the utterance alone")

    t0 = step(1, total, f"synthetic sessions for the fusion ({opts.synthetic_sessions})", log)
    synthetic, held_out = out / "synthetic", out / "synthetic-test"
    if not (synthetic / "manifest.jsonl").is_file():
        generate(synthetic, opts.synthetic_sessions, config.synth.seed, progress=progress)
    if not (held_out / "manifest.jsonl").is_file():  # other voices' draws: a test the fit never saw
        generate(held_out, max(2, opts.synthetic_sessions // 6), config.synth.seed + 1, progress=progress)
    seconds["synthetic"] = time.perf_counter() - t0

    teacher = None if opts.text_teacher == "none" else Path(opts.text_teacher)
    if training_teacher:
        t0 = step(2, total, f"text teacher: fine-tuned on the dialogues of {', '.join(opts.teacher_corpora)} "
                            "(TelME)", log)
        teacher = teach(out / "teacher", opts, corpus_specs(root, opts.teacher_corpora), config.train.seed,
                        progress, log)
        seconds["teacher"] = time.perf_counter() - t0

    t0 = step(2 + training_teacher, total, f"fit on {', '.join(specs)} + synthetic", log)
    mix = "+".join([*specs.values(), f"synthetic:{synthetic}*{opts.synthetic_repeat}"])
    train = replace(config.train, video_encoder="fer", modalities=("text", "video"), epochs=opts.epochs)
    pre = config.preprocessing
    if teacher is not None:
        train, pre = text_from_teacher(teacher, train, pre)
    run = out / "run"
    if not (run / "run.json").is_file():
        fit(mix, run, train, pre, config.faces, progress, loss=config.loss,
            resume=(run / "last_state.pt").is_file(), speech_pad_ms=config.speech_pad_ms)
    seconds["fit"] = time.perf_counter() - t0

    t0 = step(3 + training_teacher, total, "export", log)
    bundle = out / "bundle"
    manifest = bundle / "manifest.json"
    if not manifest.is_file() or manifest.stat().st_mtime < (run / "run.json").stat().st_mtime:
        export(run, bundle)
    seconds["export"] = time.perf_counter() - t0

    t0 = step(4 + training_teacher, total, "test scores, into the model card", log)
    reports = {}
    # Every corpus found is scored, the ones the fit did not read too (how the bundle carries over);
    # --quick, the demo's few minutes, scores only what it read.
    found = set() if quick else {kind for kind, folder in FOLDERS.items() if (root / folder).is_dir()}
    tests = {kind: (spec, "test") for kind, spec in {**corpus_specs(root, sorted(found)), **specs}.items()}
    tests["synthetic"] = (f"synthetic:{held_out}", "all")
    this = bundle_id(bundle)
    for name, (spec, split) in tests.items():
        report = out / "reports" / name
        # A report of an earlier export (the run changed since) scored another model: again.
        if scored_bundle(report) != this:
            evaluate(bundle, spec, split, report, progress=progress)  # the ONNX path the pipeline runs
        reports[name] = report
    on_card = (read_card(bundle) or {}).get("evaluations", {})
    if any(on_card.get(name, {}).get("bundle_id") != this for name in reports):
        add_reports(bundle, reports)  # the test scores go into the bundle's model card
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return {"bundle": bundle, "reports": reports, "seconds": seconds, "timings": record_timings(out, seconds)}


TIMINGS = "timings.json"


def record_timings(out: Path, seconds: dict[str, float]) -> dict[str, float]:
    """DIR/timings.json: each step's seconds in the run that did its work.  A resumed recipe
    skips finished steps in a moment, so the longest time seen is kept for each step and the
    total is their sum: what the whole recipe cost (a step interrupted and resumed counts its
    longer part)."""
    path = out / TIMINGS
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    steps = {k: round(max(float(kept.get(k, 0.0)), v), 1) for k, v in seconds.items() if k != "total"}
    steps["total"] = round(sum(steps.values()), 1)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(steps, indent=2) + "\n")
    return steps
