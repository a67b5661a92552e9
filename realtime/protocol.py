"""The public emotion stream: topics, message bodies and their JSON Schema.

Documented in docs/PROTOCOL.md and realtime/schema/emotion-stream-v1.json; any program
with a ZeroMQ binding subscribes with the schema and that page alone.
"""
from __future__ import annotations

import json
import secrets
import time
from functools import lru_cache
from pathlib import Path

# Major version 1, minor 3: minor versions only add optional fields, values of open lists
# and message types (the changelog: docs/PROTOCOL.md, Versions), so a reader of
# major 1 reads them all; check the major version with `compatible`, not the whole string.
PROTOCOL = "emotion-stream/1.3"
MAJOR = "emotion-stream/1"
TOPICS = {
    "utterance": "emotion.utterance",  # fused result at the end of an utterance
    "window": "emotion.window",  # audio + video update between utterances
    "transcript": "transcript",  # what was said, as soon as the ASR has it
    "status": "status",  # session started / finished, a device lost, processing restarted
}
SCHEMA_PATH = Path(__file__).parent / "schema" / "emotion-stream-v1.json"


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def compatible(version) -> bool:
    """Whether a body's `protocol` is of the major version this code reads (1, 1.1, ...)."""
    return isinstance(version, str) and (version == MAJOR or version.startswith(MAJOR + "."))


def validate(body: dict) -> None:
    """Raise jsonschema.ValidationError when body breaks the protocol."""
    import jsonschema

    jsonschema.validate(body, schema())


def new_session(name: str) -> str:
    """A session id no other run repeats: `name` (the replayed file's stem, or `live`), the
    local start time and 6 random hex digits, as in `clip-20260101-120000-3fa9c2`."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def stamp(body: dict, session: str, seq: int, topic_seq: int) -> dict:
    """body with the fields every message starts with (docs/PROTOCOL.md: Sequence numbers and loss)."""
    return {"protocol": PROTOCOL, "session": session, "seq": seq, "topic_seq": topic_seq, **body}


def topic_for(body: dict) -> str:
    return TOPICS[body["type"]]


def encode(body: dict) -> list[bytes]:
    return [topic_for(body).encode(), json.dumps(body, ensure_ascii=False).encode()]


def decode(frames: list[bytes]) -> tuple[str, dict]:
    """Topic and body of a received message; ValueError when malformed."""
    if len(frames) != 2:
        raise ValueError(f"expected 2 frames (topic, body), got {len(frames)}")
    try:
        topic, body = frames[0].decode(), json.loads(frames[1])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"malformed message: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ValueError("malformed message: the body is not a JSON object with a 'type'")
    return topic, body
