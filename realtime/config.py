"""The runtime's settings: the sections of config.toml that `realtime` reads."""
from __future__ import annotations

from dataclasses import dataclass, field

from engines.backends import BACKENDS
from common.devices import check_device
from engines.faces import FaceOptions
from engines.service import DEFAULT_ENDPOINT as SERVICE_ENDPOINT
from common.settings import apply_overrides, build, read_toml
from realtime.security import is_local
from realtime.stages.asr import AsrOptions
from realtime.stages.fusion import FusionOptions
from realtime.stages.segmenter import VadOptions
from realtime.stages.source import CaptureOptions


@dataclass
class StreamOptions:
    endpoint: str = "tcp://127.0.0.1:5555"  # where the stream is published (PUB, bound); loopback:
    # emotions are personal data; another address needs the CURVE keys below (docs/PROTOCOL.md: Security)
    wait_subscribers: int = 0  # hold the first message until this many subscribers joined (--dashboard: 1)
    wait_timeout_s: float = 10.0  # ... but no longer than this
    subscriber_queue: int = 1000  # messages held for each subscriber that does not keep up; beyond
    # that its messages are dropped (it sees a seq gap), so a stalled subscriber costs the pipeline and
    # the other subscribers neither time nor memory
    curve_secret_key: str = ""  # CURVE encryption: the server's secret key file (`realtime keys --out DIR`:
    # DIR/server.key_secret); "" = unencrypted, loopback only
    curve_clients: str = ""  # CURVE: directory of the client public keys (*.key) allowed to subscribe
    # (DIR/clients); set with curve_secret_key

    def __post_init__(self):
        scheme, _, rest = self.endpoint.partition("://")
        if scheme not in ("tcp", "ipc", "inproc") or not rest:
            raise ValueError(f"endpoint {self.endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
        if bool(self.curve_secret_key) != bool(self.curve_clients):
            raise ValueError("curve_secret_key and curve_clients go together: set both or neither")
        if not is_local(self.endpoint) and not self.curve_secret_key:
            # Emotions are personal data: never publish them off this machine unencrypted.
            raise ValueError(
                f"endpoint {self.endpoint!r}: only loopback addresses are allowed without encryption; "
                "to publish to other hosts, create keys with `realtime keys --out DIR` and set "
                "stream.curve_secret_key and stream.curve_clients (docs/PROTOCOL.md: Security)"
            )
        if self.wait_subscribers < 0:
            raise ValueError("wait_subscribers must be >= 0")
        if self.subscriber_queue < 1:
            raise ValueError("subscriber_queue must be >= 1")
        if self.wait_timeout_s < 0:
            raise ValueError("wait_timeout_s must be >= 0")


@dataclass
class ModelOptions:
    bundle: str = ""  # bundle directory written by `trainer export` (or --model)
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch | triton | service (auto: TensorRT,
    # else PyTorch on CUDA, else ONNX Runtime; triton: the Triton Inference Server at
    # triton_url; service: the inference service at service_endpoint; never chosen by auto)
    device: str = "auto"  # auto | cpu | cuda (not for triton: the server's model config decides)
    threads: int = 1  # inference threads of the fusion stage
    faces: str = "bundle"  # which face settings the pipeline runs: bundle = the [faces] the bundle was
    # trained with (its manifest), which `trainer evaluate BUNDLE` scored; config = this file's [faces]
    # (what is served is then not what was scored); either way each difference is printed at start
    triton_url: str = "localhost:8000"  # backend triton: the server's HTTP endpoint, host:port
    # (or http://host:port, https://host:port); it serves `trainer export --triton` of this bundle
    triton_timeout_s: float = 10.0  # backend triton: longest wait to connect or for one inference
    service_endpoint: str = SERVICE_ENDPOINT  # backend service: where `realtime infer`
    # answers (ZeroMQ; ipc, or tcp on loopback: it receives voice and face features), shared by
    # every session of this machine
    service_timeout_s: float = 10.0  # backend service: longest wait for one answer
    service_gather_ms: float = 2.0  # `realtime infer`: after a request, wait this long for requests of
    # other sessions to run in the same batch
    service_max_batch: int = 64  # `realtime infer`: most rows (windows or texts) in one batch

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        check_device(self.device, "[model] device")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.faces not in ("bundle", "config"):
            raise ValueError(f"faces {self.faces!r}: expected bundle or config")
        if not self.triton_url:
            raise ValueError("triton_url must not be empty")
        if self.triton_timeout_s <= 0:
            raise ValueError("triton_timeout_s must be > 0")
        scheme, _, rest = self.service_endpoint.partition("://")
        if scheme not in ("tcp", "ipc") or not rest:
            raise ValueError(f"service_endpoint {self.service_endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
        if not is_local(self.service_endpoint):
            raise ValueError(f"service_endpoint {self.service_endpoint!r}: only loopback addresses and ipc "
                             "(the service receives voice and face features, which are personal data)")
        if self.service_timeout_s <= 0:
            raise ValueError("service_timeout_s must be > 0")
        if self.service_gather_ms < 0:
            raise ValueError("service_gather_ms must be >= 0")
        if self.service_max_batch < 1:
            raise ValueError("service_max_batch must be >= 1")


@dataclass
class PipelineOptions:
    chunk_ms: int = 32  # audio chunk the source sends (Silero VAD works on 32 ms frames)
    queue_limit: int = 256  # messages a socket buffers before its sender waits (replay) or drops (live)
    stage_start_timeout_s: float = 60.0  # a stage not ready by then stops the pipeline
    rewind_s: float = 60.0  # serve: seconds of microphone audio kept to feed a restarted processing
    # chain again from its last checkpoint (an utterance in progress when a stage failed is not lost)
    max_restarts: int = 3  # how often each stage or source is restarted in one session, after which
    # the session ends with a `failed` status; 0 = the first failure ends it

    def __post_init__(self):
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError("chunk_ms must be in [10, 1000]")
        if self.queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        if self.stage_start_timeout_s <= 0:
            raise ValueError("stage_start_timeout_s must be > 0")
        if self.rewind_s < 0:
            raise ValueError("rewind_s must be >= 0")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")


@dataclass
class RealtimeConfig:
    vad: VadOptions = field(default_factory=VadOptions)
    asr: AsrOptions = field(default_factory=AsrOptions)
    faces: FaceOptions = field(default_factory=FaceOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    fusion: FusionOptions = field(default_factory=FusionOptions)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    stream: StreamOptions = field(default_factory=StreamOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)


SECTIONS = {
    "vad": VadOptions,
    "asr": AsrOptions,
    "faces": FaceOptions,
    "model": ModelOptions,
    "fusion": FusionOptions,
    "capture": CaptureOptions,
    "stream": StreamOptions,
    "pipeline": PipelineOptions,
}


def load_config(path=None, overrides: list[str] = ()) -> RealtimeConfig:
    data = apply_overrides(read_toml(path), list(overrides))
    return RealtimeConfig(**{name: build(cls, data.get(name), name) for name, cls in SECTIONS.items()})
