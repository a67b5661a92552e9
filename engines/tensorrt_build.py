"""Build FP16 TensorRT engines for a bundle, on the GPU that will run them.

  python -m engines.tensorrt_build BUNDLE [--workspace-gib 4]

Adds student.plan and text_encoder.plan to the bundle, lists them under
`graphs` (so their sha256 is checked like every other file) and records the
TensorRT version and optimisation profiles under `tensorrt`.  A plan only runs
with the TensorRT version and the kind of GPU that built it, which is why this
lives in `engines` (a deployment machine builds from the bundle, no trainer
needed) and not only in `trainer export --tensorrt`.

The networks are strongly typed and built from float16 ONNX graphs (engines.fp16):
the precision is in the graph, as TensorRT 11 requires (it removed BuilderFlag.FP16).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.atomic import replacing_dir, write_file
from engines.backends import BackendUnavailable
from engines.bundle import BundleError, Manifest, open_bundle, write_manifest
from common.errors import UserError

GRAPHS = ("student", "text_encoder")
# (min, opt, max).  Live replay scores one utterance at a time; a server batches up to 32.
BATCH = (1, 8, 32)
# Tokens per transcript: utterances are short, but the tokenizer may send up to text_max_tokens.
TOKENS = (2, 32, 128)
# Audio tokens (80 ms each) per window: 2 s window updates hold 25; the max is clamped to
# all the graph was exported for (max_audio_s).
AUDIO_TOKENS = (1, 32, 1 << 30)


class BuildError(UserError, RuntimeError):
    """TensorRT could not parse a graph or build its engine; the message names the graph."""


def profile_shapes(manifest: Manifest, graph: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input of `graph`, from the shapes the manifest records.

    Named axes take BATCH / TOKENS / AUDIO_TOKENS, clamped to the range the ONNX graph
    was exported for (manifest `dynamic_axes`); an axis that is a multiple of one
    ("8*audio_tokens": log-mel frames) takes that multiple; fixed axes are fixed.
    """
    text_max = manifest.preprocessing["text_max_tokens"]
    axes = manifest.dynamic_axes or {}
    wanted = {"batch": BATCH, "tokens": (TOKENS[0], TOKENS[1], max(TOKENS[2], text_max)), "audio_tokens": AUDIO_TOKENS}
    shapes = {}
    for name, spec in manifest.io(graph)[0].items():
        dims = []
        for dim in spec["shape"]:
            if isinstance(dim, int):
                dims.append((dim, dim, dim))
                continue
            factor, _, axis = dim.rpartition("*")
            if axis not in wanted or axis not in axes:
                raise BuildError(f"{graph}: input {name!r} has axis {dim!r} with no profile range")
            bounds = axes[axis]
            dims.append(tuple(int(factor or 1) * min(max(v, bounds["min"]), bounds["max"]) for v in wanted[axis]))
        shapes[name] = tuple(tuple(d[i] for d in dims) for i in range(3))
    return shapes


def build_plan(trt, onnx_bytes: bytes, shapes: dict, graph: str, workspace_bytes: int) -> bytes:
    """A serialised engine for one float16 ONNX graph."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no GPU or driver: the bindings raise, not return None
        raise BackendUnavailable(f"TensorRT cannot create a builder (no CUDA GPU or driver?): {exc}") from exc
    # Strongly typed: TensorRT keeps the graph's types (float16 compute, float32 I/O)
    # instead of picking a precision per layer.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{graph}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{graph}: TensorRT could not build an engine (see its log above)")
    return bytes(plan)


def build_engines(bundle_path: str | Path, workspace_gib: float = 4.0) -> dict:
    """Build and add both engines to the bundle; returns the new manifest."""
    from engines.fp16 import fp16_bytes
    from engines.tensorrt_backend import import_tensorrt

    trt = import_tensorrt()
    bundle = open_bundle(bundle_path)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "schema_version")}
    manifest["graphs"] = dict(manifest["graphs"])
    profiles, plans = {}, {}
    for graph in GRAPHS:
        source = bundle.file(graph)
        onnx_bytes = source.read_bytes() if bundle.precision == "fp16" else fp16_bytes(source)
        shapes = profile_shapes(bundle.entries, graph)
        plan = build_plan(trt, onnx_bytes, shapes, graph, int(workspace_gib * (1 << 30)))
        plans[f"{graph}.plan"] = plan
        manifest["graphs"][f"{graph}_plan"] = f"{graph}.plan"
        profiles[graph] = {name: dict(zip(("min", "opt", "max"), map(list, s))) for name, s in shapes.items()}
    manifest["backends"] = dict(manifest.get("backends", {}),
                                tensorrt={"student": "student.plan", "text_encoder": "text_encoder.plan"})
    manifest["tensorrt"] = {"version": trt.__version__, "precision": "fp16", "gpu": _gpu_name(),
                            "profiles": profiles}
    with replacing_dir(bundle.path, keep=True) as tmp:  # a kill leaves the bundle as it was
        for name, plan in plans.items():
            write_file(tmp / name, plan)
        write_manifest(tmp, manifest)
    return manifest


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # informative only: torch may be absent on a build machine
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.tensorrt_build",
                                     description="Build FP16 TensorRT engines into a model bundle, on this GPU.")
    parser.add_argument("bundle", type=Path, help="model bundle directory (trainer export)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (GiB)")
    args = parser.parse_args(argv)
    try:
        manifest = build_engines(args.bundle, args.workspace_gib)
    except (BackendUnavailable, BundleError, BuildError) as exc:
        print(f"tensorrt_build: error: {exc}", file=sys.stderr)
        return 2
    print(f"built TensorRT {manifest['tensorrt']['version']} engines into {args.bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
