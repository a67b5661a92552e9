"""Internal bus and public protocol: real sockets, malformed input is a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

from realtime import bus, protocol


def test_array_roundtrip_between_sockets(tmp_path):
    ctx = zmq.Context()
    try:
        pull = bus.socket(ctx, zmq.PULL, f"ipc://{tmp_path}/x", bind=True)
        push = bus.socket(ctx, zmq.PUSH, f"ipc://{tmp_path}/x", bind=False)
        frame = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
        bus.send(push, {"type": "frame", "t": 1.5}, frame)
        bus.send(push, {"type": "eos"})
        header, array = bus.recv(pull)
        assert header["t"] == 1.5 and np.array_equal(array, frame)
        assert bus.recv(pull) == ({"type": "eos"}, None)
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("frames", [[b"\xff"], [b"[1]"], [b'{"type": "a", "dtype": "<f4", "shape": [3]}', b"12"]])
def test_malformed_bus_messages_raise(frames):
    with pytest.raises(bus.MessageError):
        bus.decode(frames)


def test_protocol_roundtrip_and_schema():
    body = {"protocol": protocol.PROTOCOL, "type": "status", "session": "s", "seq": 0, "state": "started"}
    topic, back = protocol.decode(protocol.encode(body))
    assert topic == "status" and back == body
    protocol.validate(body)
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        protocol.validate(dict(body, seq=-1))
    with pytest.raises(ValueError):
        protocol.decode([b"status"])
