"""Inference backends: five ways to run a bundle's two graphs, behind one interface.

  onnxruntime  student.onnx and text_encoder.onnx; the CPU everywhere (CUDA with
               onnxruntime-gpu).  Needs no PyTorch: the default runtime.
  torch        the student rebuilt from student.safetensors (engines.student), on the
               CPU or CUDA.  The text encoder stays in ONNX Runtime: a bundle carries
               the encoder only as text_encoder.onnx (manifest: backends.torch).
  tensorrt     student.plan and text_encoder.plan, FP16 engines built on the kind of
               GPU that runs them (engines.tensorrt_build); CUDA only.
  triton       both graphs on a Triton Inference Server (engines.triton_backend), which
               serves the repository `trainer export --triton` writes; the device is
               the server's.  Never chosen by auto: it needs the server's address.
  service      both graphs in the inference service of this machine (engines.service,
               `realtime infer`), shared by every session on it and batched across them.

`choose_backend` is the decision behind backend="auto", a pure function of what
this machine and this bundle have, so it is tested without the hardware;
engines.runtime.open_backend acts on it.  The backends of other modules (TensorRT, Triton,
the service) build on this one's Backend and are imported only where chosen.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from engines.bundle import Bundle, BundleError
from common.devices import check_device
from common.errors import UserError
from common.settings import ConfigError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch", "triton", "service")


class BackendUnavailable(UserError, RuntimeError):
    """A backend that cannot run on this machine; the message says what is missing."""


class Backend:
    """Runs the graphs of one bundle; numpy in, float32 numpy out."""

    name = "?"
    device = "cpu"

    def run_student(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities (B, 4, L) for the student inputs (engines.student.INPUTS)."""
        raise NotImplementedError

    def embed_text(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        """Sentence embeddings (N, text_dim) for input_ids and attention_mask."""
        raise NotImplementedError


def trim_audio(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The student's inputs without the audio tokens that no row of the batch has.

    audio_features puts a window's log-mel first and pads after it, and the padding's
    tokens are masked, so attention gives them weight 0: a 2 s window update has 25 real
    tokens of 100, and running the other 75 costs half the student's time and changes
    nothing.  Only for a graph exported with an `audio_tokens` axis (trainer.export)."""
    mask = feeds["audio_mask"]
    real = np.flatnonzero(mask.any(axis=0))
    keep = int(real[-1]) + 1 if real.size else 1  # one masked token: the graph's axis is at least 1
    if keep == mask.shape[1]:
        return feeds
    frames = keep * (feeds["mel"].shape[2] // mask.shape[1])
    return {**feeds, "mel": np.ascontiguousarray(feeds["mel"][:, :, :frames]),
            "audio_mask": np.ascontiguousarray(mask[:, :keep])}


def choose_backend(requested: str, device: str, *, has_cuda: bool, has_tensorrt: bool,
                   has_torch: bool, bundle_has_engines: bool) -> tuple[str, str]:
    """(backend, device) to run, or BackendUnavailable saying why the request cannot be met.

    auto: TensorRT on a GPU when the bundle has engines and tensorrt imports, else
    PyTorch on CUDA, else ONNX Runtime on the CPU.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    check_device(device)
    gpu_ok = device != "cpu" and has_cuda
    if requested == "auto":
        if gpu_ok and has_tensorrt and bundle_has_engines:
            return "tensorrt", "cuda"
        if gpu_ok and has_torch:
            return "torch", "cuda"
        if device == "cuda":
            raise BackendUnavailable("device 'cuda' requested but PyTorch sees no CUDA GPU")
        return "onnxruntime", "cpu"
    if requested == "tensorrt":
        if device == "cpu":
            raise ConfigError("backend 'tensorrt' runs on CUDA only; use device 'cuda' or 'auto'")
        if not has_tensorrt:
            raise BackendUnavailable(
                "backend 'tensorrt': the tensorrt package is not importable "
                "(pip install 'tensorrt>=10', or the [gpu] extra, on a machine with an NVIDIA GPU)")
        if not has_cuda:
            raise BackendUnavailable("backend 'tensorrt': no CUDA GPU is visible")
        if not bundle_has_engines:
            raise BackendUnavailable(
                "backend 'tensorrt': the bundle has no TensorRT engines; build them on this GPU with "
                "`python -m engines.tensorrt_build BUNDLE` (or `trainer export --tensorrt`)")
        return "tensorrt", "cuda"
    if requested in ("triton", "service"):
        return requested, "server"  # the server's config decides where its models run
    if requested == "torch":
        if not has_torch:
            raise BackendUnavailable("backend 'torch': PyTorch is not installed (pip install torch)")
        if device == "cuda" and not has_cuda:
            raise BackendUnavailable("backend 'torch' on 'cuda': PyTorch sees no CUDA GPU")
        return "torch", "cuda" if gpu_ok else "cpu"
    # ONNX Runtime: the CPU unless CUDA is asked for by name (its provider checks onnxruntime-gpu).
    return "onnxruntime", "cuda" if device == "cuda" else "cpu"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def has_cuda() -> bool:
    # Importing torch takes seconds; skip it where Linux has no NVIDIA driver loaded.
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists():
        return False
    if not has_torch():
        return False
    import torch

    return torch.cuda.is_available()


def has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401  # imported only to see that it loads
    except (ImportError, OSError):  # OSError: the wheel is there but its CUDA libraries are not
        return False
    return True


def in_batches(run, feeds: dict[str, np.ndarray], max_batch: int | None) -> np.ndarray:
    """`run` over `feeds` in slices of at most `max_batch` rows (None: all at once), concatenated:
    for backends whose engines or servers take batches up to a limit."""
    n = len(next(iter(feeds.values())))
    if max_batch is None or n <= max_batch:
        return run(feeds)
    return np.concatenate([run({k: v[i : i + max_batch] for k, v in feeds.items()}) for i in range(0, n, max_batch)])


def ort_session(path: Path, device: str, threads: int):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                "ONNX Runtime on 'cuda' needs onnxruntime-gpu; this onnxruntime has "
                + ", ".join(ort.get_available_providers()))
        providers = ["CUDAExecutionProvider", *providers]
    options = ort.SessionOptions()
    # One stage = one process; a single thread each keeps them from fighting
    # over the cores, and keeps results bit-identical across runs.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph: {exc}") from exc


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 1):
        self.device = device
        self._student = ort_session(bundle.file("student"), device, threads)
        self._text = ort_session(bundle.file("text_encoder"), device, threads)
        # Bundles exported before the audio_tokens axis have a fixed log-mel length.
        mel = next(i for i in self._student.get_inputs() if i.name == "mel")
        self._trim = trim_audio if isinstance(mel.shape[2], str) else (lambda feeds: feeds)

    def run_student(self, feeds):
        return self._student.run(None, self._trim(feeds))[0]

    def embed_text(self, tokens):
        return self._text.run(None, tokens)[0]


class TorchBackend(Backend):
    """The student in PyTorch; float16 on CUDA when the bundle was exported fp16, else float32."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 1):
        try:
            import torch
            from safetensors.torch import load_file
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'torch' needs torch and safetensors: {exc}") from exc
        from engines.student import INPUTS, ExportedStudent, Student, StudentConfig

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("backend 'torch' on 'cuda': PyTorch sees no CUDA GPU")
        if bundle.entries.student_config is None:
            raise BundleError(f"{bundle.path}: no student_config in the manifest; export the run again")
        # Process-wide: the fusion stage is a process of its own (see ort_session).
        torch.set_num_threads(threads)
        model = Student(StudentConfig(**bundle.entries.student_config), bundle.preprocessing)
        model.load_state_dict(load_file(str(bundle.file("student_weights"))))
        self.device = device
        self._torch = torch
        self._dtype = torch.float16 if device == "cuda" and bundle.precision == "fp16" else torch.float32
        self._model = ExportedStudent(model).eval().to(device=device, dtype=self._dtype)
        self._inputs = INPUTS
        # The text encoder runs once per utterance, beside the student; on the CPU it
        # does not need onnxruntime-gpu.
        self._text = ort_session(bundle.file("text_encoder"), "cpu", threads)

    def run_student(self, feeds):
        torch = self._torch
        feeds = trim_audio(feeds)  # the model reads any length, whenever its bundle was exported
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[n]).to(self.device, self._dtype) for n in self._inputs]
            return self._model(*args).float().cpu().numpy()

    def embed_text(self, tokens):
        return self._text.run(None, tokens)[0]
