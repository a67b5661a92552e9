"""Backends: ONNX Runtime, PyTorch and TensorRT run one bundle alike; auto picks the
right one; fp16 bundles stay close to fp32; TensorRT profiles and the Triton
repository come out as the manifest says; what cannot run here says why."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import engines
from engines.backends import BackendUnavailable, choose_backend, has_cuda, has_tensorrt
from engines.bundle import BundleError, Manifest, open_bundle
from engines.runtime import Window
from engines.student import INPUTS, ExportedStudent

FP16_TOLERANCE = 2e-2
TEXTS = ["I am so happy today!", "Please put the files on my desk.", "no"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # The torch backend sets PyTorch's (process-wide) thread count, as the fusion
    # stage's own process should; give the other tests theirs back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(run_dir):
    from trainer.fit import load_run

    return load_run(run_dir)[1]


@pytest.fixture(scope="module")
def fp16_export(run_dir, tmp_path_factory):
    """An fp16 bundle of the same run, with a Triton repository (one export for both)."""
    from trainer.export import export

    root = tmp_path_factory.mktemp("fp16")
    export(run_dir, root / "bundle", precision="fp16", triton=root / "triton")
    return root


def _feeds(model, batch: int, seed: int = 3) -> tuple[dict, np.ndarray]:
    """Random student inputs and PyTorch fp32's probabilities for them."""
    from trainer.export import example_inputs

    inputs = example_inputs(model, batch=batch, seed=seed)
    with torch.no_grad():
        expected = ExportedStudent(model)(*inputs).numpy()
    return {n: t.numpy() for n, t in zip(INPUTS, inputs)}, expected


# --- parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7])
def test_onnxruntime_and_torch_backends_agree(bundle, model, batch):
    feeds, expected = _feeds(model, batch)
    ort_probs = engines.load(bundle, "onnxruntime", "cpu").backend.run_student(feeds)
    torch_probs = engines.load(bundle, "torch", "cpu").backend.run_student(feeds)
    assert ort_probs.shape == torch_probs.shape == (batch, 4, len(open_bundle(bundle).labels))
    assert np.abs(ort_probs - torch_probs).max() < 1e-4
    assert np.abs(torch_probs - expected).max() < 1e-5  # same weights, same code


def test_fp16_bundle_stays_close_to_fp32(fp16_export, bundle, model):
    import onnx

    fp16 = fp16_export / "bundle"
    assert open_bundle(fp16).precision == "fp16"
    graph = onnx.load(str(fp16 / "student.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    # Inputs and outputs stay float32, so callers feed the same arrays.
    assert {i.type.tensor_type.elem_type for i in [*graph.graph.input, *graph.graph.output]} == {
        onnx.TensorProto.FLOAT}
    feeds, expected = _feeds(model, 7)
    half = engines.load(fp16, "onnxruntime", "cpu")
    assert np.abs(half.backend.run_student(feeds) - expected).max() < FP16_TOLERANCE
    full = engines.load(bundle, "onnxruntime", "cpu")
    assert np.abs(half.embed_text(TEXTS) - full.embed_text(TEXTS)).max() < FP16_TOLERANCE


@pytest.mark.skipif(not has_cuda(), reason="TensorRT needs a CUDA GPU; none here")
def test_tensorrt_fp16_matches_torch(bundle, model, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'tensorrt>=10')")
    from engines.tensorrt_build import build_engines

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    build_engines(copy)
    engine = engines.load(copy)  # auto: engines built, GPU here
    assert engine.backend.name == "tensorrt"
    for batch in (1, 7, 40):  # 40 > the profile's max batch: split into two runs
        feeds, expected = _feeds(model, batch)
        assert np.abs(engine.backend.run_student(feeds) - expected).max() < 1e-2
    reference = engines.load(bundle, "onnxruntime", "cpu").embed_text(TEXTS)
    assert np.abs(engine.embed_text(TEXTS) - reference).max() < 1e-2


def _short_audio(feeds: dict, tokens: list[int]) -> dict:
    """feeds whose rows have audio in their first tokens[i] tokens only, as audio_features
    lays a short window out: log-mel first, zeros and a masked tail after."""
    mel, mask = feeds["mel"].copy(), np.zeros_like(feeds["audio_mask"])
    patch = mel.shape[2] // mask.shape[1]
    for i, n in enumerate(tokens):
        mask[i, :n] = 1
        mel[i, :, n * patch:] = 0
    return {**feeds, "mel": mel, "audio_mask": mask, "present": np.ones_like(feeds["present"])}


def test_short_audio_runs_only_its_own_tokens(bundle, model):
    """The runtime cuts the masked tail off the log-mel (trim_audio); the probabilities are
    those of the whole padded input, in ONNX Runtime and PyTorch alike."""
    import onnxruntime as ort

    from engines.backends import trim_audio

    feeds = _short_audio(_feeds(model, 3)[0], [25, 7, 0])
    cut = trim_audio(feeds)
    patch = feeds["mel"].shape[2] // feeds["audio_mask"].shape[1]
    assert cut["audio_mask"].shape == (3, 25) and cut["mel"].shape == (3, feeds["mel"].shape[1], 25 * patch)
    assert trim_audio(_short_audio(feeds, [0, 0, 0]))["audio_mask"].shape == (3, 1)  # the axis is never empty
    assert trim_audio(_short_audio(feeds, [100, 3, 0]))["mel"].shape == feeds["mel"].shape  # nothing to cut

    whole = ort.InferenceSession(str(bundle / "student.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for backend in ("onnxruntime", "torch"):
        got = engines.load(bundle, backend, "cpu").backend.run_student(feeds)
        assert np.abs(got - whole).max() < 1e-5, backend


def test_a_bundle_with_a_fixed_audio_length_still_runs(bundle, model, tmp_path):
    """Bundles exported before the audio_tokens axis have the log-mel length fixed in the
    graph: ONNX Runtime is given the whole padded input, as before."""
    import onnx

    from engines.bundle import write_manifest

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    graph = onnx.load(str(copy / "student.onnx"))
    pre = open_bundle(bundle).preprocessing
    for tensor in graph.graph.input:
        axis = {"mel": (2, pre.audio_frames), "audio_mask": (1, pre.audio_tokens)}.get(tensor.name)
        if axis:
            tensor.type.tensor_type.shape.dim[axis[0]].dim_value = axis[1]
    onnx.save(graph, str(copy / "student.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "files"})

    feeds = _short_audio(_feeds(model, 2)[0], [10, 4])
    fixed = engines.load(copy, "onnxruntime", "cpu").backend
    assert [i.shape[2] for i in fixed._student.get_inputs() if i.name == "mel"] == [pre.audio_frames]
    expected = engines.load(bundle, "onnxruntime", "cpu").backend.run_student(feeds)
    assert np.abs(fixed.run_student(feeds) - expected).max() < 1e-5


# --- batching -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_windows_of_several_sessions_batch_like_one_at_a_time(bundle, backend):
    engine = engines.load(bundle, backend, "cpu")
    rng = np.random.default_rng(1)
    crop = lambda: rng.integers(0, 255, (64, 64), dtype=np.uint8)
    windows = [  # three sessions' utterances, interleaved as a server would see them
        Window(0.0, 1.5, text="What a wonderful surprise!", audio=rng.standard_normal(24000).astype(np.float32) * 0.1,
               crops=[(0.2, crop()), (0.9, crop())]),
        Window(3.0, 4.0, text="I told you to stop doing that.", crops=[(3.5, crop())]),
        Window(10.0, 12.0, audio=rng.standard_normal(32000).astype(np.float32) * 0.3),
        Window(1.5, 2.0, text="okay"),
        Window(4.0, 7.0, text="Everything is gone, all of it.", audio=rng.standard_normal(48000).astype(np.float32) * 0.05,
               crops=[(5.0, None), (6.0, crop())]),
    ]
    together = engine.infer(windows)
    for window, batched in zip(windows, together):
        (alone,) = engine.infer([window])
        assert alone.modalities == batched.modalities
        assert alone.probabilities == pytest.approx(batched.probabilities, abs=1e-5)
        for m in alone.peers:
            assert alone.peers[m] == pytest.approx(batched.peers[m], abs=1e-5)


# --- choosing a backend -------------------------------------------------------------------

@pytest.mark.parametrize("requested, device, cuda, trt, engines_built, expected", [
    ("auto", "auto", True, True, True, ("tensorrt", "cuda")),
    ("auto", "auto", True, True, False, ("torch", "cuda")),   # no engines in the bundle
    ("auto", "auto", True, False, True, ("torch", "cuda")),   # tensorrt not importable
    ("auto", "auto", False, True, True, ("onnxruntime", "cpu")),  # no GPU
    ("auto", "cpu", True, True, True, ("onnxruntime", "cpu")),
    ("auto", "cuda", True, False, False, ("torch", "cuda")),
    ("torch", "auto", False, False, False, ("torch", "cpu")),
    ("torch", "auto", True, False, False, ("torch", "cuda")),
    ("torch", "cpu", True, False, False, ("torch", "cpu")),
    ("onnxruntime", "auto", True, True, True, ("onnxruntime", "cpu")),
    ("onnxruntime", "cuda", True, False, False, ("onnxruntime", "cuda")),
    ("tensorrt", "auto", True, True, True, ("tensorrt", "cuda")),
    ("triton", "auto", False, False, False, ("triton", "server")),  # the server decides where it runs
    ("triton", "cuda", False, False, False, ("triton", "server")),
    ("service", "auto", False, False, False, ("service", "server")),  # realtime infer decides
])
def test_choose_backend(requested, device, cuda, trt, engines_built, expected):
    assert choose_backend(requested, device, has_cuda=cuda, has_tensorrt=trt, has_torch=True,
                          bundle_has_engines=engines_built) == expected


def test_auto_without_torch_is_onnxruntime():
    assert choose_backend("auto", "auto", has_cuda=False, has_tensorrt=False, has_torch=False,
                          bundle_has_engines=False) == ("onnxruntime", "cpu")


@pytest.mark.parametrize("requested, device, cuda, trt, torch_, engines_built, why", [
    ("tensorrt", "auto", True, False, True, True, "tensorrt package is not importable"),
    ("tensorrt", "auto", False, True, True, True, "no CUDA GPU"),
    ("tensorrt", "auto", True, True, True, False, "no TensorRT engines.*engines.tensorrt_build"),
    ("torch", "auto", True, False, False, False, "PyTorch is not installed"),
    ("torch", "cuda", False, False, True, False, "no CUDA GPU"),
    ("auto", "cuda", False, False, True, False, "no CUDA GPU"),
])
def test_unavailable_backend_says_why(requested, device, cuda, trt, torch_, engines_built, why):
    with pytest.raises(BackendUnavailable, match=why):
        choose_backend(requested, device, has_cuda=cuda, has_tensorrt=trt, has_torch=torch_,
                       bundle_has_engines=engines_built)


def test_bad_backend_or_device_name_is_an_error(bundle):
    with pytest.raises(ValueError, match="backend 'tensorflow'.*tensorrt, onnxruntime, torch"):
        engines.load(bundle, backend="tensorflow")
    with pytest.raises(ValueError, match="device 'tpu'"):
        engines.load(bundle, device="tpu")
    with pytest.raises(ValueError, match="CUDA only"):
        choose_backend("tensorrt", "cpu", has_cuda=True, has_tensorrt=True, has_torch=True,
                       bundle_has_engines=True)


def test_realtime_accepts_every_backend():
    from common.settings import ConfigError
    from realtime.cli import build_parser
    from realtime.config import load_config

    for name in ("auto", "tensorrt", "onnxruntime", "torch", "triton", "service"):
        assert build_parser().parse_args(["replay", "x.mp4", "--backend", name]).backend == name
        assert load_config(None, [f"model.backend={name}"]).model.backend == name
    with pytest.raises(ConfigError, match="backend 'tensorflow'"):
        load_config(None, ["model.backend=tensorflow"])
    with pytest.raises(ConfigError, match="device 'gpu'"):
        load_config(None, ["model.device=gpu"])
    args = build_parser().parse_args(["serve", "--backend", "triton", "--triton-url", "gpu-node:8000"])
    assert (args.backend, args.triton_url) == ("triton", "gpu-node:8000")
    with pytest.raises(ConfigError, match="triton_timeout_s"):
        load_config(None, ["model.triton_timeout_s=0"])
    args = build_parser().parse_args(["replay", "x.mp4", "--backend", "service", "--service-endpoint", "ipc:///x"])
    assert (args.backend, args.service_endpoint) == ("service", "ipc:///x")
    with pytest.raises(ConfigError, match="service_endpoint .*only loopback"):  # voice and faces stay here
        load_config(None, ['model.service_endpoint="tcp://10.0.0.5:5560"'])


@pytest.mark.skipif(has_cuda(), reason="checks the errors of a machine without a CUDA GPU")
def test_what_cannot_run_here_says_why(bundle):
    assert engines.load(bundle).backend.name == "onnxruntime"  # auto on a CPU machine
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        engines.load(bundle, "torch", "cuda")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        engines.load(bundle, "onnxruntime", "cuda")
    with pytest.raises(BackendUnavailable, match="tensorrt|TensorRT|CUDA"):
        engines.load(bundle, "tensorrt")


def test_onnxruntime_backend_imports_neither_torch_nor_trainer(bundle):
    code = ("import sys, engines; e = engines.load(sys.argv[1], 'onnxruntime', 'cpu'); e.embed_text(['hi']); "
            "print(sorted(m for m in ('torch', 'trainer') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the bundle ---------------------------------------------------------------------------

def test_bundle_carries_weights_and_config_for_the_torch_backend(bundle, run_dir):
    from safetensors import safe_open

    b = open_bundle(bundle)
    info = json.loads((run_dir / "run.json").read_text())
    assert b.manifest["student_config"] == info["student"]
    assert b.precision == "fp32"
    assert b.manifest["backends"]["torch"]["text_encoder"].endswith("(onnxruntime)")
    with safe_open(str(b.file("student_weights")), framework="pt") as weights:  # a safetensors file, not a pickle
        assert "fusion_head.weight" in weights.keys()
    assert b.manifest["inputs"]["text_encoder"]["input_ids"] == {"dtype": "int64", "shape": ["batch", "tokens"]}
    assert b.manifest["outputs"]["student"]["probs"]["shape"] == ["batch", 4, len(b.labels)]
    assert b.manifest["dynamic_axes"]["batch"] == {"min": 1, "max": 1024}


# --- TensorRT: what can be checked without it ---------------------------------------------

def test_tensorrt_profiles_come_from_the_manifest(bundle):
    from engines.tensorrt_build import profile_shapes

    manifest = open_bundle(bundle).entries
    student = profile_shapes(manifest, "student")
    assert set(student) == set(INPUTS)
    # The log-mel's length is audio_patch frames per audio token, up to all max_audio_s holds.
    assert student["mel"] == ((1, 64, 8), (8, 64, 256), (32, 64, 800))
    assert student["audio_mask"] == ((1, 1), (8, 32), (32, 100))
    assert student["video"] == ((1, 8, 64, 64), (8, 8, 64, 64), (32, 8, 64, 64))
    text = profile_shapes(manifest, "text_encoder")
    assert text == {name: ((1, 2), (8, 32), (32, 128)) for name in ("input_ids", "attention_mask")}
    # Never outside what the graph was exported for, and always room for the tokenizer's longest.
    narrow = json.loads(json.dumps(manifest.to_dict()))
    narrow["dynamic_axes"]["batch"]["max"] = 16
    narrow["preprocessing"]["text_max_tokens"] = 256
    assert profile_shapes(Manifest.from_dict(narrow), "text_encoder")["input_ids"] == ((1, 2), (8, 32), (16, 256))
    # A bundle whose export recorded no inputs is told to export again, not a KeyError.
    older = {k: v for k, v in manifest.to_dict().items() if k not in ("inputs", "outputs")}
    with pytest.raises(BundleError, match="export the run again"):
        profile_shapes(Manifest.from_dict(older), "student")


@pytest.mark.skipif(has_tensorrt(), reason="checks the error of a machine without TensorRT")
def test_missing_tensorrt_is_a_clear_error(bundle, run_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "engines.tensorrt_build", str(bundle)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TensorRT is not available" in result.stderr and "pip install" in result.stderr
    out = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "export", str(run_dir), "--out", str(out),
                             "--tensorrt"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TensorRT is not available" in result.stderr
    assert not out.exists()  # refused before minutes of ONNX export


# --- Triton -------------------------------------------------------------------------------

def parse_pbtxt(text: str) -> dict:
    """Enough of protobuf text format for a model config: fields, messages, lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)

    def value(i):
        if tokens[i] == "{":
            return message(i + 1, "}")
        if tokens[i] == "[":
            items, i = [], i + 1
            while tokens[i] != "]":
                if tokens[i] == ",":
                    i += 1
                    continue
                item, i = value(i)
                items.append(item)
            return items, i + 1
        tok = tokens[i]
        return (tok[1:-1] if tok.startswith('"') else int(tok) if re.fullmatch(r"-?\d+", tok) else tok), i + 1

    def message(i, end):
        fields = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 2 if tokens[i + 1] == ":" else 1
            assert key not in fields, f"repeated field {key}"
            fields[key], i = value(i)
        return fields, i + 1

    return message(0, None)[0]


def test_triton_repository(fp16_export):
    bundle, repo = open_bundle(fp16_export / "bundle"), fp16_export / "triton"
    student = parse_pbtxt((repo / "emotion_student/config.pbtxt").read_text())
    assert student["name"] == "emotion_student"
    assert student["platform"] == "onnxruntime_onnx"
    assert student["max_batch_size"] == 32
    assert [i["name"] for i in student["input"]] == list(INPUTS)
    assert {i["data_type"] for i in student["input"]} == {"TYPE_FP32"}  # fp16 graph, float32 I/O
    dims = {i["name"]: i["dims"] for i in student["input"]}
    assert dims["video"] == [8, 64, 64] and dims["present"] == [3]
    assert dims["mel"] == [64, -1] and dims["audio_mask"] == [-1]  # any audio length, as the graph
    assert student["output"] == [{"name": "probs", "data_type": "TYPE_FP32", "dims": [4, len(bundle.labels)]}]
    batching = student["dynamic_batching"]
    assert batching["preferred_batch_size"] == [8, 16, 32] and batching["max_queue_delay_microseconds"] > 0

    text = parse_pbtxt((repo / "emotion_text_encoder/config.pbtxt").read_text())
    assert text["platform"] == "onnxruntime_onnx" and text["max_batch_size"] == 32
    assert text["input"] == [{"name": n, "data_type": "TYPE_INT64", "dims": [-1]}
                             for n in ("input_ids", "attention_mask")]
    assert text["output"] == [{"name": "sentence_embedding", "data_type": "TYPE_FP32", "dims": [384]}]
    for graph, model in (("student", "emotion_student"), ("text_encoder", "emotion_text_encoder")):
        assert (repo / model / "1/model.onnx").read_bytes() == bundle.file(graph).read_bytes()
