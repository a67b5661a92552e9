"""What every pipeline stage process shares: sockets, the control channel, errors.

A stage is a function `body(stage)` run in its own process by `run_stage`.  It
reports `ready` once its models are loaded, `error` with the traceback when it
fails, and `done` when it has passed end-of-stream on.  The supervisor listens
to these reports on one PULL socket (the control channel), and sends the sources
commands (`rewind`, `finish`) on one PUB socket.

Generations: when a processing stage fails, the supervisor restarts the whole
processing chain as a new generation and the sources feed it again from the last
checkpoint.  Sources stamp what they send with their generation (`gen`); a stage
drops input from another generation, which is what the sources had queued for the
stages that were replaced.
"""
from __future__ import annotations

import os
import resource
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import zmq

from common.atomic import process_alive
from realtime import bus

HEARTBEAT_S = 1.0  # a stage reports at least this often while it is alive


@dataclass
class Endpoints:
    """Where each internal socket lives; consumers bind, producers connect."""

    audio: str  # source -> segmenter
    video: str  # source -> faces
    utterances: str  # segmenter -> asr
    fusion: str  # asr, faces -> fusion
    results: str  # fusion -> supervisor (lossless copy of what is published)
    control: str  # every stage -> supervisor
    commands: str  # supervisor -> sources (PUB): rewind after a restart, finish

    @classmethod
    def in_dir(cls, directory: str) -> "Endpoints":
        names = ("audio", "video", "utterances", "fusion", "results", "control", "commands")
        return cls(**{n: f"ipc://{directory}/{n}" for n in names})


COMMANDS = ("rewind", "finish")  # what the supervisor tells sources


class Stage:
    def __init__(self, name: str, endpoints: Endpoints, queue_limit: int, supervisor_pid: int | None = None,
                 generation: int = 0, hold_until_finish: bool = False):
        self.name = name
        self.gen = generation
        self.endpoints = endpoints
        self.queue_limit = queue_limit
        self.ctx = zmq.Context()
        self.control = bus.socket(self.ctx, zmq.PUSH, endpoints.control, bind=False)
        # Every socket this stage opens, held for the stage's whole life: a body keeps its
        # sockets in local variables, and a socket garbage-collected when the body returns
        # is closed (disconnected) at once, whatever close(drain=True) then does.
        self._sockets: list[zmq.Socket] = [self.control]
        # See close(): a finished stage stays connected until the supervisor says `finish`.
        self.hold_until_finish = hold_until_finish
        self._finish_heard = False
        self._commands = self.commands() if hold_until_finish else None
        self._last_beat = 0.0
        # A stage's parent is the supervisor or the fork server the supervisor starts stages
        # from (realtime.forkserver.stage_processes), which exits with the supervisor: either way
        # the parent changes when the supervisor dies, and that is noticed at once.  The
        # supervisor's own pid is watched too (with each heartbeat): a stage started just as it
        # died may never have seen it, and the fork server may die alone (see _orphaned).
        self._supervisor = supervisor_pid if supervisor_pid is not None else os.getppid()
        self._parent = os.getppid()

    def _own(self, sock: zmq.Socket) -> zmq.Socket:
        self._sockets.append(sock)
        return sock

    def pull(self, endpoint: str) -> zmq.Socket:
        return self._own(bus.socket(self.ctx, zmq.PULL, endpoint, bind=True, hwm=self.queue_limit))

    def push(self, endpoint: str) -> zmq.Socket:
        # Replay loses nothing: a full queue makes the sender wait (see send), not drop.
        sock = bus.socket(self.ctx, zmq.PUSH, endpoint, bind=False, hwm=self.queue_limit)
        sock.setsockopt(zmq.SNDTIMEO, int(HEARTBEAT_S * 1000))
        return self._own(sock)

    def commands(self) -> zmq.Socket:
        """The supervisor's command stream (sources; and close() of a stage that holds until finish)."""
        if getattr(self, "_commands", None) is not None:
            return self._commands  # one subscription: a `finish` read by the body counts for close()
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoints.commands)
        return self._own(sock)

    def command(self, sock: zmq.Socket, timeout_s: float = 0.0) -> dict | None:
        """The next supervisor command, waiting at most timeout_s (with heartbeats), or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, deadline - time.monotonic())
            if sock.poll(int(min(wait, HEARTBEAT_S) * 1000)):
                message = bus.recv_checked(sock, COMMANDS, self.name)
                if message is not None:
                    self._finish_heard |= message[0]["type"] == "finish"
                    return message[0]
            self.heartbeat()
            if time.monotonic() >= deadline:
                return None

    def send(self, sock: zmq.Socket, header: dict, array=None) -> None:
        """Send, waiting as long as the receiver needs, with heartbeats while waiting."""
        while True:
            try:
                return bus.send(sock, header, array)
            except zmq.Again:
                self.heartbeat()

    def recv(self, sock: zmq.Socket, kinds: tuple[str, ...]):
        """Next well-formed message of one of `kinds` on `sock`, sending heartbeats while waiting.

        Anything else is dropped and logged (bus.recv_checked): a bad message never stops a stage."""
        while True:
            while not sock.poll(int(HEARTBEAT_S * 1000)):
                self.heartbeat()
            self.heartbeat()
            message = bus.recv_checked(sock, kinds, self.name)
            if message is not None and message[0].get("gen", self.gen) == self.gen:
                return message  # (another generation's input was queued for a stage now replaced)

    def _orphaned(self) -> bool:
        """Whether the supervisor is gone (killed, not stopped): nobody reads our output any more.

        A new parent alone does not say so: the fork server this stage was forked from may have
        died (killed, or by the OOM killer: it holds every stage's libraries) while the
        supervisor lives on, and then the stage goes on (issue 25)."""
        parent = os.getppid()
        if parent == self._parent:
            return False
        if parent == self._supervisor or process_alive(self._supervisor):
            self._parent = parent  # the fork server died and we were reparented: the supervisor runs
            return False
        return True

    def heartbeat(self) -> None:
        if self._orphaned():
            os._exit(3)  # do not linger as an orphan
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_S:
            if not process_alive(self._supervisor):
                os._exit(3)
            self._last_beat = now
            self.report("heartbeat")

    def report(self, state: str, **extra) -> None:
        try:  # never block on the supervisor: if it is gone, heartbeat() notices and exits
            bus.send_nowait(self.control, {"type": state, "stage": self.name, "pid": os.getpid(),
                                           "time": time.time(), **extra})
        except zmq.Again:
            pass

    def close(self, drain: bool = False) -> None:
        """Close every socket; with drain, first deliver everything still queued.

        A stage that has finished may still hold up to queue_limit messages for a slow
        receiver, its end of stream last: dropping them after a fixed linger would lose
        the tail of the stream and leave the receiver waiting forever.  So a finished
        stage waits as long as it takes, but no longer than its supervisor lives.

        Lingering is not enough, though: a socket's linger only waits until its messages
        have left this process (into the kernel's socket buffer, and the receiver's queue).
        When the sender then disconnects while the receiver's queue is full (it reads no
        more from the connection), ZeroMQ at the receiver drops the connection with
        whatever was still unread: the tail of the stream and its end of stream.  That is
        how a replay with a lagging fusion hung: the segmenter exited while fusion was still
        seconds of audio chunks behind.  So, with hold_until_finish (the supervisor's
        stages), a finished stage keeps its connections open until the supervisor's
        `finish`, which it sends only once fusion's end of stream has reached it, i.e. once
        every message of every stage has been received."""
        if not drain:
            self.ctx.destroy(linger=2000)
            return
        if self.hold_until_finish:
            while not self._finish_heard:
                self.command(self._commands, timeout_s=HEARTBEAT_S)  # heartbeats; exits if orphaned
        # ctx.destroy reaches every socket still open, ours included (self._sockets keeps
        # them alive: see __init__), and sets their linger to infinite before closing.
        closing = threading.Thread(target=self.ctx.destroy, kwargs={"linger": -1}, daemon=True)
        closing.start()  # the main thread no longer touches the sockets
        while closing.is_alive():
            closing.join(HEARTBEAT_S)
            if self._orphaned():
                os._exit(3)


class StageError(RuntimeError):
    """A failure whose message says what is wrong and where (no traceback needed)."""


def _is_clear(exc: Exception) -> bool:
    """Errors about the user's input or machine (a bad file, a missing device), not bugs in us."""
    from engines.backends import BackendUnavailable
    from engines.bundle import BundleError
    from engines.media import MediaError

    return isinstance(exc, (StageError, MediaError, BundleError, BackendUnavailable))


def name_process(title: str) -> None:
    """Set this process's name as `ps`, `top` and psutil show it (Linux; elsewhere a no-op),
    so a stage's CPU and memory can be told apart from its siblings' (they all run `python`)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, title.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME; the kernel keeps 15 bytes
    except (OSError, AttributeError):
        pass


def run_stage(name: str, body: Callable[[Stage], None], endpoints: Endpoints, queue_limit: int,
              supervisor_pid: int, generation: int = 0, hold_until_finish: bool = False) -> None:
    """Process entry point: run `body`, report how it ended, exit 0 or 1."""
    # The supervisor owns Ctrl-C: a stage must not die half-way through a
    # message because the terminal sent SIGINT to the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(f"rt-{name}")
    stage = Stage(name, endpoints, queue_limit, supervisor_pid, generation, hold_until_finish)
    stage.heartbeat()  # the supervisor may already be gone
    try:
        body(stage)
        # Peak memory: lets a test check that a long file streams in bounded memory.
        stage.report("done", max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except Exception as exc:  # report any failure to the supervisor, then exit non-zero
        trace = "" if _is_clear(exc) else traceback.format_exc()
        stage.report("error", message=f"{type(exc).__name__}: {exc}", traceback=trace)
        stage.close()
        raise SystemExit(1)
    stage.close(drain=True)
