"""Latency and throughput of the student graph on every backend available here.

  python benchmarks/engine_latency.py [BUNDLE] [--repeats 100] [--threads 1] [--out FILE]

Times `run_student` (host arrays in, host probabilities out, so GPU numbers
include the copies) at batch 1, 8 and 32 on random inputs of the bundle's
shapes.  CPU: onnxruntime and torch.  With CUDA also torch_cuda_eager,
torch_cuda_compile (torch.compile), torch_cuda_graphs (one captured CUDA graph
per batch size), torch_cuda_compile_graphs (both) and tensorrt when the bundle
has engines.

  python benchmarks/engine_latency.py --gpu [--text-encoder DIR]

times only CUDA, at batch 1 to 256: the student as above and the float16 text
encoder (text_fp16_cuda_*, full-length prompts of --text-tokens), checks both
against float64 on the CPU (*_rel_err), and writes engine_latency_gpu.json.  Without BUNDLE a
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


def graph_runner(module, tensors_of):
    """feeds -> output through one CUDA graph per batch size, captured on first use.
    tensors_of(feeds) gives the module's inputs on the GPU; replays copy into the captured ones."""
    import torch

    graphs = {}  # batch -> (static inputs, graph, static output)

    def run(feeds):
        batch = len(next(iter(feeds.values())))
        with torch.inference_mode():
            if batch not in graphs:
                static = tensors_of(feeds)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up off the capture stream, as PyTorch asks
                    for _ in range(3):
                        module(*static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = module(*static)
                graphs[batch] = (static, graph, out)
            static, graph, out = graphs[batch]
            for tensor, fresh in zip(static, tensors_of(feeds)):
                tensor.copy_(fresh)
            graph.replay()
            return out.float().cpu().numpy()

    return run


def cuda_variants(prefix: str, module, tensors_of) -> dict:
    """PREFIX_eager / _compile / _graphs / _compile_graphs callables, each feeds -> host array
    (so every time includes the copies in and out, as a serving process pays them)."""
    import torch

    compiled = torch.compile(module, dynamic=True)  # one graph for every batch size

    def via(m):
        def run(feeds):
            with torch.inference_mode():
                return m(*tensors_of(feeds)).float().cpu().numpy()
        return run

    return {f"{prefix}_eager": via(module), f"{prefix}_compile": via(compiled),
            f"{prefix}_graphs": graph_runner(module, tensors_of),
            f"{prefix}_compile_graphs": graph_runner(compiled, tensors_of)}


def cuda_runners(bundle: Path, threads: int) -> dict:
    """The student on CUDA: torch_cuda_eager / _compile / _graphs / _compile_graphs."""
    import torch

    from engines.backends import TorchBackend
    from engines.bundle import open_bundle
    from engines.student import INPUTS

    backend = TorchBackend(open_bundle(bundle), "cuda", threads)
    model, dtype = backend._model, backend._dtype
    return cuda_variants("torch_cuda", model,
                         lambda feeds: [torch.from_numpy(feeds[n]).to("cuda", dtype) for n in INPUTS])


def text_encoder_cuda(path: str):
    """The text encoder (its pooling as the bundle's default) in float16 on CUDA."""
    import torch

    from trainer.text_encoder import SentenceEncoder

    return SentenceEncoder(path).eval().to("cuda", torch.float16)


def text_feeds(vocab: int, batch: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length prompts of random word pieces: the longest text a window can carry."""
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, vocab, (batch, tokens)).astype(np.int64),
            "attention_mask": np.ones((batch, tokens), np.int64)}


def text_runners(path: str) -> dict:
    import torch

    model = text_encoder_cuda(path)
    return cuda_variants("text_fp16_cuda", model, lambda feeds: [
        torch.from_numpy(feeds["input_ids"]).to("cuda"), torch.from_numpy(feeds["attention_mask"]).to("cuda")])


def relative_errors(bundle: Path, text_path: str | None, tokens: int) -> dict[str, float]:
    """||cuda - ref|| / ||ref|| against float64 on the CPU, on fresh random inputs: the
    student as served (its bundle's precision) and the float16 text encoder."""
    import torch
    from safetensors.torch import load_file

    from engines.backends import TorchBackend
    from engines.bundle import open_bundle
    from engines.student import INPUTS, ExportedStudent, Student, StudentConfig

    def rel(out, ref) -> float:
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        return float(np.linalg.norm(out - ref) / np.linalg.norm(ref)) if np.isfinite(out).all() else float("nan")

    opened = open_bundle(bundle)
    feeds = random_feeds(opened.manifest, 16, seed=123)
    reference = Student(StudentConfig(**opened.manifest["student_config"]), opened.preprocessing)
    reference.load_state_dict(load_file(str(opened.file("student_weights"))))
    reference = ExportedStudent(reference).eval().double()
    with torch.inference_mode():
        ref = reference(*[torch.from_numpy(feeds[n]).double() for n in INPUTS]).numpy()
    errors = {"student_cuda_rel_err": rel(TorchBackend(opened, "cuda").run_student(feeds), ref)}
    if text_path:
        from trainer.text_encoder import SentenceEncoder

        model = text_encoder_cuda(text_path)
        cpu = SentenceEncoder(text_path).eval().double()
        tf = text_feeds(model.encoder.config.vocab_size, 16, tokens, seed=321)
        with torch.inference_mode():
            ref = cpu(*(torch.from_numpy(tf[k]) for k in ("input_ids", "attention_mask"))).numpy()
            out = model(*(torch.from_numpy(tf[k]).cuda() for k in ("input_ids", "attention_mask"))).float().cpu()
        errors["text_fp16_cuda_rel_err"] = rel(out.numpy(), ref)
    return errors


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


def tiny_bundle(out: Path, precision: str, text_encoder: str | None = None) -> Path:
    """A bundle of a randomly initialised student (default sizes) and a text encoder (default:
    [train]'s)."""
    import torch

    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from engines.student import Student, StudentConfig
    from trainer.export import write_bundle
    from trainer.fit import TrainOptions
    from trainer.text_encoder import SentenceEncoder

    opts, pre = TrainOptions(), Preprocessing()
    labels = ["neutral", "happiness", "sadness", "anger", "surprise"]
    encoder = SentenceEncoder(text_encoder or opts.text_encoder)
    cfg = StudentConfig(n_labels=len(labels), text_dim=encoder.dim, dim=opts.dim, heads=opts.heads,
                        layers=opts.layers)
    torch.manual_seed(0)
    info = {"labels": labels, "thresholds": [0.5] * len(labels), "preprocessing": pre.to_dict(),
            "faces": dataclasses.asdict(FaceOptions()), "student": cfg.to_dict(), "text_encoder": str(encoder.path),
            "data": "random-init (benchmark)", "selected_epoch": 0, "dev_weighted_f1": {},
            "options": dataclasses.asdict(opts)}  # write_bundle records its modalities, dev_fraction and seed
    write_bundle(Student(cfg, pre).eval(), info, out, precision)
    return out


def gpu_summary(metrics: dict) -> dict:
    """The issue's targets read off the table: the best variant's batch-1 time for the student
    and the text encoder, and how many sessions' window updates at 4 Hz the student's best
    throughput covers."""
    out = {}
    for prefix in ("torch_cuda", "text_fp16_cuda"):
        b1 = [v for k, v in metrics.items() if k.startswith(prefix + "_") and k.endswith("_b1_median_ms")]
        best = [v for k, v in metrics.items() if k.startswith(prefix + "_") and k.endswith("_throughput_per_s")]
        if b1:
            out[f"{prefix}_b1_best_ms"] = min(b1)
        if best:
            out[f"{prefix}_best_throughput_per_s"] = max(best)
    if "torch_cuda_best_throughput_per_s" in out:
        out["student_sessions_at_4hz"] = out["torch_cuda_best_throughput_per_s"] / 4
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="model bundle (default: a random-init tiny bundle)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per backend and batch size")
    parser.add_argument("--threads", type=int, default=1, help="CPU inference threads (the fusion stage uses 1)")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="of the tiny bundle")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes (default 1,8,32; with --gpu 1,2,4,...,256)")
    parser.add_argument("--gpu", action="store_true",
                        help="CUDA only (student and float16 text encoder: eager, torch.compile, CUDA graphs "
                             "and both), with errors against float64; writes engine_latency_gpu.json")
    parser.add_argument("--text-encoder", default=None,
                        help="text encoder for the tiny bundle and, with --gpu, the text timings "
                             "(default [train] text_encoder)")
    parser.add_argument("--text-tokens", type=int, default=96, help="prompt length for the text timings")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default benchmarks/results/engine_latency[_gpu].json)")
    args = parser.parse_args(argv)
    name = "engine_latency_gpu" if args.gpu else "engine_latency"
    out = args.out or ROOT / f"benchmarks/results/{name}.json"
    batches = [int(b) for b in args.batches.split(",")] if args.batches else \
        ([2**i for i in range(9)] if args.gpu else list(BATCHES))
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    metrics, failures = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp) / "bundle", args.precision, args.text_encoder)
        from engines.bundle import open_bundle

        manifest = open_bundle(bundle).manifest
        if args.gpu:
            from engines.backends import has_cuda

            if not has_cuda():
                parser.error("--gpu: PyTorch sees no CUDA GPU here")
            from common.offline import resolve_text_encoder
            from trainer.fit import TrainOptions

            text_path = str(resolve_text_encoder(args.text_encoder or TrainOptions().text_encoder))
            try:
                metrics.update(relative_errors(bundle, text_path, args.text_tokens))
            except Exception as exc:  # recorded; the timings still run
                failures["relative_errors"] = f"{type(exc).__name__}: {exc}"[:300]
            found = {**cuda_runners(bundle, args.threads), **text_runners(text_path)}
            from transformers import AutoConfig

            vocab = AutoConfig.from_pretrained(text_path).vocab_size
        else:
            found = runners(bundle, args.threads)
        for backend, run in found.items():
            for batch in batches:
                feeds = (text_feeds(vocab, batch, args.text_tokens) if backend.startswith("text_")
                         else random_feeds(manifest, batch))
                try:
                    stats = time_calls(run, feeds, args.repeats)
                except Exception as exc:  # one variant failing (say, capture) must not lose the rest
                    failures[f"{backend}_b{batch}"] = f"{type(exc).__name__}: {exc}"[:300]
                    print(f"{backend:28s} b{batch:<3d} FAILED {failures[f'{backend}_b{batch}']}", flush=True)
                    continue
                for key, value in stats.items():
                    metrics[f"{backend}_b{batch}_{key}"] = round(value, 4)
                print(f"{backend:28s} b{batch:<3d} median {stats['median_ms']:8.3f} ms  p99 {stats['p99_ms']:8.3f} ms  "
                      f"{stats['throughput_per_s']:10.1f}/s", flush=True)
        if args.gpu:
            metrics.update(gpu_summary(metrics))
    extra = {"failures": failures} if failures else {}
    if args.gpu:
        extra["text_tokens"] = args.text_tokens
    write(out, result_json(
        name, started, args.threads, metrics,
        bundle=str(args.bundle) if args.bundle else f"random-init tiny bundle ({args.precision})", **extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
