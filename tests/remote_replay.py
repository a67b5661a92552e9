"""A replay through a remote backend (Triton, the inference service) against the same replay on
local ONNX Runtime: the CLI as a user runs it, every scored message compared."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import free_port


def replay(media, bundle, out, *extra) -> list[dict]:
    """Every message `realtime replay` publishes for `media` (--all-messages)."""
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle), "--out", str(out),
         "--all-messages", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet", *extra],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def largest_difference(remote: list[dict], local: list[dict]) -> float:
    """Asserts both replays scored the same utterances and windows, with the same texts,
    modalities, labels and peers; returns the largest difference of any probability."""
    def scored(messages):
        return {(m["type"], m["start"], m["end"]): m for m in messages if m["type"] in ("utterance", "window")}

    def flat(message: dict, field: str) -> dict:
        if field == "labels":
            return message["labels"]
        return {(peer, label): v for peer, row in message["peers"].items() for label, v in row.items()}

    remote, local = scored(remote), scored(local)
    assert remote.keys() == local.keys()
    assert sum(t == "utterance" for t, _, _ in local) >= 2 and sum(t == "window" for t, _, _ in local) >= 10
    worst = 0.0
    for key, want in local.items():
        got = remote[key]
        assert got.get("text") == want.get("text") and got["modalities"] == want["modalities"]
        for field in ("labels", "peers"):
            assert flat(got, field).keys() == flat(want, field).keys()
            worst = max(worst, *(abs(flat(got, field)[k] - v) for k, v in flat(want, field).items()))
    return worst
