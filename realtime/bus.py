"""Messages between pipeline stages: a JSON header frame and an optional array frame.

Every header carries `type`, `session`, `seq` (per sender, increasing) and media
times in seconds from session start, so a stage aligns streams by media time,
never by arrival order.  Arrays travel as raw bytes with dtype and shape in the
header (no pickle: a malformed message is a clear error, not code execution).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import zmq


class MessageError(ValueError):
    """A message that does not follow the internal bus format."""


def send(sock: zmq.Socket, header: dict[str, Any], array: np.ndarray | None = None, flags: int = 0) -> None:
    if array is None:
        sock.send(json.dumps(header).encode(), flags=flags)
        return
    array = np.ascontiguousarray(array)
    header = dict(header, dtype=array.dtype.str, shape=list(array.shape))
    sock.send_multipart([json.dumps(header).encode(), memoryview(array)], flags=flags, copy=False)


def send_nowait(sock: zmq.Socket, header: dict[str, Any], array: np.ndarray | None = None) -> None:
    """Send or raise zmq.Again when the queue is full (live sources drop instead of waiting)."""
    send(sock, header, array, flags=zmq.NOBLOCK)


def recv(sock: zmq.Socket) -> tuple[dict[str, Any], np.ndarray | None]:
    frames = sock.recv_multipart()
    return decode(frames)


def decode(frames: list[bytes]) -> tuple[dict[str, Any], np.ndarray | None]:
    try:
        header = json.loads(frames[0])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or "type" not in header:
        raise MessageError("header must be a JSON object with a 'type'")
    if len(frames) == 1:
        return header, None
    try:
        array = np.frombuffer(frames[1], dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"array frame does not match its header: {exc}") from exc
    return header, array


def socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool, hwm: int = 1000) -> zmq.Socket:
    """A socket with a bounded queue; linger bounded so shutdown never hangs."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 2000)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock
