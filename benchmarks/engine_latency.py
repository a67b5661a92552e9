"""Latency and throughput of the student graph on every backend available here.

  python benchmarks/engine_latency.py [BUNDLE] [--repeats 100] [--threads 1] [--out FILE]

Times `run_student` (host arrays in, host probabilities out, so GPU numbers
include the copies) at batch 1, 8 and 32 on random inputs of the bundle's
shapes.  CPU: onnxruntime and torch.  With CUDA also torch_cuda_eager,
torch_cuda_compile (torch.compile), torch_cuda_graphs (one captured CUDA graph
per batch size) and tensorrt when the bundle has engines.  Without BUNDLE a
tiny bundle is exported from a randomly initialised student (timings do not
depend on the weights), so this runs without training data.

Writes benchmarks/results/engine_latency.json (benchmarks.report: benchmark, commit,
clean, command, wall_seconds, environment, bundle, metrics (flat: BACKEND_bN_median_ms,
_p99_ms, _throughput_per_s)).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks.report import check_tree, result_json, write  # noqa: E402

BATCHES = (1, 8, 32)
WARMUP = 5


def random_feeds(manifest: dict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the student's shapes; masks and presence as 0/1, like real features."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, spec in manifest["inputs"]["student"].items():
        shape = (batch, *spec["shape"][1:])
        if "mask" in name or name == "present":
            feeds[name] = (rng.random(shape) > 0.3).astype(np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def time_calls(fn, feeds, repeats: int) -> dict[str, float]:
    for _ in range(WARMUP):
        fn(feeds)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(feeds)
        ms.append((time.perf_counter() - t0) * 1000)
    batch = len(next(iter(feeds.values())))
    median = float(np.median(ms))
    return {"median_ms": median, "p99_ms": float(np.percentile(ms, 99)),
            "throughput_per_s": batch / (median / 1000)}


def cuda_runners(bundle: Path, threads: int) -> dict:
    """torch_cuda_eager / _compile / _graphs callables, each feeds -> probabilities."""
    import torch

    from engines.backends import TorchBackend
    from engines.bundle import open_bundle
    from engines.student import INPUTS

    backend = TorchBackend(open_bundle(bundle), "cuda", threads)
    model, dtype = backend._model, backend._dtype
    compiled = torch.compile(model)

    def via(module):
        def run(feeds):
            with torch.inference_mode():
                args = [torch.from_numpy(feeds[n]).to("cuda", dtype) for n in INPUTS]
                return module(*args).float().cpu().numpy()
        return run

    graphs = {}  # batch -> (static inputs, graph, static output)

    def run_graph(feeds):
        batch = len(feeds["present"])
        with torch.inference_mode():
            if batch not in graphs:
                static = [torch.from_numpy(feeds[n]).to("cuda", dtype) for n in INPUTS]
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up off the capture stream, as PyTorch asks
                    for _ in range(3):
                        model(*static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(*static)
                graphs[batch] = (static, graph, out)
            static, graph, out = graphs[batch]
            for tensor, name in zip(static, INPUTS):
                tensor.copy_(torch.from_numpy(feeds[name]))
            graph.replay()
            return out.float().cpu().numpy()

    return {"torch_cuda_eager": backend.run_student, "torch_cuda_compile": via(compiled),
            "torch_cuda_graphs": run_graph}


def runners(bundle: Path, threads: int) -> dict:
    import engines
    from engines.backends import has_cuda, has_tensorrt
    from engines.bundle import open_bundle

    found = {"onnxruntime": engines.load(bundle, "onnxruntime", "cpu", threads).backend.run_student,
             "torch": engines.load(bundle, "torch", "cpu", threads).backend.run_student}
    if has_cuda():
        found.update(cuda_runners(bundle, threads))
        if open_bundle(bundle).has_tensorrt_engines and has_tensorrt():
            found["tensorrt"] = engines.load(bundle, "tensorrt", "cuda").backend.run_student
    return found


def tiny_bundle(out: Path, precision: str) -> Path:
    """A bundle of a randomly initialised student (default sizes) and the default text encoder."""
    import torch

    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from engines.student import Student, StudentConfig
    from trainer.export import write_bundle
    from trainer.fit import TrainOptions
    from trainer.text_encoder import SentenceEncoder

    opts, pre = TrainOptions(), Preprocessing()
    labels = ["neutral", "happiness", "sadness", "anger", "surprise"]
    encoder = SentenceEncoder(opts.text_encoder)
    cfg = StudentConfig(n_labels=len(labels), text_dim=encoder.dim, dim=opts.dim, heads=opts.heads,
                        layers=opts.layers)
    torch.manual_seed(0)
    info = {"labels": labels, "thresholds": [0.5] * len(labels), "preprocessing": pre.to_dict(),
            "faces": dataclasses.asdict(FaceOptions()), "student": cfg.to_dict(), "text_encoder": str(encoder.path),
            "data": "random-init (benchmark)", "selected_epoch": 0, "dev_weighted_f1": {},
            "options": dataclasses.asdict(opts)}  # write_bundle records its modalities, dev_fraction and seed
    write_bundle(Student(cfg, pre).eval(), info, out, precision)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="model bundle (default: a random-init tiny bundle)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per backend and batch size")
    parser.add_argument("--threads", type=int, default=1, help="CPU inference threads (the fusion stage uses 1)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="of the tiny bundle")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/engine_latency.json")
    args = parser.parse_args(argv)
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp) / "bundle", args.precision)
        from engines.bundle import open_bundle

        manifest = open_bundle(bundle).manifest
        metrics = {}
        for name, run in runners(bundle, args.threads).items():
            for batch in BATCHES:
                stats = time_calls(run, random_feeds(manifest, batch), args.repeats)
                for key, value in stats.items():
                    metrics[f"{name}_b{batch}_{key}"] = round(value, 3)
                print(f"{name:20s} b{batch:<3d} median {stats['median_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  "
                      f"{stats['throughput_per_s']:8.1f}/s", flush=True)
    write(args.out, result_json(
        "engine_latency", started, args.threads, metrics,
        bundle=str(args.bundle) if args.bundle else f"random-init tiny bundle ({args.precision})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
