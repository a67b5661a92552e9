"""The text teachers on a GPU machine in one call: mpnet on MELD and IEMOCAP over 3 seeds,
then MiniLM distilled from the best MELD teacher (chosen on dev), beside a MiniLM control
trained the same way without KD.

  python benchmarks/gpu_teachers.py --mpnet DIR --minilm DIR --data DIR --out DIR [--budget-minutes 3.5]

Made for the GPU machine (benchmarks/device_payload.py brings the models there): every run
is a process of benchmarks/text_teacher.py or meld_text.py with --device cuda, all the seeds
at once on the one GPU.  The settings below were fixed before any test score was seen; the
GPU affords what 2 CPU cores did not: all layers trained, 12 past turns and 256 tokens.

Writes into --out results.tar, holding text_teacher_meld.json and text_teacher_iemocap.json (metrics.weighted_f1
is the mean over the seeds, weighted_f1_std their standard deviation, per-seed scores
beside), meld_text_minilm_kd.json and meld_text_minilm_control.json and the logs; and the
MiniLM (KD or control, whichever scores better on dev) as student.tar.part-NN
(device_payload.send_back; `device_payload.py receive` rebuilds it here).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.device_payload import send_back  # noqa: E402
from benchmarks.report import check_tree, result_json, write  # noqa: E402

SEEDS = (0, 1, 2)
TEACHER = ["--epochs", "4", "--max-len", "256", "--max-turns", "12", "--freeze-layers", "0",
           "--lr", "3e-5", "--batch-size", "32"]
# The student as the CPU-trained MiniLM of meld_text_minilm96.json, so KD is the one change.
STUDENT = ["--epochs", "3", "--max-len", "96", "--max-turns", "8", "--lr", "8e-5", "--batch-size", "32",
           "--seed", "0"]


def launch(script: str, args: list[str], log: Path, device: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script), "--device", device, *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def wait_all(runs: dict[str, subprocess.Popen]) -> None:
    for name, proc in runs.items():
        if proc.wait() != 0:
            print(f"{name}: exited with code {proc.returncode} (see its log)", flush=True)


def best_dev(metrics: dict) -> float:
    """A meld_text.py result's best dev weighted F1 over its epochs (the one its epoch was chosen by)."""
    return max(v for k, v in metrics.items() if k.startswith("dev_weighted_f1_epoch"))


def seeds_summary(corpus: str, files: list[Path], started: float, args) -> dict:
    """One result over the seeds: mean and std of test weighted F1, each seed's numbers beside."""
    runs = [json.loads(f.read_text()) for f in files if f.is_file()]
    if not runs:
        raise SystemExit(f"{corpus}: no seed finished")
    scores = [r["metrics"]["weighted_f1"] for r in runs]
    metrics = {"weighted_f1": statistics.mean(scores),
               "weighted_f1_std": statistics.stdev(scores) if len(scores) > 1 else None,
               "macro_f1": statistics.mean(r["metrics"]["macro_f1"] for r in runs),
               "seeds": len(runs)}
    for r in runs:
        seed = r["metrics"]["seed"]
        metrics[f"seed{seed}_dev_weighted_f1_best"] = best_dev(r["metrics"])
        for key in ("weighted_f1", "macro_f1", "epoch_chosen", "steps_run", "stopped_by_budget", "train_seconds"):
            metrics[f"seed{seed}_{key}"] = r["metrics"][key]
    settings = {k: runs[0]["metrics"][k] for k in ("max_len", "max_turns", "lr", "batch_size", "freeze_layers",
                                                   "n_train", "n_dev", "n_test")}
    return result_json(f"text_teacher_{corpus}", started, 0, metrics, settings=settings,
                       model="TextTeacher(all-mpnet-base-v2), mask-token head, softmax/CE, bf16 autocast on CUDA",
                       budget_minutes_per_run=args.budget_minutes,
                       notes="all seeds trained at once on one GPU; each seed's test scored once with the "
                             "epoch its dev score chose")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mpnet", type=Path, required=True, help="all-mpnet-base-v2 folder")
    parser.add_argument("--minilm", type=Path, required=True, help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--data", type=Path, required=True, help="folder with meld/ and iemocap/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_teachers"))
    parser.add_argument("--budget-minutes", type=float, default=3.5, help="training time bound of each teacher")
    parser.add_argument("--student-budget-minutes", type=float, default=1.5)
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try this script out)")
    args = parser.parse_args(argv)
    check_tree()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    runs, files = {}, {"meld": [], "iemocap": []}
    for corpus in ("meld", "iemocap"):
        for seed in SEEDS:
            name = f"{corpus}_s{seed}"
            files[corpus].append(args.work / f"{name}.json")
            runs[name] = launch("text_teacher.py", [
                "--corpus", corpus, "--data", f"{corpus}:{args.data / corpus}", "--encoder", str(args.mpnet),
                *TEACHER, "--seed", str(seed), "--budget-minutes", str(args.budget_minutes),
                "--save", str(args.work / name), "--out", str(files[corpus][-1])], args.work / f"{name}.log", args.device)
    wait_all(runs)
    for corpus in ("meld", "iemocap"):
        write(args.work / f"text_teacher_{corpus}.json", seeds_summary(corpus, files[corpus], started, args))
    # The KD teacher: the MELD seed with the best dev score (test plays no part).
    best = max((json.loads(f.read_text()) for f in files["meld"] if f.is_file()),
               key=lambda r: best_dev(r["metrics"]))
    teacher = args.work / f"meld_s{best['metrics']['seed']}"
    print(f"KD teacher: {teacher} (chosen on dev)", flush=True)
    common = ["--data", f"meld:{args.data / 'meld'}", "--encoder", str(args.minilm), *STUDENT,
              "--budget-minutes", str(args.student_budget_minutes)]
    students = {"kd": ["--kd-teacher", str(teacher)], "control": []}
    wait_all({name: launch("meld_text.py", [*common, *extra, "--save", str(args.work / f"minilm_{name}"),
                                            "--out", str(args.work / f"meld_text_minilm_{name}.json")],
                           args.work / f"minilm_{name}.log", args.device) for name, extra in students.items()})
    dev = {}
    for name in students:
        result = args.work / f"meld_text_minilm_{name}.json"
        if result.is_file():
            m = json.loads(result.read_text())["metrics"]
            dev[name] = best_dev(m)
    if dev:
        chosen = max(dev, key=dev.get)
        print(f"student brought back: {chosen} (dev weighted F1 {dev})", flush=True)
        (args.work / "student.txt").write_text(f"{chosen}\n{json.dumps(dev)}\n")
        send_back(args.work / f"minilm_{chosen}", args.out, "student")
    with tarfile.open(args.out / "results.tar", "w") as t:  # few files may come back: one for the rest
        for f in sorted(args.work.glob("*.json")) + sorted(args.work.glob("*.log")) + sorted(args.work.glob("*.txt")):
            t.add(f, arcname=f.name)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
