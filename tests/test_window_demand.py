"""Window updates are scored only for someone: the caller's results, or a subscriber whose
topic covers `emotion.window`.  Real replays of a held-out session through real processes,
with real SUB sockets on the public stream."""
from __future__ import annotations

import json
import threading

import zmq

from realtime.config import load_config
from realtime.pipeline import replay
from tests.conftest import free_port

UTTERANCES_ONLY = ("utterance", "status")
# Messages of different types interleave by arrival, so their order and seq may differ
# between runs; each type's messages, in order, may not.
strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "seq", "session")}


def by_type(messages, *types) -> dict[str, list[dict]]:
    return {t: [strip(m) for m in messages if m["type"] == t] for t in types}


def _replay(media, bundle, topic: bytes | None = None, types=UTTERANCES_ONLY):
    """(what the caller's on_message got, what a subscriber to `topic` heard) of one replay."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = load_config(None, [f"model.bundle={bundle}", f"stream.endpoint={endpoint}",
                                f"stream.wait_subscribers={int(topic is not None)}"])
    got, heard = [], []
    ctx = zmq.Context()
    try:
        listener = None
        if topic is not None:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.connect(endpoint)
            done = threading.Event()

            def listen():
                while not done.is_set() or sub.poll(200):
                    if sub.poll(100):
                        heard.append(json.loads(sub.recv_multipart()[1]))

            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
        replay(media, config, on_message=got.append, on_message_types=types)
        if listener is not None:
            done.set()
            listener.join(10)
    finally:
        ctx.destroy(linger=0)
    return got, heard


def test_window_updates_are_scored_only_while_someone_wants_them(bundle, held_out_session):
    media = next(held_out_session.glob("*.mp4"))
    everything, _ = _replay(media, bundle, types=None)  # on_message reads every type
    windows = [m for m in everything if m["type"] == "window"]
    assert len(windows) > 20  # 4 a second of media

    # Nobody reads windows: none is published (the caller's copy holds everything published),
    # the other messages are the same, and seq counts what was published, without a gap.
    alone, _ = _replay(media, bundle)
    assert not [m for m in alone if m["type"] == "window"]
    kept = ("utterance", "transcript", "status")
    assert by_type(alone, *kept) == by_type(everything, *kept)
    assert [m["seq"] for m in alone] == list(range(len(alone)))

    # A subscriber to window updates alone gets every one, as the caller that wanted them did.
    got, heard = _replay(media, bundle, topic=b"emotion.window")
    assert [strip(m) for m in heard] == [strip(m) for m in windows]
    assert by_type(got, "window", *kept) == by_type(everything, "window", *kept)  # the caller's copy too

    # A subscriber to utterances only asks for none.
    got, heard = _replay(media, bundle, topic=b"emotion.utterance")
    assert heard and {m["type"] for m in heard} == {"utterance"}
    assert not [m for m in got if m["type"] == "window"]
