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


# --- malformed input never crashes a reader -------------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(["type", "session", "seq", "t", "start", "end", "text", "asr_s", "found",
                                "stream", "body", "stage", "pid", "time", "message", "dtype", "shape"])
_headers = st.dictionaries(_field_names, _json | st.sampled_from(sorted(bus.SPECS)) | st.sampled_from(
    ["<f4", "|u1", "<f8", "O", "V8", "<U4", "S3", "i9", "f4,f4", "f1", ">b8", "=u2"]), max_size=10)
_ALL_KINDS = tuple(bus.SPECS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.binary(max_size=64), min_size=0, max_size=3))
def test_decoder_survives_random_frames(frames):
    _decode_or_message_error(frames)
    try:  # the public stream's decoder, as `realtime listen` uses it
        protocol.decode(frames)
    except ValueError:
        pass


def test_deeply_nested_json_is_a_clear_error():
    with pytest.raises(bus.MessageError):
        bus.decode([b"[" * 100_000 + b"]" * 100_000])
    with pytest.raises(ValueError):
        protocol.decode([b"status", b"[" * 100_000 + b"]" * 100_000])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_headers, data=st.none() | st.binary(max_size=96))
def test_decoder_survives_near_valid_messages(header, data):
    """Headers made of the real field names, types and dtypes, with wrong values and arrays."""
    import json

    frames = [json.dumps(header).encode()] + ([] if data is None else [data])
    result = _decode_or_message_error(frames)
    if result is not None:
        checked, array = result
        spec = bus.SPECS[checked["type"]]
        assert all(name in checked for name in spec.fields)
        if array is not None:
            assert array.dtype == np.dtype(spec.dtype) and array.ndim == len(spec.shape)


def _decode_or_message_error(frames):
    """The one allowed failure is MessageError; a valid message decodes the same with or without kinds."""
    for kinds in (None, _ALL_KINDS):
        try:
            header, array = bus.decode(frames, kinds)
        except bus.MessageError:
            continue
        if kinds is not None:
            return header, array
    return None


def test_valid_messages_pass_the_check():
    audio = np.zeros(512, np.float32)
    frames = [b'{"type": "audio", "session": "s", "seq": 0, "t": 0.5, "dtype": "<f4", "shape": [512]}',
              audio.tobytes()]
    header, array = bus.decode(frames, bus.AUDIO_IN)
    assert header["t"] == 0.5 and array.shape == (512,)
    for bad in ([b'{"type": "frame", "session": "s", "seq": 0, "t": 0.5}'],  # right shape, wrong socket
                [b'{"type": "audio", "session": "s", "seq": 0, "t": NaN, "dtype": "<f4", "shape": [512]}',
                 audio.tobytes()],
                [b'{"type": "audio", "session": "s", "seq": true, "t": 1, "dtype": "<f4", "shape": [512]}',
                 audio.tobytes()],
                [b'{"type": "audio", "session": "s", "seq": 0, "t": 1, "dtype": "<f8", "shape": [256]}',
                 audio.tobytes()],
                [b'{"type": "audio", "session": "s", "seq": 0, "t": 1}']):  # no samples
        with pytest.raises(bus.MessageError):
            bus.decode(bad, bus.AUDIO_IN)


def test_a_stage_drops_garbage_and_keeps_working(tmp_path):
    """The faces stage, a real process: garbage on its PULL socket is dropped, real frames still flow."""
    import functools
    import multiprocessing
    import os

    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from realtime.framework import Endpoints, run_stage
    from realtime.stages import faces

    endpoints = Endpoints.in_dir(str(tmp_path))
    ctx = zmq.Context()
    try:
        control = bus.socket(ctx, zmq.PULL, endpoints.control, bind=True)
        crops = bus.socket(ctx, zmq.PULL, endpoints.fusion, bind=True)
        body = functools.partial(faces.faces, face_options=FaceOptions(), preprocessing=Preprocessing())
        proc = multiprocessing.get_context("spawn").Process(
            target=run_stage, args=("faces", body, endpoints, 16, os.getpid()), daemon=True)
        proc.start()
        _wait_report(control, "ready", timeout_s=60)

        garbage = bus.socket(ctx, zmq.PUSH, endpoints.video, bind=False)
        for frames in ([b"\xff\xfe"], [b"[1, 2]"], [b"{}"], [b"{\"type\": 3}"], [b"a", b"b", b"c"],
                       [b'{"type": "frame", "session": "s", "seq": 0, "t": 0}'],  # no image
                       [b'{"type": "frame", "session": "s", "seq": 0, "t": 0, "dtype": "<f4", "shape": [2, 2, 3]}',
                        bytes(48)],  # floats, not a BGR image
                       [b'{"type": "frame", "session": "s", "seq": 0, "t": 0, "dtype": "|u1", "shape": [0, 0, 3]}',
                        b""],
                       [b'{"type": "frame", "session": "s", "seq": 0, "t": 0, "dtype": "O", "shape": [1]}', bytes(8)],
                       [b'{"type": "audio", "session": "s", "seq": 0, "t": 0, "dtype": "<f4", "shape": [4]}',
                        bytes(16)],  # a real message type, for another stage
                       [b'{"type": "eos", "session": 7}']):
            garbage.send_multipart(frames)
        # Larger than any frame of ours: ZeroMQ drops the sender's connection instead of reading it.
        oversized = bus.socket(ctx, zmq.PUSH, endpoints.video, bind=False)
        oversized.send_multipart([b'{"type": "frame"}', bytes(bus.MAX_FRAME_BYTES + 1)])

        feeder = bus.socket(ctx, zmq.PUSH, endpoints.video, bind=False)
        image = np.full((48, 64, 3), 128, np.uint8)
        bus.send(feeder, {"type": "frame", "session": "s", "seq": 1, "t": 0.2}, image)
        bus.send(feeder, {"type": "eos", "session": "s"})
        assert crops.poll(30_000), "the stage sent nothing after the garbage"
        header, _ = bus.recv(crops)
        assert header["type"] == "face" and header["t"] == 0.2 and header["found"] is False
        assert crops.poll(10_000) and bus.recv(crops)[0]["type"] == "eos"
        _wait_report(control, "done", timeout_s=10)
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        ctx.destroy(linger=0)


def _wait_report(control, state: str, timeout_s: float) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if control.poll(200):
            report, _ = bus.recv(control)
            assert report["type"] != "error", report
            if report["type"] == state:
                return report
    raise AssertionError(f"no {state!r} report from the stage in {timeout_s} s")


def test_face_messages_must_list_one_entry_per_crop():
    import json

    crops = np.zeros((2, 8, 8), np.uint8)
    face = lambda i: {"id": i, "box": [0, 0, 8, 8], "motion": None}
    header = {"type": "face", "session": "s", "seq": 0, "t": 0.2, "found": True, "main": 0}

    def message(h, a=crops):
        if a is None:
            return [json.dumps(h).encode()]
        return [json.dumps(dict(h, dtype="|u1", shape=list(a.shape))).encode(), a.tobytes()]

    checked, array = bus.decode(message(dict(header, faces=[face(1), face(None)])), bus.FUSION_IN)
    assert array.shape == (2, 8, 8) and checked["faces"][1]["id"] is None
    none_found = dict(header, found=False, main=None, faces=[])
    assert bus.decode(message(none_found, None), bus.FUSION_IN)[1] is None
    for bad in (dict(header, faces=[face(1)]),  # two crops, one entry
                dict(header, faces=[face(1), dict(face(2), box=[0, 0, 8])]),
                dict(header, faces=[face(1), dict(face(2), id="2")]),
                dict(header, faces=[face(1), dict(face(2), motion=float("nan"))]),
                dict(header, faces=[face(1), face(2)], main=2),  # no third face
                dict(header, faces=[face(1), face(2)], found=False)):  # found says there is no main face
        with pytest.raises(bus.MessageError, match="face message"):
            bus.decode(message(bad), bus.FUSION_IN)
