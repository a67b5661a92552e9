"""Whether the bundle's text encoder may run in int8: its MELD dev score in int8 against fp32.

  python benchmarks/text_encoder_int8.py --bundle DIR/bundle [--data meld:PATH] [--out FILE]

Quantises a copy of the bundle's text_encoder.onnx with ONNX Runtime's dynamic int8
quantisation (weights int8, activations quantised per batch), scores both bundles on the dev
split as the pipeline runs them (trainer.evaluate.bundle_scores), and times one utterance's
text embedding in each (median of 30, 2 threads).  Issue 23's rule: int8 only where it loses at
most 0.5 point of weighted F1 on MELD dev.  Writes benchmarks/results/text_encoder_int8.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402

ALLOWED_LOSS = 0.5  # weighted F1 points on MELD dev


def quantised_copy(bundle: Path, dest: Path) -> Path:
    """`bundle` copied to dest with its text encoder in dynamic int8, the manifest re-hashed."""
    import json

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from engines.bundle import MANIFEST, write_manifest

    shutil.copytree(bundle, dest)
    graph = dest / "text_encoder.onnx"
    quantize_dynamic(str(bundle / "text_encoder.onnx"), str(graph), weight_type=QuantType.QInt8)
    write_manifest(dest, json.loads((dest / MANIFEST).read_text()))
    return dest


def embed_ms(bundle: Path, text: str, repeats: int = 30) -> float:
    import numpy as np

    import engines

    engine = engines.load(bundle, backend="onnxruntime", device="cpu", threads=2)
    engine.embed_text([text])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.embed_text([text])
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", default=f"meld:{ROOT.parent / 'shared' / 'data' / 'meld'}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_encoder_int8.json")
    args = parser.parse_args(argv)
    report.check_tree()
    started = time.perf_counter()
    from trainer.evaluate import bundle_scores, score

    # A turn of dialogue as the fusion stage gives it: past turns, then the prompt.
    text = "I told you I would be there. </s> You always say that! </s> Now <s1> feels <mask>"
    with tempfile.TemporaryDirectory() as tmp:
        int8 = quantised_copy(args.bundle, Path(tmp) / "bundle")
        scored = {name: bundle_scores(path, args.data, "dev", progress=False)
                  for name, path in (("fp32", args.bundle), ("int8", int8))}
        scores = {name: score(s.probs, s.y, s.labels, s.thresholds, s.single_label) for name, s in scored.items()}
        ms = {name: embed_ms(path, text) for name, path in (("fp32", args.bundle), ("int8", int8))}
        mb = {name: (path / "text_encoder.onnx").stat().st_size / 2**20 for name, path in
              (("fp32", args.bundle), ("int8", int8))}
    change = scores["int8"]["weighted_f1"] - scores["fp32"]["weighted_f1"]
    decision = ("int8 holds: within the allowed loss" if change >= -ALLOWED_LOSS
                else f"kept fp32: int8 loses more than the {ALLOWED_LOSS} point of MELD dev allowed")
    metrics = {"dev_weighted_f1_fp32": round(scores["fp32"]["weighted_f1"], 2),
               "dev_weighted_f1_int8": round(scores["int8"]["weighted_f1"], 2),
               "dev_weighted_f1_change": round(change, 2),
               "embed_ms_fp32_p50": round(ms["fp32"], 1), "embed_ms_int8_p50": round(ms["int8"], 1),
               "text_encoder_mb_fp32": round(mb["fp32"], 1), "text_encoder_mb_int8": round(mb["int8"], 1)}
    report.write(args.out, report.result_json("text_encoder_int8", started, 2, metrics, bundle=str(args.bundle),
                                              decision=decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
