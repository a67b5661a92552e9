"""Messages between pipeline stages: a JSON header frame and an optional array frame.

Every header carries `type`, `session`, `seq` (per sender, increasing) and media
times in seconds from session start, so a stage aligns streams by media time,
never by arrival order.  Arrays travel as raw bytes with dtype and shape in the
header (no pickle: a malformed message is a clear error, not code execution).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import zmq

from engines import arrays


logger = logging.getLogger(__name__)

# A 4K BGR frame is 25 MB; a larger frame is not one of ours, and ZeroMQ drops the
# connection of a peer that sends one instead of allocating it.
MAX_FRAME_BYTES = 128 * 1024 * 1024


class MessageError(ValueError):
    """A message that does not follow the internal bus format."""


def send(sock: zmq.Socket, header: dict[str, Any], array: np.ndarray | None = None, flags: int = 0) -> None:
    if array is None:
        sock.send(json.dumps(header).encode(), flags=flags)
        return
    dtype, shape = arrays.spec(array)
    sock.send_multipart([json.dumps(dict(header, dtype=dtype, shape=shape)).encode(), arrays.payload(array)],
                        flags=flags, copy=False)


def send_nowait(sock: zmq.Socket, header: dict[str, Any], array: np.ndarray | None = None) -> None:
    """Send or raise zmq.Again when the queue is full (live sources drop instead of waiting)."""
    send(sock, header, array, flags=zmq.NOBLOCK)


def recv(sock: zmq.Socket) -> tuple[dict[str, Any], np.ndarray | None]:
    frames = sock.recv_multipart()
    return decode(frames)


def decode(frames: list[bytes], kinds: Iterable[str] | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Header and array of a message; MessageError for anything that is not exactly our format.

    With `kinds`, the message must also be one of those types, with every field a stage
    reads present and of the right type, and an array of the dtype and rank that type
    carries: a stage can then use it without checking again.
    """
    if not 1 <= len(frames) <= 2:
        raise MessageError(f"expected 1 or 2 frames (header, array), got {len(frames)}")
    try:
        header = json.loads(frames[0])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise MessageError("header must be a JSON object with a string 'type'")
    array = _array(header, frames[1]) if len(frames) == 2 else None
    if kinds is not None:
        _check(header, array, kinds)
    return header, array


def _array(header: dict, data: bytes) -> np.ndarray:
    try:
        return arrays.decode(header.get("dtype"), header.get("shape"), data, max_rank=4)
    except arrays.ArrayFormatError as exc:
        raise MessageError(str(exc)) from exc


NUMBER = (int, float)


@dataclass(frozen=True)
class Spec:
    """What one message type carries: required and optional fields, and its array if any."""

    fields: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    dtype: str | None = None  # the array's dtype; None: no array
    shape: tuple[int | None, ...] = ()  # None = any size
    array_required: bool = True


_AT = {"session": str, "seq": int, "t": NUMBER}
_GEN = {"gen": int}  # sources: the generation of the processing chain this is for (realtime.framework)
_SPAN = {"session": str, "seq": int, "start": NUMBER, "end": NUMBER}
_ASR_CUT = {"asr_samples": int, "asr_lead": int}
_REPORT = {"stage": str, "pid": int, "time": NUMBER}
SPECS: dict[str, Spec] = {
    "audio": Spec(_AT, optional=_GEN, dtype="float32", shape=(None,)),
    "frame": Spec(_AT, optional=_GEN, dtype="uint8", shape=(None, None, 3)),  # BGR image
    # lost: a live device went away
    "eos": Spec(optional={"session": str, "stream": str, "lost": str, **_GEN}),
    # asr_lead: leading samples from before `start` that only the ASR reads (absent: none);
    # asr_samples: of the utterance's own samples after them, how many the ASR reads (absent: all)
    "utterance": Spec(_SPAN, optional=_ASR_CUT, dtype="float32", shape=(None,)),
    "partial": Spec(_SPAN, optional=_ASR_CUT, dtype="float32", shape=(None,)),
    "speculative": Spec(_SPAN, optional=_ASR_CUT, dtype="float32", shape=(None,)),  # an utterance if its silence holds
    "transcript": Spec({**_SPAN, "text": str, "asr_s": NUMBER}, optional={"early": bool},  # early: speculative
                       dtype="float32", shape=(None,)),
    "partial_transcript": Spec({**_SPAN, "text": str, "asr_s": NUMBER}),
    # segmenter -> asr -> fusion, in replay: every utterance ending at or before t is handed
    # out (StreamingSegmenter.done_until), and, past the ASR, transcribed
    "progress": Spec({"session": str, "t": NUMBER}),
    # Every face of a frame: `faces` (id, box, motion of each) and its crops stacked in that order.
    "face": Spec({**_AT, "found": bool, "faces": list}, optional={"main": (int, type(None)), "frame": list},
                 dtype="uint8", shape=(None, None, None), array_required=False),
    # resume: fusion's state after this message, what a restarted fusion goes on from
    "result": Spec({"body": dict}, optional={"resume": dict}),
    "ready": Spec(_REPORT),
    "heartbeat": Spec(_REPORT),
    "done": Spec(_REPORT, optional={"max_rss_kb": int}),
    "error": Spec({**_REPORT, "message": str}, optional={"traceback": str}),
    # supervisor -> sources: feed generation `gen` again from media time `t`; end of session
    "rewind": Spec({"gen": int, "t": NUMBER}),
    "finish": Spec(),
    # supervisor -> fusion: a status to publish as it is (a live source reopened: `restarted`)
    "status": Spec({"state": str, "detail": str}, optional=_GEN),
}
# What each socket's reader accepts.
AUDIO_IN = ("audio", "eos")  # segmenter
VIDEO_IN = ("frame", "eos")  # faces
UTTERANCES_IN = ("utterance", "partial", "speculative", "progress", "eos")  # asr
FUSION_IN = ("transcript", "partial_transcript", "progress", "audio", "face", "eos", "status")
RESULTS_IN = ("result", "eos")  # supervisor
REPORTS = ("ready", "heartbeat", "done", "error")  # supervisor's control channel


def _check(header: dict, array: np.ndarray | None, kinds: Iterable[str]) -> None:
    kind = header["type"]
    if kind not in kinds:
        raise MessageError(f"unexpected message type {kind!r} here (expected {', '.join(kinds)})")
    spec = SPECS[kind]
    for name, types in (*spec.fields.items(), *spec.optional.items()):
        if name not in header:
            if name in spec.fields:
                raise MessageError(f"{kind} message without {name!r}")
            continue
        value = header[name]
        # bool is an int to Python, and NaN a float: neither is a time or a count.
        if (not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types))
                or (isinstance(value, float) and not math.isfinite(value))):
            raise MessageError(f"{kind} message: {name} = {value!r:.40} has the wrong type")
    if kind == "face":
        _check_faces(header, array)
    if array is None:
        if spec.dtype and spec.array_required or header.get("found") is True:
            raise MessageError(f"{kind} message without its array")
        return
    if spec.dtype is None:
        raise MessageError(f"{kind} message carries an array it should not have")
    if array.dtype != np.dtype(spec.dtype) or len(array.shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(array.shape, spec.shape)):
        raise MessageError(f"{kind} message: array {array.dtype}{list(array.shape)} where "
                           f"{spec.dtype} of rank {len(spec.shape)} belongs")
    if len(spec.shape) > 1 and array.size == 0:
        raise MessageError(f"{kind} message: empty image {list(array.shape)}")


def _check_faces(header: dict, array: np.ndarray | None) -> None:
    """A face message's list matches its crops, and each entry is what fusion reads."""
    faces, main = header["faces"], header.get("main")
    if len(faces) != (0 if array is None else array.shape[0]):
        raise MessageError(f"face message: {len(faces)} faces but {0 if array is None else array.shape[0]} crops")
    for face in faces:
        if (not isinstance(face, dict) or not _is_int_or_none(face.get("id"))
                or not isinstance(face.get("box"), list) or len(face["box"]) != 4
                or not all(_is_int_or_none(v) and v is not None for v in face["box"])
                or not (face.get("motion") is None or isinstance(face["motion"], NUMBER)
                        and not isinstance(face["motion"], bool) and math.isfinite(face["motion"]))):
            raise MessageError(f"face message: malformed face entry {face!r:.60}")
    if main is not None and not 0 <= main < len(faces) or (main is not None) != header["found"]:
        raise MessageError(f"face message: main = {main!r} does not index one of its {len(faces)} faces")


def _is_int_or_none(value) -> bool:
    return value is None or isinstance(value, int) and not isinstance(value, bool)


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


_dropped = {"count": 0}


def recv_checked(sock: zmq.Socket, kinds: Iterable[str], reader: str):
    """The next message if it is well formed and one of `kinds`, else None (dropped and logged).

    A bad message never takes a stage down: internal sockets only hear our own
    processes, so one is a bug or another local program, and either way the
    stream goes on.  Logs the first few drops, then every hundredth.
    """
    frames = sock.recv_multipart()
    try:
        return decode(frames, kinds)
    except MessageError as exc:
        _dropped["count"] += 1
        n = _dropped["count"]
        if n <= 5 or n % 100 == 0:
            logger.warning("realtime %s: dropped a malformed message (%d so far): %s", reader, n, exc)
        return None


def socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool, hwm: int = 1000) -> zmq.Socket:
    """A socket with a bounded queue; linger bounded so shutdown never hangs."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 2000)
    if kind == zmq.PULL:
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock
