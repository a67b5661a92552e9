"""The supervisor: start every stage as a process, wire them with ZeroMQ, watch them.

Replay reads a recorded session as fast as the slowest stage allows (PUSH
queues are bounded, so a full queue makes the sender wait: nothing is
dropped), writes each published utterance to a JSONL file, and stops when end
of stream has passed through every stage.  A stage that fails stops the whole
pipeline with that stage's error.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Callable

import zmq

from engines.bundle import open_bundle
from realtime import bus, fusion, stages
from realtime.config import RealtimeConfig
from realtime.stage import Endpoints, run_stage


class PipelineError(RuntimeError):
    """A stage failed; the message names it."""


class Supervisor:
    def __init__(self, config: RealtimeConfig, workdir: str):
        self.config = config
        self.endpoints = Endpoints.in_dir(workdir)
        self.ctx = zmq.Context()
        self.control = bus.socket(self.ctx, zmq.PULL, self.endpoints.control, bind=True)
        self.results = bus.socket(self.ctx, zmq.PULL, self.endpoints.results, bind=True)
        self.procs: dict[str, multiprocessing.Process] = {}
        self._mp = multiprocessing.get_context("spawn")  # no fork: stages hold threads and sockets

    def start(self, name: str, body: Callable) -> None:
        proc = self._mp.Process(
            target=run_stage, name=f"realtime-{name}", daemon=True,
            args=(name, body, self.endpoints, self.config.pipeline.queue_limit),
        )
        proc.start()
        self.procs[name] = proc

    def wait_ready(self, names: list[str]) -> None:
        waiting = set(names)
        deadline = time.monotonic() + self.config.pipeline.stage_start_timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise PipelineError(f"stages not ready after {self.config.pipeline.stage_start_timeout_s} s: "
                                    f"{', '.join(sorted(waiting))}")
            report = self._control_report(timeout_ms=200)
            if report and report["type"] == "ready":
                waiting.discard(report["stage"])

    def _control_report(self, timeout_ms: int) -> dict | None:
        """Next stage report; raises PipelineError for an error or a silent death."""
        if self.control.poll(timeout_ms):
            report, _ = bus.recv(self.control)
            if report["type"] == "error":
                raise PipelineError(f"stage {report['stage']} failed: {report['message']}\n{report['traceback']}")
            return report
        for name, proc in self.procs.items():
            if proc.exitcode not in (None, 0):
                raise PipelineError(f"stage {name} exited with code {proc.exitcode}")
        return None

    def collect(self, on_result: Callable[[dict], None]) -> None:
        """Pass every published message to on_result until fusion's end of stream."""
        poller = zmq.Poller()
        poller.register(self.results, zmq.POLLIN)
        while True:
            if poller.poll(100):
                header, _ = bus.recv(self.results)
                if header["type"] == "eos":
                    return
                on_result(header["body"])
            else:
                self._control_report(timeout_ms=0)

    def stop(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        self.ctx.destroy(linger=0)


def replay(
    media: str | Path,
    config: RealtimeConfig,
    out_jsonl: str | Path | None = None,
    on_message: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the pipeline over one recorded session; returns the utterance messages."""
    from engines.media import MediaError

    media = Path(media)
    if not media.is_file():
        raise MediaError(f"{media}: no such file")
    bundle = open_bundle(config.model.bundle)  # refuse a bad bundle before starting anything
    session = media.stem
    utterances: list[dict] = []
    out = open(out_jsonl, "w") if out_jsonl else None

    def on_result(body: dict) -> None:
        if body["type"] == "utterance":
            utterances.append(body)
            if out:
                out.write(json.dumps(body, ensure_ascii=False) + "\n")
                out.flush()
        if on_message:
            on_message(body)

    cfg = config
    with tempfile.TemporaryDirectory(prefix="realtime-") as workdir:
        sup = Supervisor(cfg, workdir)
        try:
            sup.start("segmenter", functools.partial(stages.segmenter, vad_options=cfg.vad))
            sup.start("asr", functools.partial(stages.asr, asr_options=cfg.asr))
            sup.start("faces", functools.partial(stages.faces, face_options=cfg.faces,
                                                 preprocessing=bundle.preprocessing))
            sup.start("fusion", functools.partial(fusion.fusion, model_options=cfg.model,
                                                  stream_options=cfg.stream, session=session))
            sup.wait_ready(["segmenter", "asr", "faces", "fusion"])
            sup.start("source", functools.partial(
                stages.media_source, path=str(media), session=session,
                chunk_ms=cfg.pipeline.chunk_ms, video_fps=cfg.faces.sample_fps,
                sample_rate=bundle.preprocessing.sample_rate))
            sup.collect(on_result)
        finally:
            sup.stop()
            if out:
                out.close()
    return utterances
