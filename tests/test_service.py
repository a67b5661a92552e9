"""The inference service many sessions share (engines.service, `realtime infer`), as real
processes on real sockets: the probabilities of a local ONNX Runtime engine for concurrent
clients, batches that hold requests of several clients, a whole replay through it equal to a
local one, and clear errors for a service that is not there or serves another bundle."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import engines
from engines.backends import BackendUnavailable
from engines.runtime import open_backend
from engines.bundle import open_bundle
from tests.conftest import free_port
from tests.helpers import infer_service, sample_windows

TOLERANCE = 1e-5  # the service gives a local engine's probabilities within this
GATHER_MS = 50  # generous, so that two clients' requests surely meet on a loaded machine


@pytest.fixture(scope="module")
def service(bundle, tmp_path_factory):
    """`realtime infer` as a process of its own; yields its endpoint."""
    yield from infer_service(bundle, tmp_path_factory.mktemp("service"), "--set", f"model.service_gather_ms={GATHER_MS}")


def test_two_concurrent_clients_get_local_probabilities_in_shared_batches(service, bundle):
    local = engines.load(bundle, "onnxruntime", "cpu")
    clients = [engines.load(bundle, "service", service_endpoint=service) for _ in range(2)]
    assert all(c.backend.name == "service" for c in clients)
    before = clients[0].backend.stats()["batches"]["student"]
    rounds, barrier, got, errors = 4, threading.Barrier(2), {}, []

    def client(i: int) -> None:
        try:
            for r in range(rounds):
                feeds = clients[i].features(sample_windows(3 + i, seed=10 * r + i))  # texts batched too
                barrier.wait()  # both send now: the service should run them as one batch
                got[i, r] = (feeds, clients[i].backend.run_student(feeds))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    worst = max(float(np.abs(probs - local.backend.run_student(feeds)).max()) for feeds, probs in got.values())
    for i in range(2):  # the text encoder's embeddings, padded beside other clients' texts
        feeds = local.features(sample_windows(3 + i, seed=i))
        worst = max(worst, float(np.abs(clients[i].features(sample_windows(3 + i, seed=i))["text_emb"]
                                        - feeds["text_emb"]).max()))
    print(f"service vs local ONNX Runtime: max |dp| = {worst:.2e}")
    assert worst < TOLERANCE
    after = clients[0].backend.stats()["batches"]["student"]
    shared = {int(k): v - before.get(k, 0) for k, v in after.items()}
    assert sum(k * v for k, v in shared.items()) == 2 * rounds  # every request ran once
    assert shared.get(2, 0) >= 1, f"no student batch held both clients' requests: {shared}"


def test_a_replay_through_the_service_equals_a_local_replay(service, bundle, held_out_session, tmp_path):
    from tests.remote_replay import largest_difference, replay

    media = next(held_out_session.glob("*.mp4"))
    remote = replay(media, bundle, tmp_path / "service.jsonl", "--backend", "service", "--service-endpoint", service)
    local = replay(media, bundle, tmp_path / "ort.jsonl", "--backend", "onnxruntime", "--device", "cpu")
    worst = largest_difference(remote, local)
    print(f"replay through the service: max |p_service - p_ort| = {worst:.2e}")
    assert worst < TOLERANCE


def test_an_unreachable_service_is_named(bundle, tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match=rf"inference service at {endpoint}: no answer in 0.5 s"):
        engines.load(bundle, "service", service_endpoint=endpoint, service_timeout_s=0.5)
    assert time.monotonic() - t0 < 5


def test_a_service_of_another_bundle_is_refused(service, bundle):
    other = open_bundle(bundle)
    other.manifest["thresholds"] = [t + 0.01 for t in other.manifest["thresholds"]]
    with pytest.raises(BackendUnavailable, match=rf"inference service at {service} serves another bundle"):
        open_backend(other, "service", service_endpoint=service)


def test_a_replay_with_no_service_says_where_it_looked(bundle, held_out_session, tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(next(held_out_session.glob("*.mp4"))),
         "--model", str(bundle), "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet",
         "--backend", "service", "--service-endpoint", endpoint, "--set", "model.service_timeout_s=0.5"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"inference service at {endpoint}: no answer in 0.5 s" in result.stderr, result.stderr[-2000:]


def test_the_service_and_its_clients_import_neither_torch_nor_trainer(service, bundle):
    code = ("import sys, engines; from engines.service import InferenceService; "
            "e = engines.load(sys.argv[1], 'service', service_endpoint=sys.argv[2]); e.embed_text(['hi']); "
            "print(json.dumps(sorted(m for m in ('torch', 'trainer') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code, str(bundle), service],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("frames, error", [
    ([b"{not json"], "header is not JSON"),
    ([json.dumps({"op": "text", "id": 1, "arrays": {"ids": ["|O", [1]]}}).encode(), b"x" * 8], "numeric type"),
    ([json.dumps({"op": "text", "id": 1, "arrays": {"ids": ["<i8", [2, 3]]}}).encode(), b"\0" * 40], "40 bytes"),
    ([json.dumps({"op": "text", "id": 1, "arrays": {"ids": ["<i8", [1, 1, 1, 1, 1]]}}).encode(), b"\0" * 8],
     "at most 4 sizes"),
    ([json.dumps({"op": "text", "id": 1, "arrays": {"ids": ["<i8", [1]]}}).encode()], "1 arrays named, 0 sent"),
])
def test_a_malformed_request_is_answered_with_its_fault_and_the_service_serves_on(service, bundle, frames, error):
    import zmq

    from engines.service import unpack

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(service)
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no answer to a malformed request"
        header, _ = unpack(sock.recv_multipart())
        assert header["ok"] is False and "malformed request" in header["error"] and error in header["error"]
    finally:
        sock.close(linger=0)
        ctx.term()
    # The same service still answers a well-formed client.
    assert engines.load(bundle, "service", service_endpoint=service).embed_text(["still here"]).shape[0] == 1
