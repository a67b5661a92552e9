"""The emotion stream as an outside developer meets it (issue 26): the README's subscribers,
taken from the Markdown as they stand, run against a real replay beside a subscriber to
everything; each topic's `topic_seq` detects loss for a filtered subscriber; a session that
fails ends with `failed` then `finished`; the schema lets later 1.x versions through."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import zmq

from realtime import protocol
from realtime.config import load_config
from realtime.pipeline import replay
from tests.conftest import free_port
from tests.helpers import kill_stage_after_first_utterance, read_messages

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLE = ROOT / "examples" / "subscriber.js"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def code_blocks(language: str) -> list[str]:
    """The code blocks of one language in README.md and docs/*.md, in order."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [code for page in pages for lang, code in FENCE.findall(page.read_text()) if lang == language]


def test_the_examples_tested_are_the_readmes():
    # One Python and one Node.js program: the ones run below; a new one needs a test of its own.
    assert len(code_blocks("python")) == 1
    (js,) = code_blocks("js")
    assert js == NODE_EXAMPLE.read_text()  # the file a reader runs is the one printed
    bodies = [json.loads(b) for b in code_blocks("json") if b.lstrip().startswith('{"protocol"')]
    assert [b["type"] for b in bodies] == ["status", "utterance"]
    for body in bodies:
        jsonschema.validate(body, protocol.schema())
        assert body["protocol"] == protocol.PROTOCOL


def test_a_reader_of_this_version_accepts_what_later_minor_versions_add():
    """A reader that validates with this schema must not reject a 1.4 body: unknown states,
    fields, modalities, face fields and message types pass; a broken known field does not."""
    schema = protocol.schema()
    base = {"protocol": "emotion-stream/1.4", "session": "s", "seq": 7, "topic_seq": 2}
    later = [
        {**base, "type": "status", "state": "paused", "detail": "by the user", "resume_at": 12.5},
        {**base, "type": "window", "start": 0.0, "end": 2.0, "labels": {"joy": 0.5}, "active": [],
         "peers": {"audio": {"joy": 0.4}, "depth": {"joy": 0.1}}, "modalities": ["audio", "depth"],
         "faces": [{"id": 1, "box": [1, 2, 3, 4], "gaze": [0.1, 0.2]}], "timing": {"infer_s": 0.01,
                                                                                     "emitted_at": 1.0}},
        {**base, "type": "gesture", "name": "wave"},  # a new type, on a topic of its own
    ]
    for body in later:
        jsonschema.validate(body, schema)
    # A 1.2 body (no topic_seq, the label list only as `labels`) is still valid.
    jsonschema.validate({"protocol": "emotion-stream/1.2", "type": "status", "session": "s", "seq": 0,
                         "state": "started", "labels": ["joy"]}, schema)
    # Open does not mean unchecked: a known field of the wrong kind still fails.
    for key, value in (("state", 3), ("topic_seq", -1), ("detail", ["no"])):
        wrong = {**later[0], key: value}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    bad_window = copy.deepcopy(later[1])
    bad_window["labels"]["joy"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_window, schema)
    with pytest.raises(jsonschema.ValidationError):  # another major version
        jsonschema.validate({**later[0], "protocol": "emotion-stream/2.0"}, schema)


def test_session_ids_do_not_repeat():
    ids = {protocol.new_session("s000") for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"s000-\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)


class Reader:
    """A SUB socket of the test, subscribed to `topics`, collecting bodies until `finished`."""

    def __init__(self, ctx, endpoint: str, topics: list[str]):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.bodies: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.sock.poll(120_000):
            body = json.loads(self.sock.recv_multipart()[1])
            self.bodies.append(body)
            if body["type"] == "status" and body["state"] == "finished":
                return


def per_topic(bodies: list[dict]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for body in bodies:
        seqs.setdefault(protocol.topic_for(body), []).append(body["topic_seq"])
    return seqs


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js example (examples/subscriber.js) cannot run")
    if not (NODE_EXAMPLE.parent / "node_modules" / "zeromq").is_dir():
        raise AssertionError("examples/node_modules lacks zeromq: run scripts/setup.sh (npm install in examples/)")
    return [node, str(NODE_EXAMPLE)]


def python_example(tmp_path: Path) -> list[str]:
    (code,) = code_blocks("python")
    script = tmp_path / "subscriber.py"
    script.write_text(code)
    return [sys.executable, str(script)]


def test_the_examples_follow_a_replay_beside_a_subscriber_to_everything(bundle, held_out_session, tmp_path):
    node = node_command()
    media = next(held_out_session.glob("*.mp4"))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # The replay counts subscriptions of distinct prefixes (ZeroMQ passes on only a prefix's
    # first): "", "emotion.u" and "stat" (the test's own, so they cannot count for an example's),
    # "emotion.utterance" and "status" (the Python example's), "transcript" (the Node one's).
    config = load_config(None, [f"model.bundle={bundle}", f"stream.endpoint={endpoint}",
                                "stream.wait_subscribers=6", "stream.wait_timeout_s=60"])
    examples = [subprocess.Popen([*command, endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for command in (python_example(tmp_path), node)]
    ctx = zmq.Context()
    try:
        everything = Reader(ctx, endpoint, [""])
        filtered = Reader(ctx, endpoint, ["emotion.u", "stat"])  # prefixes: whole topics all the same
        got: list[dict] = []
        replay(media, config, on_message=got.append)
        outputs = [p.communicate(timeout=30) for p in examples]  # they stop at `finished` by themselves
        for reader in (everything, filtered):
            reader.thread.join(10)
    finally:
        for p in examples:
            if p.poll() is None:
                p.kill()
        ctx.destroy(linger=0)
    for p, (out, err) in zip(examples, outputs):
        assert p.returncode == 0, err
    (py_out, _), (node_out, _) = outputs

    # The subscriber to everything heard what the replay published, seq and every topic_seq
    # without a gap from 0.
    assert everything.bodies == got
    assert [m["seq"] for m in got] == list(range(len(got)))
    for topic, seqs in per_topic(got).items():
        assert seqs == list(range(len(seqs))), topic
    assert {m["type"] for m in got} == {"status", "window", "transcript", "utterance"}
    # One session with an id of this run, the file's name beside it, labels from the bundle.
    started = got[0]
    assert {m["session"] for m in got} == {started["session"]} and started["session"].startswith(media.stem + "-")
    labels = json.loads((bundle / "manifest.json").read_text())["labels"]
    assert started["state"] == "started" and started["source"] == media.name
    assert started["label_names"] == started["labels"] == labels
    assert got[-1]["state"] == "finished"
    for message in got:
        jsonschema.validate(message, protocol.schema())

    # The filtered subscriber got its topics only: its seq has gaps where the others' messages
    # were, and its topic_seq none.
    assert filtered.bodies == [m for m in got if m["type"] in ("utterance", "status")]
    seqs = [m["seq"] for m in filtered.bodies]
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:]))
    assert per_topic(filtered.bodies) == {t: s for t, s in per_topic(got).items() if t in ("emotion.utterance", "status")}

    # The Python example printed each utterance and no loss.
    utterances = [m for m in got if m["type"] == "utterance"]
    assert len(utterances) >= 3
    top = lambda m: max(m["labels"], key=m["labels"].get)
    assert py_out.splitlines() == [f'{m["start"]:.1f}s {top(m)} {m["labels"][top(m)]:.2f} "{m["text"]}"'
                                   for m in utterances]
    # The Node example: every body valid, no loss, transcripts and utterances in order
    # (JavaScript rounds halves up where Python rounds them to even: numbers within 0.05).
    heard = [m for m in got if m["type"] == "utterance" or (m["type"] == "transcript" and m["final"])]
    lines = node_out.splitlines()
    assert len(lines) == len(heard), node_out
    for line, m in zip(lines, heard):
        if m["type"] == "utterance":
            start, label, p, text = re.fullmatch(r'(\S+)s (\S+) (\S+) "(.*)"', line).groups()
            assert label == top(m) and abs(float(p) - m["labels"][label]) <= 0.0051 and text == m["text"], line
        else:
            start, end, text = re.fullmatch(r'(\S+)-(\S+)s heard "(.*)"', line).groups()
            assert abs(float(end) - m["end"]) <= 0.051 and text == m["text"], line
        assert abs(float(start) - m["start"]) <= 0.051, line


def test_a_failed_session_ends_with_failed_then_finished(bundle, held_out_session, tmp_path):
    """The media source dies mid-session with restarts off ([pipeline] max_restarts = 0): the
    replay gives up and says so on the stream, where the README's subscriber stops at the
    `finished` after it."""
    media = next(held_out_session.glob("*.mp4"))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out, log = tmp_path / "out.jsonl", tmp_path / "replay.log"
    example = subprocess.Popen([*python_example(tmp_path), endpoint], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        everything = Reader(ctx, endpoint, [""])
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle),
                 "--out", str(out), "--all-messages", "--realtime", "--endpoint", endpoint,
                 "--wait-subscribers", "3", "--set", "pipeline.max_restarts=0", "--quiet"],
                stdout=subprocess.DEVNULL, stderr=err)
            try:
                kill_stage_after_first_utterance(proc, "source", out, log)
                assert proc.wait(timeout=60) != 0, log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
        py_out, py_err = example.communicate(timeout=30)
        everything.thread.join(10)
    finally:
        if example.poll() is None:
            example.kill()
        ctx.destroy(linger=0)
    assert "stage source failed" in log.read_text()
    assert example.returncode == 0, py_err  # it stopped at `finished`
    lines = py_out.splitlines()  # the utterances before the source died, and no loss
    assert lines and all(re.fullmatch(r'\S+s \S+ \S+ ".*"', line) for line in lines), py_out

    written = read_messages(out)
    statuses = [m for m in written if m["type"] == "status"]
    assert [m["state"] for m in statuses] == ["started", "failed", "finished"]
    assert "stage source failed" in statuses[1]["detail"]
    assert written[-2:] == statuses[1:]  # the last two messages
    # Numbered on from what fusion published, as the subscriber to everything heard them.
    assert everything.bodies == written
    assert [m["seq"] for m in written] == list(range(len(written)))
    assert [m["topic_seq"] for m in statuses] == [0, 1, 2]
    for message in written:
        jsonschema.validate(message, protocol.schema())
