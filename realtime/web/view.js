"use strict";
// Draws an emotion stream (protocol emotion-stream/1, see realtime/schema) into the page:
// the live dashboard feeds it from its WebSocket, the session report from the messages
// embedded in the page. Each panel is filled only if the page has its element, so both
// pages share this one file. Charting is uPlot (vendor/uPlot.iife.min.js).

const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1",
                 "#edc948", "#76b7b2", "#ff9da7", "#9c755f", "#7f7f7f"];
const MODALITIES = ["text", "audio", "video"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "style") Object.assign(node.style, value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : x.toFixed(digits);

class EmotionView {
  // live: the timeline scrolls to the last `span` seconds and the transcript follows
  // the newest utterance; otherwise (the report) the whole session is shown.
  constructor({ live = true, span = 60 } = {}) {
    this.live = live;
    this.span = span;
    this.plot = null;
    this.pending = false;
    this.reset([], null);
    window.addEventListener("resize", () => { this.plotStale = true; this.schedule(); });
  }

  reset(labels, session) {
    this.session = session;
    this.labels = [];
    this.xs = [];        // media time (end) of every emotion message, ascending
    this.win = {};       // label -> window probabilities aligned with xs (null elsewhere)
    this.utt = {};       // label -> utterance probabilities aligned with xs
    this.utterances = [];
    this.transcriptVersion = 0;  // bumped when the transcript changes: window updates leave it be
    this.drawnTranscript = -1;
    this.heard = null;   // the newest transcript not yet scored (partial or final)
    this.latest = null;  // the newest utterance or window message
    this.faces = null;   // the newest window message that says which faces were in view
    this.speaker = null; // the newest utterance's speaking face (its id), null when not told
    this.hasWindows = false;
    this.state = "waiting";
    this.delivery = [];  // seconds from publication to arrival here (live only)
    this.windowInfer = [];
    this.addLabels(labels || []);
    this.plotStale = true;
    this.schedule();
  }

  color(label) {
    return PALETTE[this.labels.indexOf(label) % PALETTE.length];
  }

  addLabels(labels) {
    for (const label of labels) {
      if (this.labels.includes(label)) continue;
      this.labels.push(label);
      this.win[label] = this.xs.map(() => null);
      this.utt[label] = this.xs.map(() => null);
      this.plotStale = true;
    }
  }

  add(msg) {
    if (msg.type === "status" && msg.state === "started") {
      this.reset(msg.label_names || msg.labels || [], msg.session);  // labels: its name before 1.3
      this.state = "started";
      return;
    }
    if (this.session === null) this.session = msg.session;
    else if (msg.session !== this.session) this.reset([], msg.session);  // a new session whose start we missed

    if (msg.type === "status") {
      this.state = msg.state;
    } else if (msg.type === "transcript") {
      this.heard = msg;
      this.transcriptVersion++;
    } else if (msg.type === "utterance" || msg.type === "window") {
      if (this.state === "waiting") this.state = "started";
      this.addLabels(Object.keys(msg.labels));
      this.insertPoint(msg);
      this.latest = msg;
      if (msg.type === "utterance") {
        this.transcriptVersion++;
        this.utterances.push(msg);
        this.speaker = msg.speaker === undefined ? null : msg.speaker;
        if (this.heard && this.heard.start === msg.start) this.heard = null;
      } else {
        this.windowInfer.push(msg.timing.infer_s);
        // A window with a face, or with a video frame, shows the panel; once shown it follows
        // every window (so a face leaving the picture is seen to leave).
        if (Array.isArray(msg.faces) && (msg.faces.length || msg.frame || this.faces)) this.faces = msg;
        if (!this.hasWindows) { this.hasWindows = true; this.plotStale = true; }
      }
      if (this.live && msg.timing && msg.timing.emitted_at) {
        this.delivery.push(Math.max(0, Date.now() / 1000 - msg.timing.emitted_at));
      }
    }
    this.schedule();
  }

  insertPoint(msg) {
    // Results come out of order in media time (an utterance is scored after the ASR,
    // while window updates go on), so each is inserted where its time belongs.
    const x = msg.end;
    let lo = 0, hi = this.xs.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.xs[mid] <= x) lo = mid + 1; else hi = mid; }
    this.xs.splice(lo, 0, x);
    const into = msg.type === "window" ? this.win : this.utt;
    const other = msg.type === "window" ? this.utt : this.win;
    for (const label of this.labels) {
      into[label].splice(lo, 0, label in msg.labels ? msg.labels[label] : null);
      other[label].splice(lo, 0, null);
    }
  }

  schedule() {
    // Many messages can arrive between two frames: draw once per frame.
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  render() {
    this.renderHeader();
    this.renderBars();
    this.renderModalities();
    this.renderFaces();
    this.renderTimeline();
    this.renderTranscript();
    this.renderLatency();
  }

  renderHeader() {
    const node = document.getElementById("session");
    if (!node) return;
    node.textContent = this.session ? `session ${this.session} · ${this.state}` : "waiting for a session";
    node.dataset.state = this.state;
  }

  probabilityRows(probs, active, small) {
    const rows = [];
    for (const label of this.labels) {
      const p = probs[label];
      const on = active.includes(label);
      rows.push(el("div", { class: "bar-row" + (on ? " active" : "") + (small ? " small" : ""),
                            "data-label": label, "data-p": p === undefined ? "" : String(p) },
        el("span", { class: "bar-label" }, label),
        el("span", { class: "bar-track" },
          el("span", { class: "bar-fill", style: { width: `${100 * (p || 0)}%`, background: this.color(label) } })),
        el("span", { class: "bar-value" }, p === undefined ? "–" : fmt(p))));
    }
    return rows;
  }

  renderBars() {
    const node = document.getElementById("bars");
    if (!node) return;
    const msg = this.latest;
    const caption = document.getElementById("bars-caption");
    if (caption) {
      caption.textContent = !msg ? "no result yet"
        : `${msg.type === "utterance" ? "utterance" : "between utterances"} ${fmt(msg.start, 1)}–${fmt(msg.end, 1)} s` +
          (msg.active.length ? ` · active: ${msg.active.join(", ")}` : " · no label active");
    }
    node.replaceChildren(...this.probabilityRows(msg ? msg.labels : {}, msg ? msg.active : [], false));
  }

  renderModalities() {
    const node = document.getElementById("modalities");
    if (!node) return;
    const msg = this.latest;
    const cards = MODALITIES.map((m) => {
      const present = !!msg && msg.modalities.includes(m);
      const peers = present && msg.peers[m] ? this.probabilityRows(msg.peers[m], [], true) : [];
      return el("div", { class: "modality" + (present ? " present" : " absent"), "data-modality": m },
        el("div", { class: "modality-name" }, `${m} ${present ? "✓" : "– absent"}`), ...peers);
    });
    node.replaceChildren(...cards);
  }

  renderFaces() {
    // The faces of the newest window update, drawn as boxes in the video frame (the stream
    // carries boxes, no image), the newest utterance's speaker highlighted. Hidden until a
    // window has a face or a frame size, so a stream without video shows no panel.
    const node = document.getElementById("faces");
    if (!node) return;
    const msg = this.faces;
    node.hidden = !msg;
    if (!msg) return;
    const faces = msg.faces;
    // Protocol 1.2 gives the frame's size; an older stream gets a frame just around its boxes.
    const [width, height] = msg.frame || [Math.max(1, ...faces.map((f) => f.box[0] + f.box[2])),
                                          Math.max(1, ...faces.map((f) => f.box[1] + f.box[3]))];
    const svgNS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.dataset.frame = `${width}x${height}`;
    const top = (probs) => {
      const ranked = Object.entries(probs || {}).sort((a, b) => b[1] - a[1]);
      return ranked.length ? ranked[0] : null;
    };
    const rows = [];
    for (const face of faces) {
      const [x, y, w, h] = face.box;
      const speaking = face.id === this.speaker;
      const rect = document.createElementNS(svgNS, "rect");
      for (const [k, v] of Object.entries({ x, y, width: w, height: h, rx: Math.max(2, w / 20) })) rect.setAttribute(k, v);
      rect.setAttribute("class", "box" + (speaking ? " speaking" : ""));
      rect.dataset.id = String(face.id);
      const label = document.createElementNS(svgNS, "text");
      label.setAttribute("x", x + 4);
      label.setAttribute("y", Math.max(height / 16, y - height / 60));
      label.setAttribute("font-size", String(Math.max(8, Math.round(height / 16))));
      label.textContent = `${face.id}`;
      svg.append(rect, label);
      const best = top(face.video);
      rows.push(el("li", { class: speaking ? "speaking" : "", "data-id": String(face.id) },
        `face ${face.id}` + (speaking ? " · speaking" : "") +
        (best ? ` · its own face reads ${best[0]} ${fmt(best[1])}` : "")));
    }
    if (!faces.length) rows.push(el("li", { class: "empty" }, "no face in view"));
    document.getElementById("faces-frame").replaceChildren(svg);
    document.getElementById("faces-list").replaceChildren(...rows);
    const caption = document.getElementById("faces-caption");
    if (caption) {
      caption.textContent = `${fmt(msg.start, 1)}–${fmt(msg.end, 1)} s · ${faces.length} in view` +
        (this.speaker === null ? "" : ` · last utterance spoken by face ${this.speaker}`);
    }
  }

  xRange(dataMin, dataMax) {
    const end = this.xs.length ? this.xs[this.xs.length - 1] : 0;
    if (!this.live) return [0, Math.max(end, 1)];
    return [Math.max(0, end - this.span), Math.max(end, this.span)];
  }

  buildPlot(node) {
    if (this.plot) this.plot.destroy();
    const series = [{ label: "media time (s)" }];
    for (const label of this.labels) {
      series.push({ label, stroke: this.color(label), width: 2, spanGaps: true, points: { show: false } });
    }
    for (const label of this.labels) {
      // Utterance results as dots; joined by a line only when there are no window updates to draw.
      series.push({ label: `${label} (utterance)`, stroke: this.color(label), fill: undefined,
                    width: this.hasWindows ? 0 : 1.5, spanGaps: true,
                    points: { show: true, size: 8, fill: this.color(label), stroke: "#fff", width: 1 } });
    }
    const width = Math.max(300, node.clientWidth);
    this.plot = new uPlot({
      width, height: 260, series,
      legend: { show: false },
      cursor: { show: !this.live, drag: { x: false, y: false } },
      scales: { x: { time: false, range: (u, min, max) => this.xRange(min, max) }, y: { range: [0, 1] } },
      axes: [{ label: "media time (s)", size: 40 }, { label: "probability", size: 50 }],
      hooks: { drawClear: [(u) => this.drawUtterances(u)] },
    }, this.plotData(), node);
    this.plotStale = false;
  }

  drawUtterances(u) {
    // Each utterance's span as a shaded band behind the lines, numbered at the top.
    const ctx = u.ctx;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    ctx.font = `${Math.round(11 * devicePixelRatio)}px sans-serif`;
    this.utterances.forEach((utt, i) => {
      const x0 = u.valToPos(utt.start, "x", true), x1 = u.valToPos(utt.end, "x", true);
      ctx.fillStyle = "rgba(90, 110, 150, 0.13)";
      ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
      ctx.fillStyle = "#556";
      ctx.fillText(`#${i + 1}`, x0 + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    });
    ctx.restore();
  }

  plotData() {
    return [this.xs, ...this.labels.map((l) => this.win[l]), ...this.labels.map((l) => this.utt[l])];
  }

  renderTimeline() {
    const node = document.getElementById("timeline");
    if (!node) return;
    if (typeof uPlot === "undefined") { node.textContent = "charting library missing"; return; }
    if (this.plotStale || !this.plot) this.buildPlot(node);
    else this.plot.setData(this.plotData());
    node.dataset.points = String(this.xs.length);
    const legend = document.getElementById("timeline-legend");
    if (legend) {
      legend.replaceChildren(...this.labels.map((l) =>
        el("span", { class: "legend-item" }, el("span", { class: "swatch", style: { background: this.color(l) } }), l)),
        el("span", { class: "legend-item" }, el("span", { class: "swatch band" }), "utterance (dots: its result)"));
    }
  }

  utteranceRow(utt, index) {
    const ranked = Object.entries(utt.labels).sort((a, b) => b[1] - a[1]);
    const shown = ranked.filter(([l], i) => i < 3 || utt.active.includes(l));
    const chips = shown.map(([label, p]) => el("span", {
      class: "chip" + (utt.active.includes(label) ? " active" : ""),
      style: utt.active.includes(label) ? { background: this.color(label), borderColor: this.color(label) }
                                        : { borderColor: this.color(label) },
    }, `${label} ${fmt(p)}`));
    return el("li", { class: "utterance", "data-index": String(index) },
      el("span", { class: "when" }, `#${index + 1} ${fmt(utt.start, 1)}–${fmt(utt.end, 1)} s` +
        (utt.speaker === null || utt.speaker === undefined ? "" : ` · face ${utt.speaker}`)),
      el("span", { class: "said" }, utt.text || "(no words)"),
      el("span", { class: "chips" }, ...chips),
      el("span", { class: "mods" }, utt.modalities.join(" + ")));
  }

  renderTranscript() {
    const node = document.getElementById("transcript");
    if (!node || this.drawnTranscript === this.transcriptVersion) return;
    this.drawnTranscript = this.transcriptVersion;
    const follow = node.scrollHeight - node.scrollTop - node.clientHeight < 40;
    const rows = this.utterances.map((u, i) => this.utteranceRow(u, i));
    if (this.heard) {
      rows.push(el("li", { class: "utterance heard" },
        el("span", { class: "when" }, `${fmt(this.heard.start, 1)} s`),
        el("span", { class: "said" }, this.heard.text || "…"),
        el("span", { class: "chips" }, this.heard.final ? "scoring…" : "still speaking…")));
    }
    if (!rows.length) rows.push(el("li", { class: "empty" }, "nothing said yet"));
    node.replaceChildren(...rows);
    if (this.live && follow) node.scrollTop = node.scrollHeight;
  }

  renderLatency() {
    const node = document.getElementById("latency");
    if (!node) return;
    const stats = (values) => values.length
      ? [values[values.length - 1], values.reduce((a, b) => a + b, 0) / values.length, Math.max(...values)]
      : [null, null, null];
    const rows = [
      ["ASR, per utterance", this.utterances.map((u) => u.timing.asr_s)],
      ["model, per utterance", this.utterances.map((u) => u.timing.infer_s)],
      ["model, per window update", this.windowInfer],
    ];
    if (this.live) rows.push(["stream to this page", this.delivery]);
    const body = rows.map(([name, values]) => el("tr", {}, el("td", {}, name),
      ...stats(values).map((v) => el("td", { class: "num" }, v === null ? "–" : `${fmt(v * 1000, 0)} ms`))));
    node.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "last"), el("th", {}, "mean"), el("th", {}, "max"))),
      el("tbody", {}, ...body)));
  }
}

window.EmotionView = EmotionView;
