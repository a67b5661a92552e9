"""Run a bundle's two graphs on a Triton Inference Server, over HTTP (tritonclient).

The server serves the repository `trainer export --triton` writes (engines.triton): the
models emotion_student and emotion_text_encoder, batched across clients by Triton's dynamic
batcher.  Everything else stays here, as with the other backends: the Engine preprocesses,
tokenises and reads the results with the bundle's manifest, so the client needs the same
bundle the repository was exported from.  At start the client checks that the server is
reachable, that both models are ready, and that their tensors are the ones this bundle's
manifest names, so a server that serves another model is an error, not wrong emotions.

HTTP, not gRPC: tritonclient's gRPC client pins protobuf below the version onnx needs here.
"""
from __future__ import annotations

import threading

import numpy as np

from engines.backends import Backend, BackendUnavailable, in_batches
from engines.bundle import Bundle
from common.settings import ConfigError
from engines.triton import DTYPES, MODELS, dims

INSTALL_HINT = "pip install 'tritonclient[http]==2.73.0' (or the [triton] extra)"


def import_client():
    try:
        import tritonclient.http as http
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'triton' needs tritonclient ({exc}); {INSTALL_HINT}") from exc
    return http


def split_url(url: str) -> tuple[str, bool]:
    """(host:port, ssl) from host:port, http://host:port or https://host:port."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, False
    if scheme not in ("http", "https") or not rest:
        raise ConfigError(f"triton_url {url!r}: expected host:port, http://host:port or https://host:port")
    return rest.rstrip("/"), scheme == "https"


class _Model:
    """One served model: its name, the server's batch limit, and its tensors checked against the manifest."""

    def __init__(self, http, connection, where: str, name: str, inputs: dict, outputs: dict):
        self.http, self.connection, self.name = http, connection, name
        self.where = f"Triton at {where}, model {name!r}"
        client = connection()
        if not client.is_model_ready(name):
            raise BackendUnavailable(f"{self.where}: not ready on the server (its models: {_models(client)}); "
                                     "serve the repository `trainer export --triton DIR` wrote")
        metadata = client.get_model_metadata(name)
        expected = {(t, DTYPES[spec["dtype"]].removeprefix("TYPE_"), (-1, *dims(spec)))
                    for specs in (inputs, outputs) for t, spec in specs.items()}
        served = {(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["inputs"] + metadata["outputs"]}
        if served != expected:
            raise BackendUnavailable(f"{self.where}: serves tensors {sorted(served)}, this bundle's manifest names "
                                     f"{sorted(expected)}; export the repository from this bundle")
        self.max_batch = client.get_model_config(name)["max_batch_size"] or None
        self.inputs = list(inputs)
        self.output = next(iter(outputs))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return in_batches(self._infer, feeds, self.max_batch)

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        http, requests = self.http, []
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name])
            tensor = http.InferInput(name, list(array.shape), _datatype(array))
            tensor.set_data_from_numpy(array, binary_data=True)  # raw bytes: exact, and no JSON of floats
            requests.append(tensor)
        try:
            result = self.connection().infer(self.name, requests,
                                             outputs=[http.InferRequestedOutput(self.output, binary_data=True)])
        except Exception as exc:  # tritonclient's own errors, and the socket's when the server is gone
            raise BackendUnavailable(f"{self.where}: inference failed: {exc}") from exc
        return result.as_numpy(self.output)


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def _models(client) -> str:
    index = client.get_model_repository_index()
    return ", ".join(f"{m['name']} ({m.get('state') or 'not loaded'})" for m in index) or "none"


class TritonBackend(Backend):
    name = "triton"
    device = "server"  # where the models run is the server's choice (its config's instance_group)

    def __init__(self, bundle: Bundle, url: str, timeout_s: float = 10.0):
        http = import_client()
        address, ssl = split_url(url)
        self.url = url
        self._connect = lambda: http.InferenceServerClient(address, ssl=ssl, connection_timeout=timeout_s,
                                                           network_timeout=timeout_s)
        self._local = threading.local()
        try:
            live = self._connection().is_server_live()
        except Exception as exc:  # refused, unresolvable, timed out: socket errors of several kinds
            raise BackendUnavailable(f"Triton at {url} is unreachable: {exc}; start the server, or set "
                                     "[model] triton_url") from exc
        if not live:
            raise BackendUnavailable(f"Triton at {url} answers but is not live")
        entries = bundle.entries
        self._student, self._text = (_Model(http, self._connection, url, MODELS[graph], *entries.io(graph))
                                     for graph in ("student", "text_encoder"))

    def _connection(self):
        # tritonclient's HTTP client runs on gevent, whose connections belong to the thread
        # that opened them: one client per thread, so any thread may run the engine.
        if not hasattr(self._local, "client"):
            self._local.client = self._connect()
        return self._local.client

    def run_student(self, feeds):
        return self._student.run(feeds)

    def embed_text(self, tokens):
        return self._text.run(tokens)
