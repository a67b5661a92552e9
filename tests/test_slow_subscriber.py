"""A subscriber that connects and never reads costs the pipeline nothing (issue 12).

Two real `realtime replay` runs of the same 60 s recording: one with a stalled
subscriber (a SUB socket with the smallest queue and socket buffer, never read) and a
well-behaved `realtime listen` beside it, one without either.  The stalled run must
finish about as fast, the fusion stage (the publisher) must not grow, the listener
must hear every message, and the stalled subscriber must have been dropped from,
not buffered for.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from realtime import protocol

from tests.conftest import free_port
from tests.helpers import stage_pids, wait_for_status, write_media

MEDIA_S = 60.0
QUEUE = 10  # [stream] subscriber_queue for both runs: far fewer than the ~240 messages of 60 s


def _replay(media, bundle, out: Path, endpoint: str, *extra) -> tuple[float, int]:
    """Run a replay; its wall time and the fusion stage's peak resident memory (kB), sampled."""
    args = [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle), "--out", str(out),
            "--all-messages", "--endpoint", endpoint, "--quiet", "--set", f"stream.subscriber_queue={QUEUE}", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None and time.monotonic() - t0 < 300:
        for pid in [p for p, name in stage_pids(proc.pid).items() if name == "fusion"]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if "VmRSS:" in status:
                peak = max(peak, int(status.split("VmRSS:")[1].split()[0]))
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return time.monotonic() - t0, peak


def test_a_stalled_subscriber_slows_nothing_and_grows_nothing(bundle, tmp_path):
    media = tmp_path / "long.mp4"
    write_media(media, MEDIA_S, video=(160, 120, 5))  # a tone (no speech: the time goes to the stream) and video
    base_s, base_kb = _replay(media, bundle, tmp_path / "base.jsonl", f"tcp://127.0.0.1:{free_port()}")

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # Destroyed whatever happens: a context left to the garbage collector with a socket still
    # open blocks in term() when it is finalised, hanging a later test in this process.
    ctx = zmq.Context()
    listener = None
    try:
        stalled = ctx.socket(zmq.SUB)
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.RCVBUF, 4096)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.connect(endpoint)
        heard = tmp_path / "heard.jsonl"
        listener = subprocess.Popen([sys.executable, "-m", "realtime.cli", "listen", "--endpoint", endpoint,
                                     "--jsonl", str(heard)], stderr=subprocess.PIPE, text=True)
        slow_s, slow_kb = _replay(media, bundle, tmp_path / "slow.jsonl", endpoint, "--wait-subscribers", "2")
        wait_for_status(heard, "finished")  # the listener has taken the last message
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=10) == 0
        stalled_got = []
        while stalled.poll(200):
            stalled_got.append(protocol.decode(stalled.recv_multipart())[1])
    finally:
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait()
        ctx.destroy(linger=0)

    published = [json.loads(l) for l in (tmp_path / "slow.jsonl").read_text().splitlines()]
    assert len(published) > 20 * QUEUE, len(published)  # enough to overflow the stalled subscriber's queue
    # 60 s of messages (~240 kB) fit in the kernel's socket buffers, so the stalled subscriber
    # may hold them all; what bounds a longer session is the socket's queue (the test below).
    # It was there from the start (counted by --wait-subscribers), and what reached it is what
    # was published, in order: messages are dropped whole, never cut or reordered.
    assert stalled_got and stalled_got[0] == published[0], stalled_got[:1]
    assert stalled_got == [published[m["seq"]] for m in stalled_got]
    assert [m["seq"] for m in stalled_got] == sorted({m["seq"] for m in stalled_got})
    listened = [json.loads(l) for l in heard.read_text().splitlines()]
    assert [m["seq"] for m in listened] == [m["seq"] for m in published]
    # Generous bounds that unbounded queuing, or a publisher waiting for its reader, would break.
    assert slow_s < 1.5 * base_s + 10, (slow_s, base_s)
    assert slow_kb < base_kb + 30 * 1024, (slow_kb, base_kb)
    print(f"\nreplay {base_s:.1f} s alone, {slow_s:.1f} s with a stalled subscriber; fusion peak RSS "
          f"{base_kb / 1024:.0f} / {slow_kb / 1024:.0f} MB; stalled subscriber got {len(stalled_got)} of "
          f"{len(published)} messages")


def test_the_stream_drops_for_a_subscriber_past_its_queue():
    """What keeps a stalled subscriber bounded: the public socket drops what would queue past
    [stream] subscriber_queue for it, and never waits.  Far more is sent than the kernel's
    socket buffers hold, to a subscriber that reads nothing until the end."""
    from realtime.config import StreamOptions
    from realtime.security import PublicSocket

    sent, size = 4000, 16 * 1024  # 64 MB: past any loopback socket buffer
    ctx = zmq.Context()
    try:
        public = PublicSocket(ctx, StreamOptions(endpoint=f"tcp://127.0.0.1:{free_port()}", subscriber_queue=QUEUE))
        stalled = ctx.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.RCVBUF, 4096)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.connect(public.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        assert public.sock.poll(10_000) and public.sock.recv() == b"\x01"  # its subscription is in
        t0 = time.monotonic()
        for seq in range(sent):  # NOBLOCK: a publisher that would wait for its reader raises here
            public.sock.send_multipart([b"emotion.window", seq.to_bytes(4, "big") + bytes(size)], zmq.NOBLOCK)
        send_s = time.monotonic() - t0
        got = []
        while stalled.poll(1000):
            got.append(int.from_bytes(stalled.recv_multipart()[1][:4], "big"))
        public.close()
    finally:
        ctx.destroy(linger=0)
    assert got and got[0] == 0, got[:3]  # what it holds came first, whole and in order ...
    assert got == sorted(set(got))
    assert len(got) < sent // 4, len(got)  # ... and the rest was dropped, not kept for it
    assert send_s < 10, send_s
    print(f"\nsent {sent} x {size // 1024} kB in {send_s:.2f} s; the stalled subscriber got {len(got)}")
