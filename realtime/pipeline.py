"""The supervisor: start every stage as a process, wire them with ZeroMQ, watch them.

Replay reads a recorded session as fast as the slowest stage allows (PUSH
queues are bounded, so a full queue makes the sender wait: nothing is
dropped), and stops when end of stream has passed through every stage.

Serve captures a camera and a microphone until Ctrl-C or SIGTERM; a device that
cannot be opened stops everything with a clear message.

In both, a processing stage that dies or stops sending heartbeats is restarted,
losing nothing: the supervisor keeps fusion's last checkpoint (sent with every
result), replaces the whole processing chain (segmenter, ASR, faces, fusion) by a
new generation, and tells the sources to send their media again from the
checkpoint's media time.  Every stage's state (the VAD's open utterance, queued
utterances, buffered audio and faces, pending transcripts) is made again from that
media; fusion goes on with the checkpoint's seq and dialogue history and drops what
it had published already.  One mechanism for all four stages, at the price of
reloading all four stages' models when one fails.  Replay's file reader is restarted the
same way, from the checkpoint.  A live camera or microphone that dies is opened again
alone (what it would have captured meanwhile is gone; the processing chain is not
restarted), and a `restarted` status says so.  The fork server the stages are forked
from may die too: the stages run on (realtime.processes), and a new server is started
for the stages restarted later.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Collection

import zmq

from engines.bundle import Bundle, BundleError, open_bundle
from engines.card import model_line
from common.errors import UserError
from engines.faces import FaceOptions
from realtime import bus, protocol
from realtime.config import RealtimeConfig
from realtime.forkserver import restart_if_dead, stage_environment, stage_processes
from realtime.framework import Endpoints, run_stage
from realtime.processes import StageProcess
from realtime.security import check_server_keys
from realtime.stages import asr, faces, fusion, segmenter
from realtime.stages.source import CaptureOptions, camera_source, media_source, microphone_source, print_clock

PROCESSING = ["segmenter", "asr", "faces", "fusion"]
SOURCE_STREAMS = {"source": ("audio", "video"), "camera": ("video",), "microphone": ("audio",)}
LIVE_SOURCES = ("camera", "microphone")  # reopened alone when they die; replay's "source" restarts the chain
HEARTBEAT_TIMEOUT_S = 30.0  # silence after which a stage counts as hung (ASR of a long utterance fits)
HELPER_CHECK_S = 1.0  # how often the fork server is checked (and started again if it died)


class PipelineError(UserError, RuntimeError):
    """A stage failed; the message names it."""


@contextmanager
def private_workdir():
    """The directory of the internal ipc sockets, which only this user can enter.

    Stages exchange raw audio, video and transcripts there: another local user who
    could connect would read them or inject messages.  mkdtemp already creates it
    mode 0700; the chmod keeps that true whatever tempfile does.  Nothing but the
    sockets is written in it, and it is removed with them.
    """
    with tempfile.TemporaryDirectory(prefix="realtime-") as workdir:
        os.chmod(workdir, 0o700)
        yield workdir


class Supervisor:
    def __init__(self, config: RealtimeConfig, workdir: str, restart: bool = False, local_windows: bool = True):
        """local_windows: the results this supervisor collects must hold the window updates;
        without, fusion scores them only while a subscriber of the public stream wants them."""
        self.config = config
        self.restart = restart
        self.local_windows = local_windows
        self.endpoints = Endpoints.in_dir(workdir)
        self.ctx = zmq.Context()
        self.control = bus.socket(self.ctx, zmq.PULL, self.endpoints.control, bind=True)
        self.results = bus.socket(self.ctx, zmq.PULL, self.endpoints.results, bind=True)
        self.procs: dict[str, StageProcess] = {}
        self.bodies: dict[str, Callable] = {}
        self.last_seen: dict[str, float] = {}
        self.ready: set[str] = set()  # stages past model loading, which must send heartbeats
        self.restarts: dict[str, int] = {}
        self.commands = bus.socket(self.ctx, zmq.PUB, self.endpoints.commands, bind=True)
        # End-of-stream senders stay connected until stop(): ZeroMQ drops what a receiver has
        # queued but not read when its peer disconnects, so closing one (even after a linger)
        # could lose the end of stream it sent and hang the stage waiting for it.
        self.eos_senders: list[zmq.Socket] = []
        self.notices: zmq.Socket | None = None  # supervisor -> fusion: statuses to publish (a reopened source)
        self._helpers_checked = time.monotonic()
        self.generation = 0  # of the processing chain; a restart makes a new one
        self.checkpoint: dict | None = None  # fusion's state after the last result received
        self.ended_streams: set[str] = set()  # streams whose end of stream this supervisor sent
        self.on_result: Callable[[dict], None] | None = None
        self.fusion_finished = False  # fusion's end of stream has arrived
        self.faces = config.faces  # the [faces] the stages run: serving_faces once the bundle is open
        self._mp = stage_processes()

    def start(self, name: str, body: Callable) -> None:
        proc = self._mp.Process(
            target=run_stage, name=f"realtime-{name}", daemon=True,
            args=(name, body, self.endpoints, self.config.pipeline.queue_limit, os.getpid(), self.generation),
            # A processing stage that has finished stays connected until stop() says `finish`:
            # exiting earlier could lose what a slower receiver had not read yet (Stage.close).
            # Sources are not held: one that has ended must read as ended to _restart_chain.
            kwargs={"hold_until_finish": name in PROCESSING},
        )
        with stage_environment():
            proc.start()
        self.procs[name] = StageProcess(proc, forked=self._mp.get_start_method() == "forkserver")
        self.bodies[name] = body
        self.ready.discard(name)
        self.last_seen[name] = time.monotonic()

    def start_processing(self, open_model: Callable[[], Bundle], session: str, paced: bool = True,
                         source: str = "", ordered: bool = False) -> Bundle:
        """Start the processing stages and wait until they are ready; returns the bundle.

        open_model opens and verifies the bundle (hashing ~100 MB): the VAD and the ASR read
        none, so they load their models meanwhile, and a bad bundle stops them before any
        media is read.  paced: the media comes at its own speed (serve, replay --realtime).
        Only then does speculative ASR save time; a replay as fast as it goes would
        transcribe some utterances twice (where speech resumes) for nothing.
        source: the replayed file's name, which the `started` status names ("": live).
        ordered (replay): fusion publishes in media-time order, the same every run
        (realtime.stages.fusion); live, each result goes out as soon as it can instead."""
        cfg = self.config
        self.start("segmenter", functools.partial(segmenter.segmenter, vad_options=cfg.vad,
                                                 partial_every_s=cfg.asr.partial_every_s,
                                                 speculative=cfg.asr.speculative and paced,
                                                 asr_pad_ms=cfg.asr.pad_ms, asr_lead_ms=cfg.asr.lead_ms,
                                                 progress=ordered))
        self.start("asr", functools.partial(asr.asr, asr_options=cfg.asr, ordered=ordered))
        bundle = open_model()
        self.faces = serving_faces(cfg, bundle)
        self.start("faces", functools.partial(faces.faces, face_options=self.faces,
                                              preprocessing=bundle.preprocessing))
        self.start("fusion", functools.partial(fusion.fusion, model_options=cfg.model, bundle=bundle,
                                               stream_options=cfg.stream,
                                               fusion_options=cfg.fusion, face_options=self.faces,
                                               session=session, local_windows=self.local_windows,
                                               source=source, ordered=ordered))
        self.wait_ready(PROCESSING)
        return bundle

    def wait_ready(self, names: list[str]) -> None:
        waiting = set(names)
        deadline = time.monotonic() + self.config.pipeline.stage_start_timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise PipelineError(f"stages not ready after {self.config.pipeline.stage_start_timeout_s} s: "
                                    f"{', '.join(sorted(waiting))}")
            report = self.check(timeout_ms=200, restart=False)
            if report and report["type"] == "ready":
                waiting.discard(report["stage"])

    def check(self, timeout_ms: int, restart: bool | None = None) -> dict | None:
        """Next stage report, if any; a failed, dead or hung stage is restarted or raises PipelineError."""
        restart = self.restart if restart is None else restart
        report = self._next_report(timeout_ms)
        if report is not None:
            self._handle(report, restart)
        now = time.monotonic()
        if now - self._helpers_checked > HELPER_CHECK_S:
            self._helpers_checked = now
            if (pid := restart_if_dead()) is not None:
                print(f"realtime: the fork server died; the stages run on, and a new one (pid {pid}) starts "
                      "those restarted from now on", file=sys.stderr, flush=True)
        for name, proc in list(self.procs.items()):
            if proc.exitcode not in (None, 0):
                # Its error report may still be queued behind heartbeats: read those first,
                # so the failure says why the stage ended, not only that it did.
                while (queued := self._next_report(0)) is not None:
                    self._handle(queued, restart)
                # Not already restarted on its error report, and not a clean end after all: once
                # its fork server is gone, only its `done` report (just read) tells that apart.
                if self.procs.get(name) is proc and proc.exitcode not in (None, 0):
                    self._failed(name, proc.describe_exit(), restart)
            elif name in self.ready and proc.is_alive() and now - self.last_seen[name] > HEARTBEAT_TIMEOUT_S:
                self._failed(name, f"no heartbeat for {HEARTBEAT_TIMEOUT_S:.0f} s", restart)
        return report

    def _next_report(self, timeout_ms: int) -> dict | None:
        """The next well-formed report from a stage we started; anything else is dropped (bus logs it)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while self.control.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            report = bus.recv_checked(self.control, bus.REPORTS, "supervisor")
            # Only from the process now running as that stage, not from one it replaced.
            if report is not None and report[0]["stage"] in self.procs \
                    and report[0]["pid"] == self.procs[report[0]["stage"]].pid:
                return report[0]
        return None

    def _handle(self, report: dict, restart: bool) -> None:
        self.last_seen[report["stage"]] = time.monotonic()
        if report["type"] == "ready":
            self.ready.add(report["stage"])
        if report["type"] == "done":  # its work is over: it may now take a while delivering what it queued
            self.ready.discard(report["stage"])
            self.procs[report["stage"]].done()
        if report["type"] == "error":
            # A clear error (bad media, missing device) comes without a traceback: its message says it all.
            why = "\n".join(filter(None, (report["message"], report.get("traceback", ""))))
            self._failed(report["stage"], why, restart)

    def _failed(self, name: str, why: str, restart: bool) -> None:
        if not restart or name not in (*PROCESSING, *SOURCE_STREAMS) or self.restarts.get(name, 0) >= self.config.pipeline.max_restarts:
            raise PipelineError(f"stage {name} failed: {why}")
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if name in LIVE_SOURCES:
            self._reopen(name, why.splitlines()[0])
        else:
            self._restart_chain(name, why.splitlines()[0])

    def _reopen(self, name: str, why: str) -> None:
        """A live source died: open its device again, and have fusion publish a `restarted` status.

        The chain goes on: what the source had sent is in, what it would have captured since is
        gone.  A reopened camera or microphone that cannot be opened any more is lost instead."""
        detail = f"source {name} failed ({why}); reopened ({self.restarts[name]}/{self.config.pipeline.max_restarts})"
        print(f"realtime: {detail}", file=sys.stderr, flush=True)
        self.start(name, functools.partial(self.bodies[name], reopened=True))
        if self.notices is None:  # kept open, like eos_senders: see __init__
            self.notices = bus.socket(self.ctx, zmq.PUSH, self.endpoints.fusion, bind=False)
        bus.send(self.notices, {"type": "status", "state": "restarted", "detail": detail, "gen": self.generation})

    def _restart_chain(self, name: str, why: str) -> None:
        """Replace every processing stage by a new generation fed again from fusion's checkpoint."""
        # All of them, not only the one that failed: the others hold state (an open utterance,
        # queued work, buffered audio and faces) that came from, or was meant for, the lost one.
        for stage in PROCESSING:
            if self.procs[stage].is_alive():
                self.procs[stage].kill()
        for stage in PROCESSING:
            self.procs[stage].join(5)
        if name == "source":
            self.procs.pop(name)  # started again below, once the new chain is ready
        self._drain_results()  # what fusion published before it died: the latest checkpoint
        if self.fusion_finished:
            return  # the session was complete: nothing to do again
        since = self.checkpoint["resume_from"] if self.checkpoint else 0.0
        detail = (f"stage {name} failed ({why}); processing restarted "
                  f"({self.restarts[name]}/{self.config.pipeline.max_restarts}), media again from {max(since, 0.0):.2f} s")
        print(f"realtime: {detail}", file=sys.stderr, flush=True)
        self.generation += 1
        self.bodies["fusion"] = functools.partial(self.bodies["fusion"],
                                                  resume={"detail": detail, "state": self.checkpoint})
        for stage in PROCESSING:
            self.start(stage, self.bodies[stage])
        self.wait_ready(PROCESSING)
        bus.send(self.commands, {"type": "rewind", "gen": self.generation, "t": since})
        if name == "source":  # replay's file reader itself: a new one reads on from the checkpoint
            # (started after the rewind, which would make it send that media twice)
            self.start("source", functools.partial(self.bodies["source"], since=since))
        # A source that has ended (a file camera, a lost device, none at all) sends nothing
        # more: its end of stream goes to the new chain from here.
        ended = set(self.ended_streams)
        for source, streams in SOURCE_STREAMS.items():
            proc = self.procs.get(source)
            if proc is not None and not proc.is_alive():
                ended.update(streams)
        for stream in sorted(ended):
            self._send_eos(stream, {"type": "eos", "gen": self.generation})

    def _send_eos(self, stream: str, eos: dict) -> None:
        sock = bus.socket(self.ctx, zmq.PUSH, getattr(self.endpoints, stream), bind=False)
        bus.send(sock, eos)
        self.eos_senders.append(sock)  # closed by stop(), once fusion has finished

    def _take_result(self, message) -> None:
        header = message[0]
        if header["type"] == "eos":
            self.fusion_finished = True
            return
        if "resume" in header:
            self.checkpoint = header["resume"]
        if self.on_result is not None:
            self.on_result(header["body"])

    def _drain_results(self) -> None:
        while self.results.poll(200):
            message = bus.recv_checked(self.results, bus.RESULTS_IN, "supervisor")
            if message is not None:
                self._take_result(message)

    def announce_failure(self, session: str, detail: str) -> None:
        """Processing gave up (PipelineError): end the session for its subscribers, and in the
        results, with `failed` then `finished` (fusion.announce_failure), if it had started and
        not yet finished.  The processing stages are stopped first: fusion's socket must go."""
        for stage in PROCESSING:
            if stage in self.procs and self.procs[stage].is_alive():
                self.procs[stage].kill()
        for stage in PROCESSING:
            if stage in self.procs:
                self.procs[stage].join(5)
        self._drain_results()  # what fusion published before it died: its last checkpoint
        if self.checkpoint is None or self.fusion_finished:
            return
        for body in fusion.announce_failure(self.ctx, self.config.stream, session, self.checkpoint, detail):
            if self.on_result is not None:
                self.on_result(body)

    def collect(self, on_result: Callable[[dict], None], stop: Callable[[], bool] = lambda: False) -> bool:
        """Pass published messages to on_result until fusion's end of stream (True) or stop() (False)."""
        self.on_result = on_result
        while not stop():
            if self.fusion_finished:
                return True
            if self.results.poll(100):
                message = bus.recv_checked(self.results, bus.RESULTS_IN, "supervisor")
                if message is not None:
                    self._take_result(message)
            else:
                self.check(timeout_ms=0)
        return False

    def end_sources(self, session: str, names: list[str], streams=("audio", "video")) -> None:
        """Stop live sources and send end of stream in their place, so every stage flushes."""
        for name in names:
            proc = self.procs.pop(name, None)
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(5)
        for stream in streams:
            self.ended_streams.add(stream)
            self._send_eos(stream, {"type": "eos", "session": session, "gen": self.generation})

    def stop(self, timeout_s: float = 10.0) -> None:
        bus.send(self.commands, {"type": "finish"})  # sources that wait for a rewind end now
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        self.ctx.destroy(linger=0)


class ResultSink:
    """Receives every published message: keeps utterances, appends them to a JSONL file."""

    def __init__(self, out_jsonl, on_message, all_types: bool = False):
        self.utterances: list[dict] = []
        self.on_message, self.all_types = on_message, all_types
        self.out = open(out_jsonl, "w") if out_jsonl else None

    def __call__(self, body: dict) -> None:
        if body["type"] == "utterance":
            self.utterances.append(body)
        if self.out and (self.all_types or body["type"] == "utterance"):
            self.out.write(json.dumps(body, ensure_ascii=False) + "\n")
            self.out.flush()
        if self.on_message:
            self.on_message(body)

    def close(self) -> None:
        if self.out:
            self.out.close()


def wants_windows(all_types: bool, on_message, on_message_types) -> bool:
    """Whether the caller reads window updates: in its file (all_types), or through on_message
    unless on_message_types leaves them out."""
    return all_types or (on_message is not None and (on_message_types is None or "window" in on_message_types))


def serving_faces(config: RealtimeConfig, bundle: Bundle) -> FaceOptions:
    """The face settings the pipeline runs ([model] faces): the bundle's, those its model was
    trained on and `trainer evaluate BUNDLE` scored it with, or this config's [faces].  Each
    difference is printed either way: the crops, tracks and speakers the model sees follow
    these settings, so with another the scores on the bundle's card are not what runs."""
    trained = bundle.faces
    differ = [f.name for f in dataclasses.fields(FaceOptions)
              if getattr(trained, f.name) != getattr(config.faces, f.name)]
    if not differ:
        return trained
    mine = ", ".join(f"{name} = {getattr(config.faces, name)!r}" for name in differ)
    theirs = ", ".join(f"{name} = {getattr(trained, name)!r}" for name in differ)
    if config.model.faces == "bundle":
        print(f"warning: [faces] {mine} ignored: the bundle was trained and scored with {theirs}, "
              'which run ([model] faces = "bundle"; "config" runs yours)', file=sys.stderr, flush=True)
        return trained
    print(f"warning: running [faces] {mine} ([model] faces = \"config\"): the bundle was trained and "
          f"scored with {theirs}, so what runs is not what `trainer evaluate` scored", file=sys.stderr, flush=True)
    return config.faces


def announced_bundle(config: RealtimeConfig) -> Bundle:
    """[model] bundle, opened and verified, with its one-line summary on stderr."""
    bundle = open_bundle(config.model.bundle)
    rate = bundle.preprocessing.sample_rate
    if rate != segmenter.SAMPLE_RATE:  # the sources would stream at it, the VAD and ASR mishear it
        raise BundleError(f"{bundle.path}: features.sample_rate = {rate} Hz, but the pipeline's VAD and ASR "
                          f"models hear {segmenter.SAMPLE_RATE} Hz only: serve a bundle trained at "
                          f"{segmenter.SAMPLE_RATE} Hz")
    print(model_line(bundle), file=sys.stderr, flush=True)
    return bundle


def replay(
    media: str | Path,
    config: RealtimeConfig,
    out_jsonl: str | Path | None = None,
    on_message: Callable[[dict], None] | None = None,
    all_messages: bool = False,
    realtime: bool = False,
    on_message_types: Collection[str] | None = None,
) -> list[dict]:
    """Run the pipeline over one recorded session; returns the utterance messages.

    out_jsonl gets the utterance results, or every published message with all_messages.
    realtime paces the media at its own speed instead of as fast as the stages go.
    on_message_types: the message types on_message uses (None: all).  Window updates that
    neither it, the file nor a subscriber of the public stream wants are not scored."""
    from engines.media import probe_media

    stage_processes()  # now: its imports overlap the checks below
    media = Path(media)
    probe_media(media)  # a bad file is refused with FFmpeg's reason, before any model loads
    check_server_keys(config.stream)
    session = protocol.new_session(media.stem)  # unique: a subscriber tells two replays apart
    sink = None
    with private_workdir() as workdir:
        sup = Supervisor(config, workdir, restart=True,
                         local_windows=wants_windows(all_messages, on_message, on_message_types))
        try:
            bundle = sup.start_processing(lambda: announced_bundle(config), session, paced=realtime,
                                          source=media.name, ordered=True)
            # Opened (and so emptied) only once the bundle has passed its checks.
            sink = ResultSink(out_jsonl, on_message, all_types=all_messages)
            sup.start("source", functools.partial(
                media_source, path=str(media), session=session,
                chunk_ms=config.pipeline.chunk_ms, video_fps=sup.faces.sample_fps,
                sample_rate=bundle.preprocessing.sample_rate, realtime=realtime, rewindable=True))
            sup.collect(sink)
        except PipelineError as exc:
            sup.announce_failure(session, str(exc).splitlines()[0])
            raise
        finally:
            sup.stop()
            if sink:
                sink.close()
    return sink.utterances


def serve(
    config: RealtimeConfig,
    capture: CaptureOptions,
    out_jsonl: str | Path | None = None,
    on_message: Callable[[dict], None] | None = None,
    duration_s: float = 0.0,
    on_message_types: Collection[str] | None = None,
) -> list[dict]:
    """Live: camera + microphone until Ctrl-C, SIGTERM or duration_s; returns the utterances.

    out_jsonl gets every published message; on_message_types as for replay."""
    stage_processes()  # now: its imports overlap the checks below
    check_server_keys(config.stream)
    session = protocol.new_session("live")
    sink = None
    stopping = {"now": False}

    def request_stop(*_):
        stopping["now"] = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    t_end = time.monotonic() + duration_s if duration_s else float("inf")
    with private_workdir() as workdir:
        sup = Supervisor(config, workdir, restart=True,
                         local_windows=wants_windows(bool(out_jsonl), on_message, on_message_types))
        try:
            bundle = sup.start_processing(lambda: announced_bundle(config), session)
            sink = ResultSink(out_jsonl, on_message, all_types=True)  # as in replay: after the checks
            t_start = time.time()  # the session clock both sources stamp media time with
            live = []
            if capture.camera:  # opened first: the device most often missing or busy
                live.append("camera")
                sup.start("camera", functools.partial(
                    camera_source, options=capture, session=session,
                    sample_fps=sup.faces.sample_fps, t_start=t_start))
                sup.wait_ready(live)
            else:
                sup.end_sources(session, [], streams=("video",))  # no camera: no video
            live.append("microphone")
            sup.start("microphone", functools.partial(
                microphone_source, options=capture, session=session, chunk_ms=config.pipeline.chunk_ms,
                sample_rate=bundle.preprocessing.sample_rate, t_start=t_start,
                rewind_s=config.pipeline.rewind_s))
            sup.wait_ready(["microphone"])
            print(f"realtime: serving session {session} on {config.stream.endpoint} (Ctrl-C to stop)",
                  file=sys.stderr)
            print_clock(f"session {session}", t_start)
            finished = sup.collect(sink, stop=lambda: stopping["now"] or time.monotonic() > t_end)
            if not finished:
                sup.end_sources(session, live)
                sup.restart = False
                sup.collect(sink)
        except PipelineError as exc:
            sup.announce_failure(session, str(exc).splitlines()[0])
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sup.stop()
            if sink:
                sink.close()
    return sink.utterances
