"""`realtime dashboard` in a real headless Chromium, fed by a real ZeroMQ stream.

The first test publishes protocol messages from the test on a real PUB socket to a
real `realtime dashboard` process; the second watches a real replay, paced at media
speed, through `realtime replay --dashboard`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from realtime import protocol
from tests.browser import chromium, drawn_share, full_page_png
from tests.conftest import free_port
from tests.streams import LABELS, SessionStream

URL = re.compile(r"dashboard on (http://127\.0\.0\.1:\d+/)")


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_url(proc: subprocess.Popen, lines: list[str]) -> str:
    """The page address the command prints; stderr keeps being drained into `lines` after."""
    found = threading.Event()
    address: list[str] = []

    def drain():
        for line in proc.stderr:
            lines.append(line)
            match = URL.search(line)
            if match and not address:
                address.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(120)
    assert address, f"no dashboard address printed: {''.join(lines)}"
    return address[0]


def bars(driver) -> dict[str, tuple[float | None, bool]]:
    """The fused bars as the page shows them: label -> (probability, highlighted)."""
    rows = driver.execute_script("""
        return [...document.querySelectorAll('#bars .bar-row')].map(r =>
            [r.dataset.label, r.dataset.p, r.classList.contains('active'),
             r.querySelector('.bar-fill').style.width]);""")
    return {label: (float(p) if p else None, active) for label, p, active, _ in rows}


def faces_drawn(driver) -> dict:
    """The faces panel as drawn: the SVG's frame, each box's rectangle by face id, the highlighted ids."""
    return driver.execute_script("""
        const svg = document.querySelector('#faces-frame svg');
        const rects = [...document.querySelectorAll('#faces-frame rect.box')];
        return {frame: svg ? svg.dataset.frame : null,
                boxes: Object.fromEntries(rects.map(r => [r.dataset.id,
                    ['x', 'y', 'width', 'height'].map(k => +r.getAttribute(k))])),
                speaking: rects.filter(r => r.classList.contains('speaking')).map(r => r.dataset.id)};""")


def timeline_points(driver) -> int:
    return int(driver.execute_script("return document.getElementById('timeline').dataset.points || 0"))


def screenshot(driver, path: Path) -> bytes:
    png = full_page_png(driver)
    path.write_bytes(png)  # kept in the test's tmp_path, to look at when a check fails
    return png


@pytest.fixture
def publisher():
    """A real PUB socket (XPUB, to see the dashboard subscribe) on a free loopback port."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    yield endpoint, sock
    ctx.destroy(linger=0)


def test_dashboard_draws_the_stream_as_it_arrives(publisher, tmp_path):
    endpoint, pub = publisher
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "dashboard", "--endpoint", endpoint,
                             "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    driver = None
    try:
        url = read_url(proc, log)
        assert pub.poll(20_000), "the dashboard did not subscribe to the stream"
        assert pub.recv()[:1] == b"\x01"
        driver = chromium()
        driver.get(url)
        wait_for(lambda: driver.execute_script("return document.getElementById('connection').dataset.state")
                 == "open", what="the page's WebSocket")
        assert timeline_points(driver) == 0 and all(p is None for p, _ in bars(driver).values())

        stream = SessionStream(faces=True)
        messages = stream.session_messages(utterances=3)
        send = lambda body: pub.send_multipart(protocol.encode(body))
        # First part of the session: the start and the window updates before the first utterance.
        first_utterance = next(i for i, m in enumerate(messages) if m["type"] == "utterance")
        for body in messages[:first_utterance - 1]:
            send(body)
        windows = [m for m in messages[:first_utterance - 1] if m["type"] == "window"]
        wait_for(lambda: timeline_points(driver) == len(windows), what="the window updates on the timeline")
        last = windows[-1]
        # Faces in view before anyone has spoken: both boxes, none highlighted.
        drawn = faces_drawn(driver)
        assert drawn["boxes"] == {str(f["id"]): f["box"] for f in last["faces"]} and drawn["speaking"] == []
        shown = bars(driver)
        assert list(shown) == LABELS
        assert {l: p for l, (p, _) in shown.items()} == last["labels"]
        assert {l for l, (_, on) in shown.items() if on} == set(last["active"])
        # Between utterances only audio and video are present.
        present = driver.execute_script(
            "return [...document.querySelectorAll('#modalities .modality.present')].map(m => m.dataset.modality)")
        assert present == ["audio", "video"]

        # The transcript shows as soon as it is heard, then with its emotions.
        transcript = messages[first_utterance - 1]
        send(transcript)
        wait_for(lambda: transcript["text"] in driver.find_element("id", "transcript").text, what="the transcript")
        assert "scoring" in driver.find_element("id", "transcript").text
        utterance = messages[first_utterance]
        send(utterance)
        wait_for(lambda: bars(driver)["neutral"][0] == utterance["labels"]["neutral"], what="the utterance's bars")
        rows = driver.find_elements("css selector", "#transcript .utterance:not(.heard)")
        assert len(rows) == 1 and utterance["text"] in rows[0].text
        top = max(utterance["labels"], key=utterance["labels"].get)
        assert f"{top} {utterance['labels'][top]:.2f}" in rows[0].text
        present = driver.execute_script(
            "return [...document.querySelectorAll('#modalities .modality.present')].map(m => m.dataset.modality)")
        assert present == ["text", "audio", "video"]
        peer_rows = driver.execute_script(
            "return [...document.querySelectorAll('[data-modality=text] .bar-row')].map(r => +r.dataset.p)")
        assert peer_rows == [utterance["peers"]["text"][l] for l in LABELS]
        latency = driver.find_element("id", "latency").text
        assert f"{utterance['timing']['asr_s'] * 1000:.0f} ms" in latency
        # The faces of the newest window, as boxes in its frame, the utterance's speaker highlighted.
        assert driver.find_element("id", "faces").is_displayed()
        drawn = faces_drawn(driver)
        assert drawn["frame"] == "320x240"
        assert drawn["boxes"] == {str(f["id"]): f["box"] for f in last["faces"]}
        assert drawn["speaking"] == [str(utterance["speaker"])] == ["2"]
        assert f"face {utterance['speaker']}" in rows[0].text

        # The rest of the session.
        for body in messages[first_utterance + 1:]:
            send(body)
        emotional = [m for m in messages if m["type"] in ("utterance", "window")]
        wait_for(lambda: timeline_points(driver) == len(emotional), what="the whole timeline")
        wait_for(lambda: "finished" in driver.find_element("id", "session").text, what="the finished status")
        assert len(driver.find_elements("css selector", "#transcript .utterance")) == 3

        # A page opened after the fact gets the session so far from the server.
        late = chromium()
        try:
            late.get(url)
            wait_for(lambda: timeline_points(late) == len(emotional), what="the late page's timeline")
            assert bars(late) == bars(driver)
        finally:
            late.quit()

        png = screenshot(driver, tmp_path / "dashboard.png")
        assert drawn_share(png) > 0.05, "the dashboard screenshot is (nearly) blank"
        # The timeline's canvas itself has lines on it, not only the page around it.
        canvas = driver.find_element("css selector", "#timeline canvas")
        assert drawn_share(canvas.screenshot_as_png) > 0.03
    finally:
        if driver:
            driver.quit()
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in "".join(log)


def test_dashboard_thread_bridges_zeromq_to_websocket_clients(publisher):
    """The dashboard as `serve --dashboard` runs it: a thread of the command, here with a
    plain WebSocket client (aiohttp's) in place of the page."""
    import asyncio

    import aiohttp

    from realtime.dashboard import DashboardThread

    endpoint, pub = publisher
    dashboard = DashboardThread(endpoint, 0)
    port = dashboard.start()
    assert pub.poll(20_000) and pub.recv()[:1] == b"\x01"
    stream = SessionStream(session="thread")
    early = [stream.started(), stream.window(0.25)]
    later = [stream.window(0.5), stream.finished()]

    async def client() -> list[dict]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as page:
                assert page.status == 200 and "EmotionView" in await page.text()
            async with http.get(f"http://127.0.0.1:{port}/static/vendor/uPlot.iife.min.js") as lib:
                assert lib.status == 200
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                got = [json.loads((await ws.receive(timeout=10)).data) for _ in early]  # sent before we came
                for body in later:
                    pub.send_multipart(protocol.encode(body))
                got += [json.loads((await ws.receive(timeout=10)).data) for _ in later]
                return got

    try:
        for body in early:
            pub.send_multipart(protocol.encode(body))
        time.sleep(0.5)  # the bridge has them before the client connects
        assert asyncio.run(client()) == early + later
    finally:
        dashboard.stop()
    assert not dashboard.thread.is_alive()
    import socket

    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_dashboard_port_in_use_is_a_clear_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "realtime.cli", "dashboard", "--port", str(port),
                                 "--endpoint", f"tcp://127.0.0.1:{free_port()}"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_dashboard_follows_a_realtime_replay(bundle, held_out_session, tmp_path):
    """A real replay at media speed with its dashboard: the page changes while the
    replay runs, and ends showing exactly what was published."""
    truth = [json.loads(l) for l in (held_out_session / "manifest.jsonl").read_text().splitlines()]
    media = held_out_session / truth[0]["file"]
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    driver = chromium()  # first: without a browser the test skips before replaying anything
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle), "--realtime",
         "--dashboard", "--dashboard-port", "0", "--endpoint", f"tcp://127.0.0.1:{free_port()}",
         "--out", str(out), "--all-messages", "--report", str(report), "--quiet"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    try:
        url = read_url(proc, log)
        driver.get(url)
        # Watch the page while the replay runs: points must arrive in several steps.
        seen, bar_states = [], []
        while proc.poll() is None and time.monotonic() - t0 < 240:
            seen.append(timeline_points(driver))
            bar_states.append(json.dumps(bars(driver)))
            time.sleep(0.5)
        final_view = {"points": timeline_points(driver), "bars": bars(driver),
                      "rows": len(driver.find_elements("css selector", "#transcript .utterance")),
                      "faces": faces_drawn(driver)}
        png = screenshot(driver, tmp_path / "replay-dashboard.png")
    finally:
        driver.quit()
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, "".join(log)

    messages = [json.loads(l) for l in out.read_text().splitlines()]
    emotional = [m for m in messages if m["type"] in ("utterance", "window")]
    utterances = [m for m in messages if m["type"] == "utterance"]
    # Paced at media speed: no window update can be published before its media time has
    # passed, so they spread over at least the media time they cover.
    windows = [m for m in messages if m["type"] == "window"]
    media_span = windows[-1]["end"] - windows[0]["end"]
    wall_span = windows[-1]["timing"]["emitted_at"] - windows[0]["timing"]["emitted_at"]
    assert wall_span >= media_span - 0.2, (wall_span, media_span)
    assert elapsed >= media_span
    growth = sorted(set(n for n in seen if 0 < n < len(emotional)))
    assert len(growth) >= 3, f"the timeline did not grow while the replay ran: {seen}"
    assert len(set(bar_states)) >= 3, "the bars did not change while the replay ran"
    assert final_view["points"] == len(emotional)
    assert final_view["rows"] == len(utterances) == len(truth)
    last = max(emotional, key=lambda m: m["seq"])
    assert {l: p for l, (p, _) in final_view["bars"].items()} == last["labels"]
    assert {l for l, (_, on) in final_view["bars"].items() if on} == set(last["active"])
    assert drawn_share(png) > 0.05
    # The real face video's faces, boxed in the frame the faces stage read.
    last_window = max(windows, key=lambda m: m["seq"])
    assert last_window["faces"], "the held-out video's face was not tracked"
    assert final_view["faces"]["frame"] == "{}x{}".format(*last_window["frame"])
    assert final_view["faces"]["boxes"] == {str(f["id"]): f["box"] for f in last_window["faces"]}

    # --report wrote the session's page from the same messages.
    page = report.read_text()
    for u in utterances:
        assert json.dumps(u["text"], ensure_ascii=False)[1:-1].replace("</", "<\\/") in page
