"""A finished stage delivers everything it queued, however slow its receiver.

The bug this guards: a finished stage exited while a slower receiver had not read its
queue yet.  ZeroMQ at the receiver drops a connection whose peer has gone while the
receiver's own queue is full, and with it whatever it had not read: the tail of the
stream, end of stream last, so the receiver waited forever.  In a replay with a slow
fusion stage, the segmenter's audio copy lost its last seconds and its eos, and the
replay never finished.

A real stage process started by the real Supervisor, and real ipc sockets; this test
plays fusion (a slow receiver) and then stops the supervisor as replay does.
"""
from __future__ import annotations

import time

import zmq

from realtime import bus
from realtime.config import RealtimeConfig
from realtime.pipeline import Supervisor, private_workdir

MESSAGES = 100
QUEUE_LIMIT = 20  # sender and receiver each queue this many; the kernel's socket buffer holds more
TAKE_EVERY_S = 0.08  # the receiver's pace: the queued tail takes seconds, longer than any linger


def _producer(stage) -> None:
    """A stage body like the segmenter's: its socket is a local, it returns right after eos."""
    out = stage.push(stage.endpoints.fusion)
    stage.report("ready")
    for seq in range(MESSAGES):
        stage.send(out, {"type": "audio", "session": "s", "seq": seq, "t": seq * 0.032})
    stage.send(out, {"type": "eos", "session": "s", "stream": "audio"})


def test_a_finished_stage_delivers_its_queue_to_a_slow_receiver():
    config = RealtimeConfig()
    config.pipeline.queue_limit = QUEUE_LIMIT
    with private_workdir() as workdir:
        sup = Supervisor(config, workdir)
        ctx = zmq.Context()
        try:
            inbox = bus.socket(ctx, zmq.PULL, sup.endpoints.fusion, bind=True, hwm=QUEUE_LIMIT)
            sup.start("segmenter", _producer)
            proc = sup.procs["segmenter"]
            got, ended, done = [], False, False
            deadline = time.monotonic() + 45
            while not ended and time.monotonic() < deadline:
                report = sup.check(timeout_ms=0)  # raises if the stage failed
                done |= report is not None and report["type"] == "done"
                # Once the stage has exited, a message still to come can only be queued.
                if done and not proc.is_alive() and not inbox.poll(3000):
                    break
                if inbox.poll(200):
                    header = bus.recv(inbox)[0]
                    if header["type"] == "eos":
                        ended = True
                    else:
                        got.append(header["seq"])
                    time.sleep(TAKE_EVERY_S)
            assert got == list(range(MESSAGES)), f"got {len(got)} of {MESSAGES}, the last {got[-1:]}"
            assert ended, "end of stream never arrived"
        finally:
            sup.stop()  # `finish`: a finished stage may now exit
            ctx.destroy(linger=0)
        assert proc.exitcode == 0
