"""Score `trainer teach` directories on each corpus's dev split: how the recipe chooses its teacher's data.

    python benchmarks/teacher_dev.py --teacher NAME=DIR [--teacher NAME=DIR ...] --out FILE

Each teacher reads the dev dialogues of MELD and IEMOCAP (IEMOCAP on the shared labels:
happiness and excited as joy, frustration dropped, trainer.datasets.mix), with the prompt it
was tuned on.  Dev only: the test splits are scored once, by the recipe, for the teacher it keeps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.report import check_tree, result_json, write  # noqa: E402

CORPORA = {"meld": "meld:{root}/meld", "iemocap": "iemocap:{root}/iemocap"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", action="append", required=True, help="NAME=DIR of `trainer teach`")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder holding meld/, iemocap/")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    check_tree()
    from trainer.datasets import load
    from trainer.text_teacher import TextTeacher

    started = time.perf_counter()
    both = load("+".join(spec.format(root=args.data) for spec in CORPORA.values())).split("dev")  # shared labels
    dev = {kind: [u for u in both if u.extra.get("corpus") == kind] for kind in CORPORA}
    metrics, teachers = {}, {}
    for item in args.teacher:
        name, _, directory = item.partition("=")
        teacher = TextTeacher.load(directory)
        meta = json.loads((Path(directory) / "text_teacher.json").read_text())
        teachers[name] = {"dir": directory, "config": meta["config"], "about": meta.get("about"),
                          "history": meta.get("history")}
        for kind, rows in dev.items():
            rows = [u for u in rows if set(u.labels) <= set(teacher.config.labels)]
            scores = teacher.score(teacher.predict_proba(rows), teacher.targets(rows))
            metrics[f"{name}_{kind}_dev_weighted_f1"] = round(scores["weighted_f1"], 2)
            print(f"{name}: {kind} dev wF1 {scores['weighted_f1']:.2f} ({len(rows)} utterances)", flush=True)
    write(Path(args.out), result_json("teacher_dev", started, threads=0, metrics=metrics, teachers=teachers,
                                      split="dev"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
