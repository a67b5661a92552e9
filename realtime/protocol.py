"""The public emotion stream: topics, message bodies and their JSON Schema.

Documented in README.md and realtime/schema/emotion-stream-v1.json; any program
with a ZeroMQ binding subscribes with the schema and the README alone.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# Major version 1, minor 2: minor versions only add optional fields (1.1: the utterance's
# `speaker`, the window's `faces`; 1.2: the window's `frame`), so a reader of major 1 reads them all; check the
# major version with `compatible`, not the whole string.
PROTOCOL = "emotion-stream/1.2"
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
