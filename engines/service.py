"""One inference service for many sessions on one machine: the `service` backend.

  realtime infer --model BUNDLE [--endpoint ipc:///tmp/realtime-infer.sock]

`InferenceService` loads a bundle's two graphs once (ONNX Runtime) and answers on a
ZeroMQ ROUTER socket.  The fusion stage of every session on the machine uses it through
`ServiceBackend` (`[model] backend = "service"`, `service_endpoint`); preprocessing,
tokenisation and the reading of the results stay with the client's Engine, as with the
triton backend, so the fusion stage's code is the same whichever backend it has.

Batching across sessions: a request waits up to `gather_ms` for those of the other
sessions active in the last ACTIVE_S (none: it does not wait; all have sent: it waits no
longer), then every request that is in runs, the student requests as one batch and the
text requests as another (token ids padded to the longest with the
attention mask 0, which the encoder ignores), and sends each client its rows.  It counts
how many requests and rows each execution held (`stats`), so batching can be checked.

Wire format, both ways: [header JSON, *raw array buffers]; the header names each array's
dtype and shape (engines/arrays.py, the bus's codec: the client gets the bits the graph wrote,
and either side checks what it receives).
  request  {"op": "student" | "text" | "hello" | "stats", "id": n, "arrays": {name: [dtype, shape]}}
  reply    {"ok": true, "id": n, "arrays": ...} or {"ok": false, "id": n, "error": "..."}
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter

import numpy as np
import zmq

from engines import arrays
from engines.backends import Backend, BackendUnavailable, OnnxRuntimeBackend
from engines.bundle import Bundle, open_bundle

DEFAULT_ENDPOINT = "ipc:///tmp/realtime-infer.sock"
GRAPH_OPS = ("student", "text")
MAX_RANK = 4  # the student's video input, (batch, frames, height, width), has the most axes
ACTIVE_S = 2.0  # a client that sent within this is a session whose requests a batch waits for


def fingerprint(bundle: Bundle) -> str:
    """Names the bundle's graphs and manifest: a client refuses a service of another bundle."""
    return hashlib.sha256(json.dumps(bundle.manifest, sort_keys=True).encode()).hexdigest()


def pack(header: dict, named: dict[str, np.ndarray]) -> list:
    header = dict(header, arrays={k: arrays.spec(v) for k, v in named.items()})
    return [json.dumps(header).encode(), *(arrays.payload(v) for v in named.values())]


def unpack(frames: list) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and named arrays; ValueError (ArrayFormatError for an array) for anything that
    is not exactly this format."""
    try:
        header = json.loads(bytes(frames[0]))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    specs = header.get("arrays", {}) if isinstance(header, dict) else None
    if not isinstance(specs, dict) or not all(isinstance(s, list) and len(s) == 2 for s in specs.values()):
        raise ValueError("header must be a JSON object whose 'arrays' maps names to [dtype, shape]")
    if len(frames) - 1 != len(specs):
        raise ValueError(f"{len(specs)} arrays named, {len(frames) - 1} sent")
    return header, {name: arrays.decode(dtype, shape, frame, max_rank=MAX_RANK)
                    for (name, (dtype, shape)), frame in zip(specs.items(), frames[1:])}


# --------------------------------------------------------------------------- the service


class InferenceService:
    """The graphs of one bundle behind a ROUTER socket, batched across its clients."""

    def __init__(self, bundle_path, endpoint: str = DEFAULT_ENDPOINT, gather_ms: float = 2.0,
                 max_batch: int = 64, threads: int = 1):
        self.bundle = open_bundle(bundle_path)
        self.backend = OnnxRuntimeBackend(self.bundle, "cpu", threads)
        self.endpoint, self.gather_s, self.max_batch = endpoint, gather_ms / 1000, max_batch
        self.fingerprint = fingerprint(self.bundle)
        # Per op, per execution: how many requests, and how many rows, it held.
        self.batches: dict[str, Counter[int]] = {op: Counter() for op in GRAPH_OPS}
        self.rows: dict[str, Counter[int]] = {op: Counter() for op in GRAPH_OPS}
        self._seen: dict[bytes, float] = {}  # client identity -> when it last sent
        self._stop = threading.Event()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.ctx.destroy(linger=0)
            raise BackendUnavailable(f"inference service: cannot bind {endpoint}: {exc}") from exc

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Answer until stop() (from another thread or a signal handler)."""
        try:
            while not self._stop.is_set():
                if self.sock.poll(100):
                    self._round()
        finally:
            self.ctx.destroy(linger=0)

    def _round(self) -> None:
        """Take the requests that are in, wait up to gather_ms for those of the other active
        clients (no wait when none is), run them as one batch per graph, and answer."""
        pending: dict[str, list] = {op: [] for op in GRAPH_OPS}
        rows, waiting_for = 0, None
        deadline = time.monotonic() + self.gather_s
        while rows < self.max_batch:
            wait = deadline - time.monotonic() if waiting_for else 0
            if not self.sock.poll(max(0, int(wait * 1000))):
                break
            client, *frames = self.sock.recv_multipart(copy=False)
            try:
                header, arrays = unpack([f.buffer for f in frames])
                op = header["op"]
                rows += len(next(iter(arrays.values()))) if op in GRAPH_OPS else 0
            except (ValueError, KeyError, TypeError, StopIteration) as exc:
                self._reply(client, {"ok": False, "id": None, "error": f"malformed request: {exc}"})
                continue
            if op in GRAPH_OPS:
                pending[op].append((client, header["id"], arrays))
                who = client.bytes
                if waiting_for is None:  # the batch's first request: wait for the other sessions
                    waiting_for = self._active() - {who}
                waiting_for.discard(who)  # once each has sent (or the deadline), run
                self._seen[who] = time.monotonic()
            elif op == "hello":
                self._reply(client, {"ok": True, "id": header["id"], "fingerprint": self.fingerprint,
                                     "labels": self.bundle.labels})
            elif op == "stats":
                self._reply(client, {"ok": True, "id": header["id"], **self.stats()})
            else:
                self._reply(client, {"ok": False, "id": header["id"], "error": f"unknown op {op!r}"})
        for op, requests in pending.items():
            if requests:
                self._run(op, requests)

    def _active(self) -> set[bytes]:
        """Clients that sent a graph request within ACTIVE_S: the sessions a batch may wait for."""
        now = time.monotonic()
        for who in [w for w, t in self._seen.items() if now - t > ACTIVE_S]:
            del self._seen[who]
        return set(self._seen)

    def _run(self, op: str, requests: list) -> None:
        feeds = [arrays for _, _, arrays in requests]
        sizes = [len(next(iter(f.values()))) for f in feeds]
        try:
            if op == "student":
                out = self.backend.run_student({k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
            else:
                out = self.backend.embed_text(pad_tokens(feeds))
        except Exception as exc:  # ONNX Runtime's own errors (bad shapes): each client hears of it
            for client, rid, _ in requests:
                self._reply(client, {"ok": False, "id": rid, "error": f"{op}: {exc}"})
            return
        self.batches[op][len(requests)] += 1
        self.rows[op][sum(sizes)] += 1
        start = 0
        for (client, rid, _), n in zip(requests, sizes):
            self._reply(client, {"ok": True, "id": rid}, {"out": out[start:start + n]})
            start += n

    def _reply(self, client, header: dict, arrays: dict | None = None) -> None:
        self.sock.send_multipart([client, *pack(header, arrays or {})], copy=False)

    def stats(self) -> dict:
        """Per op: {requests per execution: executions} and {rows per execution: executions}."""
        return {"batches": {op: dict(c) for op, c in self.batches.items()},
                "rows": {op: dict(c) for op, c in self.rows.items()}}


def pad_tokens(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Token batches of several lengths as one: right-padded with 0, attention mask 0 there
    (what the tokenizer does within one batch)."""
    length = max(f["input_ids"].shape[1] for f in feeds)
    pad = lambda a: np.pad(a, ((0, 0), (0, length - a.shape[1])))
    return {k: np.concatenate([pad(f[k]) for f in feeds]) for k in ("input_ids", "attention_mask")}


# --------------------------------------------------------------------------- the client


class ServiceBackend(Backend):
    """The graphs run by the inference service at `endpoint`; one socket per thread."""

    name = "service"
    device = "server"

    def __init__(self, bundle: Bundle, endpoint: str, timeout_s: float = 10.0):
        self.endpoint, self.timeout_ms = endpoint, int(timeout_s * 1000)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._local = threading.local()
        self._ids = iter(range(1 << 62))
        hello = self.call("hello")
        if hello["fingerprint"] != fingerprint(bundle):
            raise BackendUnavailable(
                f"inference service at {endpoint} serves another bundle (labels {hello['labels']}); "
                f"start it with this one: realtime infer --model {bundle.path}")

    def _socket(self):
        if getattr(self._local, "sock", None) is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._local.sock = sock
        return self._local.sock

    def call(self, op: str, arrays: dict | None = None) -> dict:
        """Send one request and wait for its answer (the header, with the arrays under 'arrays')."""
        sock, rid = self._socket(), next(self._ids)
        sock.send_multipart(pack({"op": op, "id": rid}, arrays or {}), copy=False)
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0 or not sock.poll(int(wait * 1000) + 1):
                # The socket may hold a late answer; a fresh one starts clean next time.
                sock.close(linger=0)
                self._local.sock = None
                raise BackendUnavailable(
                    f"inference service at {self.endpoint}: no answer in {self.timeout_ms / 1000:g} s; "
                    f"start it (realtime infer --endpoint {self.endpoint} --model BUNDLE) or set "
                    "[model] service_endpoint")
            header, out = unpack(sock.recv_multipart())
            if header.get("id") not in (rid, None):
                continue  # the late answer to a request that timed out
            if not header["ok"]:
                raise BackendUnavailable(f"inference service at {self.endpoint}: {header['error']}")
            header["arrays"] = out
            return header

    def run_student(self, feeds):
        return self.call("student", feeds)["arrays"]["out"]

    def embed_text(self, tokens):
        return self.call("text", tokens)["arrays"]["out"]

    def stats(self) -> dict:
        return self.call("stats")
