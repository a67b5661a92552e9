"""`realtime report`: one finished session as a self-contained HTML page.

Reads the JSONL that `realtime replay --out` (utterances; with `--all-messages`
window updates, transcripts and status too) or `realtime listen --jsonl` wrote.
The page inlines its CSS, the vendored uPlot and the dashboard's own drawing code
(`realtime/web/view.js`) with the messages, so it opens anywhere with no network
and draws the same timeline, transcript and latency panels as the live dashboard;
the per-label summary and the model (its card's summary) are written here, in plain HTML.
"""
from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

from common.errors import UserError
from realtime import protocol

WEB = Path(__file__).parent / "web"
KINDS = ("utterance", "window", "transcript", "status")


class ReportError(UserError, ValueError):
    """Input the report cannot be made from; the message says what and where."""


def read_messages(path: str | Path, session: str | None = None) -> tuple[list[dict], list[str]]:
    """The messages of one session (default: the file's last) and every session's name, in order.

    `listen --jsonl` appends, so one file may hold several sessions."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    messages: list[dict] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(body, dict) or not protocol.compatible(body.get("protocol")) or body.get("type") not in KINDS:
            raise ReportError(f"{path}:{number}: not an {protocol.MAJOR} message")
        messages.append(body)
    sessions = list(dict.fromkeys(m["session"] for m in messages))
    if not sessions:
        raise ReportError(f"{path}: holds no messages")
    chosen = session if session is not None else sessions[-1]
    if chosen not in sessions:
        raise ReportError(f"{path}: no session {chosen!r} (it holds {', '.join(sessions)})")
    return [m for m in messages if m["session"] == chosen], sessions


def label_order(messages: list[dict]) -> list[str]:
    """The model's label order: from the `started` status when present, else first seen."""
    for m in messages:
        if m["type"] == "status" and (names := m.get("label_names") or m.get("labels")):  # labels: before 1.3
            return list(names)
    order: dict[str, None] = {}
    for m in messages:
        order.update(dict.fromkeys(m.get("labels", {})))
    return list(order)


def summarize(messages: list[dict]) -> dict:
    """Per label: mean and max fused probability over utterances, share of utterances where
    it was active, and the mean between utterances (window updates) when the file has them."""
    utterances = [m for m in messages if m["type"] == "utterance"]
    windows = [m for m in messages if m["type"] == "window"]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    rows = []
    for label in label_order(messages):
        probs = [u["labels"][label] for u in utterances if label in u["labels"]]
        rows.append({
            "label": label,
            "mean": mean(probs),
            "max": max(probs) if probs else None,
            "active_share": (sum(label in u["active"] for u in utterances) / len(utterances)) if utterances else None,
            "window_mean": mean([w["labels"][label] for w in windows if label in w["labels"]]),
        })
    emotional = [m for m in messages if m["type"] in ("utterance", "window")]
    statuses = [m for m in messages if m["type"] == "status"]
    return {
        "session": messages[0]["session"],
        "utterances": len(utterances),
        "windows": len(windows),
        "duration_s": max((m["end"] for m in emotional + [m for m in messages if m["type"] == "transcript"]),
                          default=0.0),
        # None: the file has no status messages (replay --out without --all-messages) to tell.
        "finished": (any(m["state"] == "finished" for m in statuses) if statuses else None),
        "labels": rows,
    }


def model_card(bundle: str | Path | None) -> dict | None:
    """What the page says about the model: its card's one-line summary when the bundle has
    a card (engines.card, hash-checked like every file of the bundle), else the manifest's
    labels and thresholds; None without a bundle. A bad bundle raises BundleError."""
    from engines.bundle import open_bundle
    from engines.card import read_card, summary_line

    if bundle is None or str(bundle) == "":
        return None
    opened = open_bundle(bundle)
    card = read_card(opened)
    if card is not None:
        return {"bundle": str(opened.path), "summary": card.get("summary") or summary_line(card)}
    return {"bundle": str(opened.path), "labels": opened.labels, "thresholds": opened.thresholds}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _summary_table(summary: dict, colors: list[str]) -> str:
    has_windows = summary["windows"] > 0
    head = ("<tr><th>label</th><th>mean probability (utterances)</th><th class=num>max</th>"
            "<th>active in utterances</th>" + ("<th class=num>mean between utterances</th>" if has_windows else "")
            + "</tr>")
    rows = []
    for i, row in enumerate(summary["labels"]):
        color = colors[i % len(colors)]
        bar = lambda x: (f'<span class="inline-bar" style="width:{120 * (x or 0):.0f}px;background:{color}"></span>'
                         f"{_fmt(x)}")
        share = "–" if row["active_share"] is None else (
            f'<span class="inline-bar" style="width:{120 * row["active_share"]:.0f}px;background:#e8c35a"></span>'
            f'{100 * row["active_share"]:.0f} %')
        rows.append(f'<tr data-label="{html.escape(row["label"])}"><td>{html.escape(row["label"])}</td>'
                    f'<td>{bar(row["mean"])}</td><td class=num>{_fmt(row["max"])}</td><td>{share}</td>'
                    + (f'<td class=num>{_fmt(row["window_mean"])}</td>' if has_windows else "") + "</tr>")
    return f"<table id=summary><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _card_html(card: dict | None) -> str:
    if card is None:
        return '<p class="caption">No model bundle given (realtime report --model BUNDLE shows its card).</p>'
    where = f'<p class="caption">bundle: {html.escape(card["bundle"])}</p>'
    if "summary" in card:
        return where + f'<div class="model-card" id="model-summary">{html.escape(card["summary"])}</div>'
    pairs = ", ".join(f"{html.escape(l)}" + (f" (threshold {t:.2f})" if isinstance(t, (int, float)) else "")
                      for l, t in zip(card["labels"], card["thresholds"] + [None] * len(card["labels"])))
    return where + f'<p id="model-labels">Labels: {pairs}</p>'


def _script_safe(text: str) -> str:
    # Inside <script>, only "</" can end the element early; "<\/" means the same to JS.
    return text.replace("</", "<\\/")


def palette() -> list[str]:
    """The label colours of view.js, so the summary table matches the timeline."""
    found = re.search(r"const PALETTE = (\[[^\]]*\])", (WEB / "view.js").read_text(encoding="utf-8"))
    return json.loads(found.group(1))


def render(messages: list[dict], card: dict | None = None, source: str = "") -> str:
    """The page as one string: no external file, no network."""
    summary = summarize(messages)
    read = lambda name: (WEB / name).read_text(encoding="utf-8")
    data = _script_safe(json.dumps(messages, ensure_ascii=False))
    title = f"Session report: {summary['session']}"
    facts = (f"{summary['duration_s']:.1f} s · {summary['utterances']} utterances · "
             f"{summary['windows']} window updates" + (" · session not finished" if summary["finished"] is False else "")
             + (f" · from {source}" if source else "") + f" · written {time.strftime('%Y-%m-%d %H:%M')}")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{read("vendor/uPlot.min.css")}</style>
<style>{read("style.css")}</style>
</head>
<body class="report">
<header><h1>{html.escape(title)}</h1><span class="meta" id="facts">{html.escape(facts)}</span></header>
<main>
  <section class="card span-12"><h2>Model</h2>{_card_html(card)}</section>
  <section class="card span-12"><h2>Per label</h2>{_summary_table(summary, palette())}</section>
  <section class="card span-12">
    <h2>Timeline</h2>
    <div id="timeline"></div>
    <div class="timeline-legend" id="timeline-legend"></div>
  </section>
  <section class="card span-8"><h2>Transcript and its emotions</h2><ul id="transcript"></ul></section>
  <section class="card span-4"><h2>Latency</h2><div id="latency"></div></section>
</main>
<script id="messages" type="application/json">{data}</script>
<script>{_script_safe(read("vendor/uPlot.iife.min.js"))}</script>
<script>{_script_safe(read("view.js"))}</script>
<script>
"use strict";
const view = new EmotionView({{ live: false }});
window.view = view;
for (const message of JSON.parse(document.getElementById("messages").textContent)) view.add(message);
</script>
</body>
</html>
"""


def write_report(jsonl: str | Path, out: str | Path, bundle: str | Path | None = None,
                 session: str | None = None) -> dict:
    """Read a session's JSONL, write its HTML page; returns the summary (and every session's name)."""
    messages, sessions = read_messages(jsonl, session)
    card = model_card(bundle)
    Path(out).write_text(render(messages, card, source=Path(jsonl).name), encoding="utf-8")
    return dict(summarize(messages), sessions=sessions)


def write_report_from(messages: list[dict], out: str | Path, bundle: str | Path | None = None,
                      source: str = "") -> dict:
    """The same page straight from published messages (`realtime replay --report`)."""
    if not messages:
        raise ReportError("no messages to report")
    Path(out).write_text(render(messages, model_card(bundle), source=source), encoding="utf-8")
    return summarize(messages)
