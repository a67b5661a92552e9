"""`trainer`: make data, train the student, export a model bundle.

  trainer synth  --out DIR --sessions N --seed S
  trainer teach  --data KIND:PATH --out TEACHER [--epochs N] [--max-turns N] [--resume]
  trainer fit    --data KIND:PATH --out RUN [--epochs N] [--media DIR] [--resume] [--budget-minutes M]
  torchrun --nproc_per_node N -m trainer.cli fit ...     data parallel (gloo on CPU, NCCL on GPUs)
  trainer evaluate RUN|BUNDLE --data KIND:PATH [--split test] --report OUT
  trainer export RUN --out BUNDLE [--precision fp32|fp16] [--tensorrt] [--triton DIR] [--calibration platt|temperature|none]
  trainer card BUNDLE [--eval NAME=REPORT_DIR ...]        add test scores to the model card
  trainer recipe real --out DIR [--quick] [--check]       the default bundle from real data, resumable
  trainer data fetch [meld goemotions iemocap] --to DIR   the public corpora, SHA-256 checked
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="Train and export the multimodal emotion model.")
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file (default: config.toml of the checkout, else built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each command: its arguments in _add_NAME, what it does in NAME (below), both in COMMANDS' order.
    for add in (_add_synth, _add_teach, _add_fit, _add_evaluate, _add_recipe, _add_data, _add_export, _add_card):
        add(sub)
    return parser


def _add_synth(sub) -> None:
    sp = sub.add_parser("synth", help="generate a synthetic multimodal corpus of recorded sessions",
                        description="Speech (espeak-ng) and face video whose wording, prosody and "
                                    "expression carry emotions, muxed into .mp4 files, with manifest.jsonl.")
    sp.add_argument("--out", type=Path, required=True, help="output directory")
    sp.add_argument("--sessions", type=int, default=None, help="number of sessions (default [synth] sessions)")
    sp.add_argument("--seed", type=int, default=None, help="random seed (default [synth] seed)")
    sp.add_argument("--utterances", type=int, default=None, help="utterances per session")
    sp.add_argument("--people", type=int, default=None, choices=(1, 2),
                    help="faces in view: 1, the speaker alone, or 2, both side by side with only the "
                         "speaker's mouth moving (default [synth] people)")


def _add_teach(sub) -> None:
    tp = sub.add_parser("teach", help="fine-tune the text teacher on a corpus's transcripts",
                        description="TelME's text teacher: the text encoder fine-tuned on the prompt "
                                    "'<s1> past turns ... [SEP] Now <s1> feels [MASK]' with a head on the "
                                    "mask token; the epoch is chosen on dev.  Use the result as "
                                    "[train] text_teacher (KD into the student) and its encoder/ folder "
                                    "as [train] text_encoder with [features] text_pooling = \"mask\".")
    tp.add_argument("--data", required=True, metavar="KIND:PATH", help="corpus, as for fit")
    tp.add_argument("--media", type=Path, default=None, metavar="DIR", help="media directory, as for fit")
    tp.add_argument("--out", type=Path, required=True, help="teacher directory to write")
    tp.add_argument("--encoder", default=None, help="text encoder to start from (default [train] text_encoder)")
    # These flags stand for [teach] settings (FLAG_SETTINGS), whose defaults are TeacherConfig's.
    tp.add_argument("--epochs", type=int, default=None, help="epochs (default [teach] epochs)")
    tp.add_argument("--max-turns", type=int, default=None, help="past turns in the prompt (default [teach] max_turns)")
    tp.add_argument("--max-len", type=int, default=None,
                    help="tokens per prompt, oldest cut first (default [teach] max_len)")
    tp.add_argument("--lr", type=float, default=None, help="encoder learning rate (default [teach] lr)")
    tp.add_argument("--batch-size", type=int, default=None, help="batch size (default [teach] batch_size)")
    tp.add_argument("--freeze-layers", type=int, default=None,
                    help="keep the embeddings and the lower N encoder layers fixed (default [teach] "
                         "freeze_layers: 0, train all)")
    tp.add_argument("--budget-minutes", type=float, default=None,
                    help="bound the training time; the LR schedule is shortened to the steps that fit "
                         "(default [teach] max_train_seconds: no bound)")
    tp.add_argument("--speakers", choices=("corpus", "anonymous"), default=None,
                    help="speaker tokens of the prompt: the corpus's speakers, or every turn one unknown "
                         "speaker as the live pipeline hears them, for an encoder a bundle serves with "
                         "(default [teach] speakers: corpus)")
    tp.add_argument("--kd-teacher", type=Path, default=None, metavar="TEACHER",
                    help="distil a stronger teacher of `trainer teach` (same corpus) into this one with "
                         "TelME's response and feature KD")
    tp.add_argument("--response-kd", type=float, default=None,
                    help="weight of the response KD (DIST; default [teach] response_kd)")
    tp.add_argument("--feature-kd", type=float, default=None, help="weight of the feature KD (default [teach] feature_kd)")
    tp.add_argument("--device", default="auto",
                    help="where to train: auto (a CUDA GPU when torch sees one, else the CPU; default), cpu, "
                         "cuda or cuda:N.  The steps run under bf16 autocast where the device has bf16 "
                         "matrix units ([teach] precision)")
    tp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last finished epoch (TEACHER/.checkpoint, "
                         "written after every epoch); give the same options")


def _add_fit(sub) -> None:
    fp = sub.add_parser("fit", help="train the student on a corpus",
                        description="Train text, audio and video peers and the fusion branch; select the "
                                    "epoch on dev and tune per-label thresholds on dev.")
    fp.add_argument("--data", required=True, metavar="KIND:PATH",
                    help="synthetic:DIR, manifest:FILE, meld:DIR, iemocap:DIR, goemotions:DIR, "
                         "goemotions-ekman:DIR, elderreact:DIR, mosei:PATH or cremad:DIR")
    fp.add_argument("--media", type=Path, default=None, metavar="DIR",
                    help="where the corpus's media lie when not under its path (meld, iemocap, elderreact, mosei)")
    fp.add_argument("--out", type=Path, required=True, help="run directory to write")
    fp.add_argument("--epochs", type=int, default=None, help="epochs (default [train] epochs)")
    fp.add_argument("--budget-minutes", type=float, default=None,
                    help="bound the training time; the LR schedule is shortened to the epochs that fit "
                         "(default [train] max_train_seconds: no bound)")
    fp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last epoch (last_state.pt)")


def _add_evaluate(sub) -> None:
    vp = sub.add_parser("evaluate", help="score a run or a bundle on a split of a corpus and write a report",
                        description="Weighted/macro F1, accuracy, per-class F1 (argmax for single-label "
                                    "corpora), multi-label F1s, mAP, Hamming loss, calibration error, "
                                    "confusion matrix and reliability diagram.  A bundle is scored as the "
                                    "pipeline runs it (ONNX Runtime).")
    vp.add_argument("run", type=Path, help="run directory of `trainer fit`, or model bundle of `trainer export`")
    vp.add_argument("--data", required=True, metavar="KIND:PATH", help="corpus, as for fit")
    vp.add_argument("--media", type=Path, default=None, metavar="DIR", help="media directory, as for fit")
    vp.add_argument("--split", default="test", help="train, dev, test, or all (default test)")
    vp.add_argument("--report", type=Path, required=True, help="directory for report.json, report.md and PNGs")


def _add_recipe(sub) -> None:
    rp = sub.add_parser("recipe", help="build a whole bundle from data in one resumable command",
                        description="real: a text teacher fine-tuned on the dialogues of MELD and IEMOCAP "
                                    "first (TelME; all-mpnet-base-v2 where the device has bf16 matrix units, a "
                                    "CUDA GPU or a CPU with AMX or AVX-512 BF16, in a 75-minute budget; MiniLM "
                                    "elsewhere), whose encoder and classifier become the text branch; faces "
                                    "through the FER2013 network; a fusion fitted with synthetic sessions; audio "
                                    "is not used (no real labelled speech offline).  Writes DIR/synthetic, "
                                    "DIR/teacher, DIR/run, DIR/bundle, DIR/reports and DIR/timings.json; run it "
                                    "again to resume.  Settings: [recipe].")
    rp.add_argument("name", choices=["real"], help="the recipe")
    rp.add_argument("--out", type=Path, help="directory for every step's output (required unless --check)")
    rp.add_argument("--quick", action="store_true",
                    help="no teacher (the frozen encoder reads the utterance alone), MELD alone, at most 4 "
                         "epochs and 12 synthetic sessions: the demo's model, in about 5 minutes")
    rp.add_argument("--check", action="store_true",
                    help="only say where the corpora are (exit 2 when one is missing), train nothing")


def _add_data(sub) -> None:
    from trainer.fetch import BASE_URL as FETCH_BASE_URL  # light: urllib, tqdm

    dp = sub.add_parser("data", help="get the corpora the real recipe reads",
                        description="fetch: download MELD and GoEmotions from the public repositories our "
                                    "copies came from, check each file's SHA-256, and lay them out as "
                                    "[recipe] data_root expects (DIR/meld, DIR/goemotions).  IEMOCAP's "
                                    "licence requires a request to its owners: fetch says how.")
    dsub = dp.add_subparsers(dest="action", required=True)
    fetch = dsub.add_parser("fetch", help="download and check the public corpora (resumable)")
    fetch.add_argument("corpora", nargs="*", metavar="CORPUS",  # no choices=: argparse 3.11 refuses none given
                       help="meld, goemotions, iemocap (default: all; iemocap only prints how to get it)")
    fetch.add_argument("--to", type=Path, required=True, metavar="DIR",
                       help="data root to write (then point [recipe] data_root or $EMOTION_DATA at it)")
    fetch.add_argument("--base-url", default=FETCH_BASE_URL, metavar="URL",
                       help="where the files come from: URL + each repository path (default %(default)s; "
                            "a mirror that serves the same paths works)")


def _add_export(sub) -> None:
    ep = sub.add_parser("export", help="export a run as a model bundle (ONNX graphs, weights, manifest)",
                        description="Write a bundle that ONNX Runtime, PyTorch and (with --tensorrt) "
                                    "TensorRT can run: ONNX graphs, student weights, tokenizer, manifest.")
    ep.add_argument("run", type=Path, help="run directory of `trainer fit`")
    ep.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    ep.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                    help="precision of the ONNX graphs (fp16: float16 compute, float32 inputs/outputs)")
    ep.add_argument("--tensorrt", action="store_true",
                    help="also build FP16 TensorRT engines (needs tensorrt and a CUDA GPU: the GPU that will run them)")
    ep.add_argument("--triton", type=Path, metavar="DIR",
                    help="also write a Triton Inference Server model repository to DIR")
    ep.add_argument("--calibration", choices=["platt", "temperature", "none"], default="platt",
                    help="per-label calibration of the probabilities, fitted on the run's dev split "
                         "(platt: scale and bias on each logit; temperature: scale only)")


def _add_card(sub) -> None:
    cp = sub.add_parser("card", help="add `trainer evaluate` reports to a bundle's model card",
                        description="Add the scores of `trainer evaluate` reports (per-label F1, ECE, "
                                    "protocol, split) to the bundle's card.json and card.md, re-write the "
                                    "manifest's hashes and print the card's summary line.")
    cp.add_argument("bundle", type=Path, help="bundle directory of `trainer export`")
    cp.add_argument("--eval", dest="evals", action="append", default=[], metavar="NAME=REPORT_DIR",
                    help="a report directory (or its report.json), named NAME in the card; "
                         "without NAME= it is named KIND-SPLIT (repeatable)")
    


def synth(args, config, progress: bool) -> int:
    from trainer.synth import generate

    manifest = generate(args.out, config.synth.sessions, config.synth.seed,
                        utterances_per_session=config.synth.utterances_per_session,
                        people=config.synth.people, progress=progress)
    print(f"wrote {manifest}")
    return 0


def teach(args, config, progress: bool) -> int:
    from common.errors import MissingInput
    from trainer.datasets import load
    from trainer.metrics import is_single_label
    from trainer.loop import note
    from trainer.placement import training_device
    from trainer.text_teacher import CHECKPOINT_DIR, STATE_FILE, TextTeacher, distil

    if args.resume and not (args.out / CHECKPOINT_DIR / STATE_FILE).is_file():  # before any loading
        raise MissingInput(f"{args.out / CHECKPOINT_DIR / STATE_FILE}: nothing to resume from")
    device = training_device(args.device, "--device")  # before any loading, too
    corpus = load(args.data, args.media, config.train.dev_fraction, config.train.seed)
    multi = not is_single_label(corpus)
    teacher = TextTeacher.create(replace(
        config.teach, labels=list(corpus.labels), encoder=args.encoder or config.train.text_encoder,
        multi_label=multi, seed=config.train.seed, kd_teacher=str(args.kd_teacher or ""))).to(device)
    log = note if progress else (lambda m: None)  # note: beside the progress bar, not into it
    train = corpus.split("train")
    kd = distil(args.kd_teacher, teacher, train, log) if args.kd_teacher else None
    history = teacher.fit(train, corpus.split("dev"), log=log, kd=kd,
                          checkpoint=args.out / CHECKPOINT_DIR, resume=args.resume, progress=progress)
    teacher.save(args.out)
    key = "dev_macro_f1" if multi else "dev_weighted_f1"
    print(json.dumps({"teacher": str(args.out), key: max(h[key] for h in history)}, indent=2))
    return 0


def fit(args, config, progress: bool) -> int:
    from trainer.fit import fit as fit_run

    run = fit_run(args.data, args.out, config.train, config.preprocessing, config.faces, progress,
                  loss=config.loss, media=args.media, resume=args.resume, speech_pad_ms=config.speech_pad_ms)
    if "rank" in run:
        return 0  # a torchrun rank other than 0: rank 0 reports
    print(json.dumps({"run": str(args.out), "selected_epoch": run["selected_epoch"],
                      "dev_weighted_f1": run["dev_weighted_f1"]}, indent=2))
    return 0


def evaluate(args, config, progress: bool) -> int:
    from trainer.evaluate import evaluate as evaluate_run

    report = evaluate_run(args.run, args.data, args.split, args.report, media=args.media,
                          cache_dir=config.train.cache_dir, progress=progress)
    print(json.dumps({k: report["metrics"][k] for k in ("weighted_f1", "macro_f1", "accuracy")}, indent=2))
    print(f"wrote {args.report}/report.json, report.md")
    return 0


def recipe(args, config, progress: bool) -> int:
    from common.errors import UserError
    from trainer.loop import note
    from trainer.recipe import check, real

    if args.check:
        for spec in check(config, args.quick).values():
            print(spec)
        return 0
    if args.out is None:
        raise UserError("--out DIR is required (the directory for every step's output)")
    done = real(args.out, config, quick=args.quick, progress=progress, log=note)
    scores = {name: json.loads((path / "report.json").read_text())["metrics"]["weighted_f1"]
              for name, path in done["reports"].items()}
    print(json.dumps({"bundle": str(done["bundle"]), "test_weighted_f1": scores,
                      "seconds": {k: round(v, 1) for k, v in done["seconds"].items()}}, indent=2))
    print(f"serve it: realtime serve --model {done['bundle']}")
    return 0


def data(args, config, progress: bool) -> int:
    from trainer.fetch import fetch_command

    return fetch_command(args.corpora, args.to, args.base_url, progress)


def export(args, config, progress: bool) -> int:
    from trainer.export import export as export_run

    manifest = export_run(args.run, args.out, args.precision, args.tensorrt, args.triton, args.calibration, progress)
    parity = ", ".join(f"{k} {v:.1e}" for k, v in manifest["parity_max_abs_diff"].items())
    print(f"wrote {args.out} ({manifest['precision']}; max |diff| from PyTorch: {parity})")
    if "why" in manifest.get("calibration", {}):
        print(f"no calibration: {manifest['calibration']['why']}")
    elif "calibration" in manifest:
        dev = manifest["calibration"]["dev"]
        print(f"calibration ({manifest['calibration']['method']}, on dev): per-label ECE "
              f"{dev['before']['per_label_ece']:.3f} -> {dev['after']['per_label_ece']:.3f}, top-label ECE "
              f"{dev['before']['top_label_ece']:.3f} -> {dev['after']['top_label_ece']:.3f}")
    if args.triton:
        print(f"wrote Triton model repository {args.triton}")
    return 0


def card(args, config, progress: bool) -> int:
    from engines.card import read_card, summary_line
    from trainer.card import add_reports, parse_eval

    got = add_reports(args.bundle, dict(map(parse_eval, args.evals))) if args.evals else read_card(args.bundle)
    print(summary_line(got) if got else f"{args.bundle}: no model card (export it again)")
    return 0


COMMANDS = {"synth": synth, "teach": teach, "fit": fit, "evaluate": evaluate, "recipe": recipe, "data": data,
            "export": export, "card": card}
# Per command, the flags that stand for a setting of the config file: (flag's dest, SECTION.KEY,
# and the factor from the flag's unit to the setting's where they differ).
FLAG_SETTINGS = {
    "synth": (("sessions", "synth.sessions"), ("seed", "synth.seed"),
              ("utterances", "synth.utterances_per_session"), ("people", "synth.people")),
    "teach": (("epochs", "teach.epochs"), ("max_turns", "teach.max_turns"), ("max_len", "teach.max_len"),
              ("lr", "teach.lr"), ("batch_size", "teach.batch_size"), ("freeze_layers", "teach.freeze_layers"),
              ("budget_minutes", "teach.max_train_seconds", 60), ("speakers", "teach.speakers"),
              ("response_kd", "teach.response_kd"), ("feature_kd", "teach.feature_kd")),
    "fit": (("epochs", "train.epochs"), ("budget_minutes", "train.max_train_seconds", 60)),
}


def flag_overrides(args) -> list[str]:
    """The flags of FLAG_SETTINGS[args.command] that were given, as --set overrides."""
    out = []
    for dest, key, *factor in FLAG_SETTINGS.get(args.command, ()):
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={value * factor[0] if factor else value}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from common.errors import UserError
    from trainer.config import load_config

    try:
        # Such flags are overrides like --set, given after those: the one mapping onto settings.
        overrides = [*args.overrides, *flag_overrides(args)]
        return COMMANDS[args.command](args, load_config(args.config, overrides), not args.no_progress)
    except UserError as exc:  # bad input: one line; anything else is a bug and keeps its traceback
        print(f"trainer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
