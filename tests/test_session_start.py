"""A subscriber that joins after the session began still learns how it began: the fusion
stage sends its `started` status again once a subscriber that hears status messages joins,
and a restarted fusion its `restarted` status likewise.  Real `realtime replay --realtime`
processes, real SUB sockets, a real SIGKILL."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from tests.conftest import free_port
from tests.helpers import kill_stage_after_first_utterance, read_messages, write_media


class Subscriber:
    """A SUB socket to everything on `endpoint`, read by a thread until `stop`."""

    def __init__(self, endpoint: str):
        self.heard: list[dict] = []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.done.is_set():
            if self.sock.poll(100):
                self.heard.append(json.loads(self.sock.recv_multipart()[1]))

    def wait_for(self, state: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(m.get("state") == state for m in self.heard) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> list[dict]:
        self.done.set()
        self.thread.join(10)
        self.ctx.destroy(linger=0)
        return self.heard


def _replay(media: Path, bundle, out: Path, log, endpoint: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle),
                             "--out", str(out), "--all-messages", "--realtime", "--endpoint", endpoint, "--quiet",
                             *extra], stdout=subprocess.DEVNULL, stderr=log)


def _statuses(messages: list[dict]) -> list[str]:
    return [m["state"] for m in messages if m["type"] == "status"]


def test_a_subscriber_joining_after_the_start_hears_started_first(bundle, tmp_path):
    media, out, log = tmp_path / "tone.mp4", tmp_path / "out.jsonl", tmp_path / "replay.log"
    write_media(media, 6.0, video=(160, 120, 5))  # window updates all along (no speech needed)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with log.open("w") as err:
        proc = _replay(media, bundle, out, err, endpoint)
        subscriber = None
        try:
            # Join once the session has published past its start (to nobody).
            deadline = time.monotonic() + 120
            while len(read_messages(out)) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            subscriber = Subscriber(endpoint)
            assert proc.wait(timeout=120) == 0, log.read_text()
            subscriber.wait_for("finished")
        finally:
            if proc.poll() is None:
                proc.kill()
            heard = subscriber.stop() if subscriber else []
    published = read_messages(out)
    assert len(published) > 10 and heard, (len(published), len(heard))
    # Its first message is the session's start, as published (seq 0: it knows what it missed) ...
    assert heard[0] == published[0] and published[0]["state"] == "started", heard[0]
    # ... then what came after it joined, each message once, as published.
    rest = heard[1:]
    assert rest and rest == [published[m["seq"]] for m in rest]
    assert [m["seq"] for m in rest] == sorted({m["seq"] for m in rest}) and rest[0]["seq"] > 1
    assert _statuses(heard) == ["started", "finished"]


def test_a_restarted_fusion_tells_its_reconnected_subscribers(bundle, held_out_session, tmp_path):
    media = next(held_out_session.glob("*.mp4"))
    out, log = tmp_path / "out.jsonl", tmp_path / "replay.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    subscriber = Subscriber(endpoint)
    try:
        with log.open("w") as err:
            proc = _replay(media, bundle, out, err, endpoint, "--wait-subscribers", "1")
            try:
                kill_stage_after_first_utterance(proc, "fusion", out, log)
                assert proc.wait(timeout=240) == 0, log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
        subscriber.wait_for("finished")
    finally:
        heard = subscriber.stop()
    published = read_messages(out)
    assert _statuses(published) == ["started", "restarted", "finished"]
    # The subscriber reconnected by itself to the new fusion stage, and heard it say so.
    assert _statuses(heard) == ["started", "restarted", "finished"], _statuses(heard)
    restarted = next(m for m in published if m.get("state") == "restarted")
    assert restarted in heard
    assert [m["seq"] for m in heard] == sorted({m["seq"] for m in heard})  # each once, in order
