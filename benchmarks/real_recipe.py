"""The real recipe end to end, timed, with the test scores of its bundle on every corpus.

  python benchmarks/real_recipe.py --out DIR [--quick] [--threads N] [--set SECTION.KEY=VALUE]

Runs `trainer recipe real` (trainer.recipe.real) into DIR (resumable: a rerun finishes
what is left, and the wall time then covers only that) and writes
benchmarks/results/real_recipe.json (--quick: real_recipe_quick.json).  Each corpus's
test split is scored once, through the exported bundle on ONNX Runtime (the path the
pipeline runs): argmax for the single-label corpora (MELD, IEMOCAP mapped onto Ekman's
labels), the dev-tuned thresholds for the multi-label ones (GoEmotions-Ekman, the
held-out synthetic sessions).  Metrics: <corpus>_weighted_f1, _macro_f1, _ece, and the
seconds of each step; <corpus>_dev_weighted_f1 from the dev split, which is what chooses
between recipe settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import check_tree, result_json, write  # noqa: E402


# How each corpus's labels meet the bundle's (trainer.datasets.mix).
LABEL_MAPPINGS = {
    "meld": "MELD's 7 labels are the bundle's (neutral, joy, sadness, anger, surprise, fear, disgust)",
    "iemocap": "IEMOCAP's 6 classes mapped (trainer.datasets.mix): neutral, happiness and excited -> joy, "
               "sadness, anger; frustration has no Ekman counterpart and its utterances are dropped; no "
               "IEMOCAP utterance is surprise, fear or disgust",
    "goemotions-ekman": "GoEmotions' 28 labels grouped by its Ekman mapping into the 7",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the recipe's directory")
    parser.add_argument("--quick", action="store_true", help="the demo's reduced recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--results", type=Path, default=None, help="result file (default benchmarks/results/...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting, as for trainer (e.g. recipe.text_teacher=\"DIR\"); recorded")
    args = parser.parse_args()
    check_tree()
    import torch

    from trainer.config import load_config
    from trainer.recipe import real

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    done = real(args.out, load_config(None, args.overrides), quick=args.quick, progress=False)
    metrics, per_label = {}, {}
    for name, report in done["reports"].items():
        r = json.loads((report / "report.json").read_text())
        for key in ("weighted_f1", "macro_f1", "ece"):
            metrics[f"{name}_{key}"] = r["metrics"][key]
        metrics[f"{name}_utterances"] = r["utterances"]
        per_label[name] = r["metrics"]["per_class_f1"]
    # Dev scores through the same bundle: what chooses between recipes (test is only reported).
    from trainer.evaluate import evaluate
    from trainer.recipe import check

    for kind, spec in check(load_config(None, args.overrides), args.quick).items():
        report = args.out / "reports-dev" / kind
        if not (report / "report.json").is_file():
            evaluate(done["bundle"], spec, "dev", report, progress=False)
        metrics[f"{kind}_dev_weighted_f1"] = json.loads((report / "report.json").read_text())["metrics"]["weighted_f1"]
    metrics.update({f"seconds_{k}": round(v, 1) for k, v in done["seconds"].items()})
    # What the whole recipe cost, from DIR/timings.json (each step in the run that did its work):
    # a rerun that finds every step done takes seconds, which wall_seconds then shows.
    metrics.update({f"recipe_seconds_{k}": v for k, v in done["timings"].items()})
    card = json.loads((done["bundle"] / "card.json").read_text())
    teacher = card.get("text_encoder", {}).get("teacher")
    name = "real_recipe_quick" if args.quick else "real_recipe"
    results = args.results.parent if args.results else ROOT / "benchmarks" / "results"
    write(args.results or results / f"{name}.json",
          result_json(name, started, args.threads, metrics, per_label_f1=per_label, card_summary=card["summary"],
                      teacher=teacher,
                      dev_weighted_f1=json.loads((args.out / "run" / "run.json").read_text())["dev_weighted_f1"]))
    if not args.quick:  # the bundle's score on each real corpus, one file each (test scored once, above)
        for corpus, report in done["reports"].items():
            if corpus == "synthetic":
                continue
            r = json.loads((report / "report.json").read_text())
            m = r["metrics"]
            write(results / f"bundle_{corpus}.json", result_json(
                f"bundle_{corpus}", started, args.threads,
                {k: m[k] for k in ("weighted_f1", "macro_f1", "accuracy", "ece", "per_label_ece") if k in m},
                split=r.get("split"), utterances=r.get("utterances"), bundle_id=r.get("bundle_id"),
                protocol="argmax (single-label)" if r.get("single_label") else "dev-tuned thresholds",
                labels=card["labels"], label_mapping=LABEL_MAPPINGS.get(corpus, "the corpus's own labels"),
                uncalibrated=r.get("uncalibrated"), per_label_f1=m["per_class_f1"], teacher=teacher,
                trained_on=[d.get("spec") for d in card["training"]["data"]]))


if __name__ == "__main__":
    main()
