"""`realtime report`: a finished session's JSONL -> one self-contained HTML page,
checked in a real headless Chromium that cannot reach any network."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from realtime.report import summarize
from tests.browser import chromium, drawn_share, full_page_png
from tests.streams import LABELS, SessionStream

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def write_jsonl(path: Path, messages: list[dict]) -> Path:
    path.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))
    return path


def make_bundle(path: Path, card: str | None) -> Path:
    """A bundle as far as the report reads it: a manifest with its files' sha256 (written
    by the exporter's own write_manifest) and, if given, a card.json with that summary."""
    from engines.bundle import write_manifest
    from engines.card import CARD_VERSION

    path.mkdir()
    if card is not None:
        (path / "card.json").write_text(json.dumps({"card_version": CARD_VERSION, "labels": LABELS,
                                                    "summary": card}))
    write_manifest(path, {"labels": LABELS, "thresholds": [0.5, 0.4, 0.45, 0.5, 0.3], "preprocessing": {},
                          "precision": "fp32", "graphs": {}})
    return path


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    # view.js draws on the next animation frame.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if driver.execute_script("return document.getElementById('timeline').dataset.points !== undefined"):
            return
        time.sleep(0.1)
    raise AssertionError("the report's timeline was never drawn")


def test_report_is_self_contained_and_renders_offline(tmp_path):
    stream = SessionStream(session="call-42")
    messages = stream.session_messages(utterances=4)
    # A transcript that would end the page's script early if it were pasted in raw.
    hostile = "</script><script>document.title='pwned'</script> & <b>bold</b>"
    for m in messages:
        if m["type"] in ("transcript", "utterance") and m["start"] == messages[-2]["start"]:
            m["text"] = hostile
    jsonl = write_jsonl(tmp_path / "out.jsonl", messages)
    card = "Student v3 on MELD + synthetic; weighted F1 0.59 on MELD test."
    bundle = make_bundle(tmp_path / "bundle", card)
    page = tmp_path / "report.html"
    result = report(jsonl, "--html", page, "--model", bundle)
    assert result.returncode == 0, result.stderr
    assert "call-42" in result.stderr

    html = page.read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert not re.search(r"<(?:link|img|iframe)\b|<script[^>]*\ssrc=", html, re.I), "the page loads a file"

    driver = chromium(offline=True)
    try:
        open_page(driver, page)
        assert driver.title == "Session report: call-42"
        # Nothing was fetched: every script and style is inline.
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        emotional = [m for m in messages if m["type"] in ("utterance", "window")]
        utterances = [m for m in messages if m["type"] == "utterance"]
        assert int(driver.execute_script("return document.getElementById('timeline').dataset.points")) \
            == len(emotional)
        rows = driver.find_elements("css selector", "#transcript .utterance")
        assert len(rows) == len(utterances)
        assert hostile in rows[-1].text  # shown as text, not run
        for row, utt in zip(rows, utterances):
            for label in utt["active"]:
                assert f"{label} {utt['labels'][label]:.2f}" in row.text
        assert driver.find_element("id", "model-summary").text == card
        table = driver.find_elements("css selector", "#summary tbody tr")
        assert [r.get_attribute("data-label") for r in table] == LABELS
        summary = summarize(messages)
        neutral = next(r for r in summary["labels"] if r["label"] == "neutral")
        assert f"{neutral['mean']:.2f}" in table[0].text and f"{100 * neutral['active_share']:.0f} %" in table[0].text
        assert "ms" in driver.find_element("id", "latency").text

        png = full_page_png(driver)
        (tmp_path / "report.png").write_bytes(png)
        assert drawn_share(png) > 0.05, "the report screenshot is (nearly) blank"
        assert drawn_share(driver.find_element("css selector", "#timeline canvas").screenshot_as_png) > 0.03
    finally:
        driver.quit()


def test_report_of_utterances_only_shows_the_manifest_labels(tmp_path):
    """`replay --out` without --all-messages writes utterance lines only; a bundle without
    card.json is described by its labels and thresholds."""
    messages = [m for m in SessionStream(seed=3).session_messages(utterances=3) if m["type"] == "utterance"]
    jsonl = write_jsonl(tmp_path / "out.jsonl", messages)
    page = tmp_path / "report.html"
    result = report(jsonl, "--html", page, "--model", make_bundle(tmp_path / "bundle", card=None))
    assert result.returncode == 0, result.stderr
    driver = chromium(offline=True)
    try:
        open_page(driver, page)
        labels = driver.find_element("id", "model-labels").text
        assert "neutral (threshold 0.50)" in labels and "surprise (threshold 0.30)" in labels
        assert int(driver.execute_script("return document.getElementById('timeline').dataset.points")) == 3
        assert len(driver.find_elements("css selector", "#transcript .utterance")) == 3
        # No window updates: the table has no column for them.
        assert "between utterances" not in driver.find_element("id", "summary").text
        # Nor status messages: the page cannot tell whether the session finished, and does not say.
        assert "not finished" not in driver.find_element("id", "facts").text
    finally:
        driver.quit()


def test_summary_numbers():
    messages = SessionStream(seed=7).session_messages(utterances=5)
    utterances = [m for m in messages if m["type"] == "utterance"]
    windows = [m for m in messages if m["type"] == "window"]
    summary = summarize(messages)
    assert summary["utterances"] == 5 and summary["windows"] == len(windows) and summary["finished"]
    assert summary["duration_s"] == utterances[-1]["end"]
    for row in summary["labels"]:
        label = row["label"]
        probs = [u["labels"][label] for u in utterances]
        assert row["mean"] == pytest.approx(sum(probs) / 5)
        assert row["max"] == max(probs)
        assert row["active_share"] == sum(label in u["active"] for u in utterances) / 5
        assert row["window_mean"] == pytest.approx(sum(w["labels"][label] for w in windows) / len(windows))


def test_a_file_of_several_sessions_reports_one(tmp_path):
    """`listen --jsonl` appends: the last session by default, another with --session."""
    first = SessionStream(session="morning", seed=1).session_messages(utterances=2)
    second = SessionStream(session="evening", seed=2).session_messages(utterances=3)
    jsonl = write_jsonl(tmp_path / "heard.jsonl", first + second)
    page = tmp_path / "r.html"
    result = report(jsonl, "--html", page)
    assert result.returncode == 0, result.stderr
    assert "2 sessions" in result.stderr and "evening" in result.stderr
    assert "Session report: evening" in page.read_text()
    result = report(jsonl, "--html", page, "--session", "morning")
    assert result.returncode == 0 and "Session report: morning" in page.read_text()
    result = report(jsonl, "--html", page, "--session", "noon")
    assert result.returncode == 2 and "morning, evening" in result.stderr


@pytest.mark.parametrize("content, message", [
    ('{"protocol": "emotion-stream/1", "type": "status", "session": "s", "seq": 0, "state": "started"}\n{oops\n',
     ":2: not JSON"),
    ('{"hello": "world"}\n', ":1: not an emotion-stream/1 message"),
    ("", "holds no messages"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, message):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(content)
    result = report(jsonl, "--html", tmp_path / "r.html")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_bundle_without_manifest_is_a_clear_error(tmp_path):
    jsonl = write_jsonl(tmp_path / "out.jsonl", SessionStream().session_messages(utterances=1))
    (tmp_path / "empty").mkdir()
    result = report(jsonl, "--html", tmp_path / "r.html", "--model", tmp_path / "empty")
    assert result.returncode == 2
    assert "manifest.json: missing" in result.stderr and "Traceback" not in result.stderr


def test_a_card_edited_after_export_is_refused(tmp_path):
    """The card is hash-checked like the rest of the bundle: a report never shows a
    summary that the export did not write."""
    jsonl = write_jsonl(tmp_path / "out.jsonl", SessionStream().session_messages(utterances=1))
    bundle = make_bundle(tmp_path / "bundle", card="honest summary")
    (bundle / "card.json").write_text(json.dumps({"card_version": 1, "summary": "better numbers"}))
    result = report(jsonl, "--html", tmp_path / "r.html", "--model", bundle)
    assert result.returncode == 2
    assert "card.json" in result.stderr and "sha256" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_replay_report_into_a_missing_folder_is_refused_before_replaying(tmp_path):
    result = subprocess.run([sys.executable, "-m", "realtime.cli", "replay", str(tmp_path / "s.mp4"),
                             "--model", str(tmp_path), "--report", str(tmp_path / "nowhere" / "r.html")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no such folder" in result.stderr and "Traceback" not in result.stderr
