"""The runtime's settings: the sections of config.toml that `realtime` reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address
from urllib.parse import urlsplit

from engines.backends import BACKENDS, DEVICES
from engines.faces import FaceOptions
from engines.settings import apply_overrides, build, read_toml
from realtime.asr import AsrOptions
from realtime.fusion import FusionOptions
from realtime.sources import CaptureOptions
from realtime.segmenter import VadOptions


@dataclass
class StreamOptions:
    endpoint: str = "tcp://127.0.0.1:5555"  # where the stream is published (PUB, bound); loopback only:
    # emotions are personal data
    wait_subscribers: int = 0  # replay: hold the first message until this many subscribers joined
    wait_timeout_s: float = 10.0  # ... but no longer than this

    def __post_init__(self):
        scheme, _, rest = self.endpoint.partition("://")
        if scheme not in ("tcp", "ipc", "inproc") or not rest:
            raise ValueError(f"endpoint {self.endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
        if scheme == "tcp":
            host = urlsplit(self.endpoint).hostname or ""
            loopback = host == "localhost"
            try:
                loopback = loopback or ip_address(host).is_loopback
            except ValueError:
                pass
            if not loopback:
                # Emotions are personal data: never publish them off this machine unencrypted.
                raise ValueError(
                    f"endpoint {self.endpoint!r}: only loopback addresses are allowed "
                    "(publishing to other hosts needs CURVE encryption, not yet supported)"
                )
        if self.wait_subscribers < 0:
            raise ValueError("wait_subscribers must be >= 0")


@dataclass
class ModelOptions:
    bundle: str = ""  # bundle directory written by `trainer export` (or --model)
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch (auto: TensorRT, else PyTorch on CUDA,
    # else ONNX Runtime)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # inference threads of the fusion stage

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")


@dataclass
class PipelineOptions:
    chunk_ms: int = 32  # audio chunk the source sends (Silero VAD works on 32 ms frames)
    queue_limit: int = 256  # messages a socket buffers before its sender waits (replay) or drops (live)
    stage_start_timeout_s: float = 60.0  # a stage not ready by then stops the pipeline

    def __post_init__(self):
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError("chunk_ms must be in [10, 1000]")
        if self.queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")


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
