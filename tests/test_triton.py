"""The triton backend against a real Triton Inference Server (tests/triton_server.py: the
tritonserver of the nvidia-pytriton wheel, on the CPU) serving what `trainer export --triton`
writes: the same probabilities as ONNX Runtime in the engine and in a whole replay, batches
split at the server's limit and gathered by its dynamic batcher, and errors that name the
server and the model."""
from __future__ import annotations

import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import engines
from engines.backends import BackendUnavailable
from engines.runtime import open_backend
from engines.bundle import open_bundle
from engines.triton import MAX_BATCH, MODELS, write_model_repository
from tests.helpers import max_difference, sample_windows

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install -e '.[triton]'")

TOLERANCE = 1e-4  # issue 11: Triton gives ONNX Runtime's probabilities within this


@pytest.fixture(scope="module")
def server_installed():
    """What the server needs, checked (or skipped, saying why) before `bundle` trains a model for it."""
    from tests.triton_server import server_files

    server_files()


@pytest.fixture(scope="module")
def server(server_installed, bundle, tmp_path_factory):
    from tests.triton_server import triton_server

    work = tmp_path_factory.mktemp("triton")
    write_model_repository(bundle, work / "exported")  # what `trainer export --triton DIR` writes
    with triton_server(work / "exported", work) as url:
        yield url


def test_engine_through_triton_matches_onnxruntime(server, bundle):
    remote = engines.load(bundle, "triton", triton_url=server)
    local = engines.load(bundle, "onnxruntime", "cpu")
    assert remote.backend.name == "triton"
    windows = sample_windows(MAX_BATCH + 8)  # more than the server takes at once: sent in two requests
    worst = max_difference(remote.infer(windows), local.infer(windows))
    print(f"engine through Triton: {len(windows)} windows, max |p_triton - p_ort| = {worst:.2e}")
    assert worst < TOLERANCE
    texts = ["hi", "That was not what I meant at all, and you know it."]
    assert np.abs(remote.embed_text(texts) - local.embed_text(texts)).max() < TOLERANCE


def test_dynamic_batching_gathers_requests_of_several_clients(server, bundle):
    """Sessions on other machines each send one window; the server runs them together."""
    import tritonclient.http as http

    engine = engines.load(bundle, "triton", triton_url=server)
    feeds = engine.features(sample_windows(16, seed=9))
    rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(16)]
    stats = http.InferenceServerClient(server)
    before = stats.get_inference_statistics(MODELS["student"])["model_stats"][0]
    with ThreadPoolExecutor(len(rows)) as pool:  # each thread has a connection of its own
        results = list(pool.map(engine.backend.run_student, rows))
    after = stats.get_inference_statistics(MODELS["student"])["model_stats"][0]
    stats.close()
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == 16
    assert executions < requests, f"{requests} requests ran as {executions} executions: no batching"
    alone = engines.load(bundle, "onnxruntime", "cpu").backend.run_student(feeds)
    assert np.abs(np.concatenate(results) - alone).max() < TOLERANCE


def test_replay_through_triton_gives_onnxruntime_probabilities(server, bundle, held_out_session, tmp_path):
    from tests.remote_replay import largest_difference, replay

    media = next(held_out_session.glob("*.mp4"))
    remote = replay(media, bundle, tmp_path / "triton.jsonl", "--backend", "triton", "--triton-url", server)
    local = replay(media, bundle, tmp_path / "ort.jsonl", "--backend", "onnxruntime", "--device", "cpu")
    worst = largest_difference(remote, local)
    print(f"replay through Triton: max |p_triton - p_ort| = {worst:.2e}")
    assert worst < TOLERANCE


def test_triton_backend_imports_neither_torch_nor_trainer(server, bundle):
    code = ("import sys, engines; e = engines.load(sys.argv[1], 'triton', triton_url=sys.argv[2]); "
            "e.embed_text(['hi']); print(sorted(m for m in ('torch', 'trainer') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(bundle), server], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_model_that_is_not_loaded_is_named(server, bundle):
    import tritonclient.http as http

    client = http.InferenceServerClient(server)
    client.unload_model(MODELS["text_encoder"])
    try:
        with pytest.raises(BackendUnavailable, match=rf"Triton at {server}, model 'emotion_text_encoder': not ready"):
            engines.load(bundle, "triton", triton_url=server)
    finally:
        client.load_model(MODELS["text_encoder"])
        client.close()


def test_a_server_of_another_model_is_refused(server, bundle):
    """A bundle whose graphs take other tensors than the served ones: an error, not wrong emotions."""
    other = open_bundle(bundle)
    other.manifest["outputs"]["student"]["probs"]["shape"][-1] += 1  # one more label
    with pytest.raises(BackendUnavailable, match="model 'emotion_student': serves tensors"):
        open_backend(other, "triton", triton_url=server)


def test_an_unreachable_server_is_named(bundle):
    with socket.socket() as s:  # a port nobody listens on: bound here, never listening
        s.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(BackendUnavailable, match=rf"Triton at {url} is unreachable"):
            engines.load(bundle, "triton", triton_url=url, triton_timeout_s=2)


def test_triton_needs_a_url(bundle):
    with pytest.raises(ValueError, match="triton_url"):
        engines.load(bundle, "triton")
