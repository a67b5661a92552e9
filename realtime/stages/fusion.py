"""The fusion stage: align transcripts, audio and face crops by media time, run
the model, publish on the public stream.

Two kinds of result:
- an utterance result when the ASR delivers an utterance (text + audio + video),
  naming the face that spoke it (engines.faces.speaking_face) and reading that
  face's crops; its speaker becomes the turn's speaker in the dialogue context;
- window updates at a fixed media-time rate (audio + video of the last
  `window_s` seconds; the text encoder is not run), so a listener sees the mood
  between utterances too, with every tracked face's own video prediction.
A result is computed only once the video stream has passed its end (or ended),
so it never misses face crops that were still on their way; timing by media
time, not arrival, makes replay give the same results every run.

Order: live, each result is published as soon as it can be (a window update once
audio and video have passed its end, a transcript as it arrives).  In replay
(`ordered`) the ASR's results and the window updates are merged by media time
instead, so a replay publishes the same messages in the same order (the same seq)
however fast each stage runs: a window waits until the ASR has passed its end
(the segmenter's `progress`, which the ASR passes on behind what it transcribed).

Restarts: every result sent to the supervisor carries the stage's state after it
(`Fusion.checkpoint`: the next seq, the dialogue history, how far utterances and
windows are published, and the media time the inputs are needed from).  When any
processing stage fails, the supervisor restarts the chain with the last state;
this stage goes on from it (seq keeps increasing, the history is kept, nothing
published is scored again) and the sources send the media again from there.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from engines.dialogue import History, Turn, face_speaker
from engines.faces import FaceFrame, FaceOptions, SeenFace, face_crops, frames_between
from engines.features import Window, sample_index, text_inputs, utterance_crops
from realtime import bus, protocol
from realtime.framework import Stage, StageError
from realtime.security import PublicSocket


@dataclass
class FusionOptions:
    window_rate: float = 4.0  # audio+video updates per second of media time between utterances (0: off);
    # scored only while someone reads them: a subscriber whose topic covers emotion.window, the
    # dashboard, serve --jsonl, or replay --all-messages / --report
    window_s: float = 2.0  # span of audio and video one window update looks at
    keep_s: float = 30.0  # audio and face crops kept for utterances still being transcribed
    dump_features: str = ""  # debugging: a directory that gets each scored utterance's
    # model inputs, span and transcript (one .npz each; training/serving parity checks);
    # that is voice, face and words on disk, personal data; "" = off

    def __post_init__(self):
        if self.window_rate < 0:
            raise ValueError("window_rate must be >= 0")
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")
        if self.keep_s < self.window_s:
            raise ValueError("keep_s must be >= window_s")


DRAIN_MAX = 64  # messages taken before scoring: about 2 s of 32 ms audio chunks, well inside keep_s


class Publisher:
    """The public PUB socket (XPUB, so it can see subscribers join) and the lossless results copy.

    local_windows: whether the results copy's readers (the supervisor's --out file, callbacks)
    need window updates; when they do not, window updates are wanted only while a subscriber's
    topic covers `emotion.window` (`windows_wanted`)."""

    def __init__(self, stage: Stage, stream_options, session: str, local_windows: bool = True):
        self.stage, self.session = stage, session
        self.seq = 0  # the session's next message, of any topic
        # Each topic's next message: a subscriber to some topics detects loss from these, as
        # `seq` also counts what others subscribed to (docs/PROTOCOL.md: Sequence numbers and loss).
        self.topic_seq = dict.fromkeys(protocol.TOPICS.values(), 0)
        self.local_windows = local_windows
        # Topic prefixes subscribed to now.  XPUB passes on a topic's first subscription and its
        # last unsubscription only, so a set of them is exactly what some subscriber still wants.
        self.subscriptions: set[bytes] = set()
        # The `started` (or, in a restarted stage, `restarted`) status as published: sent again,
        # the same message with its seq, once a subscriber whose topic covers status messages
        # joins after it, so a late subscriber still learns how the session began (and what it
        # missed).  One that joins just as it is first sent may hear it twice: the seq tells.
        self.announced: list[list[bytes]] = []
        try:
            self.public = PublicSocket(stage.ctx, stream_options)
        except zmq.ZMQError as exc:
            raise StageError(f"cannot bind the emotion stream to {stream_options.endpoint}: {exc}") from exc
        self.pub = self.public.sock
        self.results = stage.push(stage.endpoints.results)
        self.state = lambda: None  # the owner's checkpoint, sent with each result

    def wait_for_subscribers(self, count: int, timeout_s: float) -> int:
        """Block until `count` subscriptions arrived (replay: nobody misses the start)."""
        joined, deadline = 0, time.monotonic() + timeout_s
        while joined < count and time.monotonic() < deadline:
            self.stage.heartbeat()
            joined += self._take_subscriptions(timeout_ms=100)
        return joined

    def _take_subscriptions(self, timeout_ms: int = 0) -> int:
        """Read the (un)subscriptions that have arrived; how many were subscriptions."""
        joined, heard_status = 0, self._covered("status")
        while self.pub.poll(timeout_ms):
            message = self.pub.recv()
            if message[:1] == b"\x01":  # 1 = subscribe, 0 = unsubscribe; then the topic
                self.subscriptions.add(message[1:])
                joined += 1
            elif message[:1] == b"\x00":
                self.subscriptions.discard(message[1:])
            timeout_ms = 0
        if not heard_status and self._covered("status"):
            for frames in self.announced:
                self.pub.send_multipart(frames)
        return joined

    def _covered(self, kind: str) -> bool:
        """Whether some subscriber's topic is a prefix of the topic of `kind` (ZeroMQ's rule)."""
        topic = protocol.TOPICS[kind].encode()
        return any(topic.startswith(prefix) for prefix in self.subscriptions)

    def windows_wanted(self) -> bool:
        """Whether a window update would reach anyone: the results copy's readers, or a
        subscriber whose topic is a prefix of its topic (ZeroMQ's rule)."""
        if self.local_windows:
            return True
        self._take_subscriptions()
        return self._covered("window")

    def publish(self, body: dict) -> dict:
        topic = protocol.topic_for(body)
        body = protocol.stamp(body, self.session, self.seq, self.topic_seq[topic])
        self.seq += 1
        self.topic_seq[topic] += 1
        self._take_subscriptions()  # a status subscriber new since the last message gets `started` first
        frames = protocol.encode(body)
        self.pub.send_multipart(frames)
        if body["type"] == "status" and body["state"] in ("started", "restarted"):
            self.announced.append(frames)
        result = {"type": "result", "body": body}
        if (state := self.state()) is not None:
            result["resume"] = state
        self.stage.send(self.results, result)
        return body


def announce_failure(ctx: zmq.Context, stream_options, session: str, checkpoint: dict, detail: str,
                     grace_s: float = 1.0) -> list[dict]:
    """Publish the end of a session whose processing gave up: a `failed` status (detail says
    why), then `finished`, numbered on from fusion's last checkpoint, so a subscriber waiting
    for `finished` does not wait for ever.  For the supervisor, once the fusion stage is dead
    (its endpoint is free).  Subscribers reconnect by themselves (ZeroMQ retries every 100 ms)
    and nobody knows how many were there: grace_s gives them the time to.  Returns the two
    bodies, for the caller's own results."""
    status = protocol.TOPICS["status"]
    seq, topic_seq = checkpoint["seq"], checkpoint["topic_seq"][status]
    bodies = [protocol.stamp({"type": "status", "state": "failed", "detail": detail}, session, seq, topic_seq),
              protocol.stamp({"type": "status", "state": "finished"}, session, seq + 1, topic_seq + 1)]
    try:
        public = PublicSocket(ctx, stream_options)
    except zmq.ZMQError as exc:
        print(f"realtime: cannot tell subscribers of the failure on {stream_options.endpoint}: {exc}",
              file=sys.stderr, flush=True)
        return bodies
    try:
        deadline = time.monotonic() + grace_s
        while (left := deadline - time.monotonic()) > 0:
            if public.sock.poll(max(1, int(left * 1000))):
                public.sock.recv()  # a subscription: XPUB applies it itself
        for body in bodies:
            public.sock.send_multipart(protocol.encode(body))
    finally:
        public.close()  # lingers until they are out
    return bodies


class AudioRing:
    """Recent audio addressed by media time; older samples are dropped.

    Backed by the segmenter's SampleBuffer, so a chunk appended costs its own
    size, not a copy of everything kept.
    """

    def __init__(self, keep_s: float, sample_rate: int):
        from realtime.stages.segmenter import SampleBuffer

        self.rate, self.keep = sample_rate, int(keep_s * sample_rate)
        self.buffer = SampleBuffer()
        self.t0 = 0.0  # media time of absolute sample 0 (the first chunk's start)

    @property
    def until(self) -> float:
        return self.t0 + self.buffer.end / self.rate

    def add(self, t: float, chunk: np.ndarray, hold_from: float = math.inf) -> None:
        """hold_from: media time from which audio is kept however old (a window still to score)."""
        if self.buffer.end == 0:
            self.t0 = t
        self.buffer.append(chunk)
        held = sample_index(hold_from, self.t0, self.rate) if hold_from != math.inf else self.buffer.end
        self.buffer.discard_before(min(self.buffer.end - self.keep, held))

    def span(self, start: float, end: float) -> np.ndarray:
        index = lambda t: min(max(sample_index(t, self.t0, self.rate), self.buffer.start), self.buffer.end)
        a, b = index(start), index(end)
        return self.buffer.get(a, max(a, b))


class Fusion:
    """The stage's state: what has arrived, and what can be scored."""

    def __init__(self, engine, options: FusionOptions, out: Publisher, faces: FaceOptions | None = None,
                 resume: dict | None = None, ordered: bool = False):
        self.engine, self.options, self.out = engine, options, out
        self.ordered = ordered  # publish in media-time order (replay; module docstring)
        self.asr_until = -math.inf  # ordered: every ASR result ending at or before this has arrived
        self.faces = faces or FaceOptions()  # the speaker evidence, and the rate frames are sampled at
        # Past utterances of this session, each with the face that spoke it: the text
        # branch's dialogue context (speaker tokens, as training builds them).
        self.history = History(engine.pre.context_turns)
        self.audio = AudioRing(options.keep_s, engine.pre.sample_rate)
        self.frames: list[FaceFrame] = []  # every face of each sampled frame, in time order
        # Transcripts waiting for their video; ordered, partial ones too (array None), in the
        # ASR's order, each published when its turn in media time comes.
        self.pending: list[tuple[dict, np.ndarray | None]] = []
        self.video_until = -math.inf  # media time up to which every sampled frame has arrived
        self.last_frame_t = 0.0  # media time of the last sampled frame (video_until is inf after eos)
        self.frame_size: list[int] | None = None  # the video's width and height, which face boxes are in
        # Fusion's one inbox takes five message types from three producers; their ends of stream say
        # which producer is done (`stream`): the ASR's "transcripts", the segmenter's "audio" (its
        # copy of every chunk), and the faces stage's (no stream).
        self.transcripts_done = False  # the ASR has sent every transcript
        self.audio_done = False  # the segmenter has sent every audio chunk
        self.lost: set[str] = set()  # live sources that went away, already announced
        period = 1.0 / options.window_rate if options.window_rate else math.inf
        self.period, self.next_window = period, period
        self.utterances = 0  # scored so far (names the feature dumps)
        # How far results are published, in media time: after a restart, what comes again
        # from before these is a duplicate of what was published and is dropped.
        self.scored_until = 0.0  # end of the last utterance scored
        self.transcribed_until = 0.0  # end of the last final transcript published
        if resume:
            self._resume(resume)
        out.state = self.checkpoint

    def checkpoint(self) -> dict:
        """What a restarted fusion needs to go on where this one is (small: no media)."""
        need_from = self.scored_until  # the next utterance starts after the last one scored
        if self.period != math.inf:
            need_from = min(need_from, self.next_window - self.options.window_s)
        return {"seq": self.out.seq, "topic_seq": dict(self.out.topic_seq),
                "history": [[t.speaker, t.text] for t in self.history.past],
                "scored_until": self.scored_until, "transcribed_until": self.transcribed_until,
                "next_window": None if self.period == math.inf else self.next_window,
                "utterances": self.utterances, "lost": sorted(self.lost), "resume_from": need_from}

    def _resume(self, state: dict) -> None:
        self.out.seq, self.out.topic_seq = state["seq"], dict(state["topic_seq"])
        for speaker, text in state["history"]:
            self.history.add(Turn(speaker, text))
        self.scored_until, self.transcribed_until = state["scored_until"], state["transcribed_until"]
        if state["next_window"] is not None:
            self.next_window = state["next_window"]
        self.utterances, self.lost = state["utterances"], set(state["lost"])

    @staticmethod
    def _before(header: dict, t: float) -> bool:
        """Most of this span lies before t (a re-cut utterance may differ a little at its edges)."""
        return (header["start"] + header["end"]) / 2 < t

    @property
    def finished(self) -> bool:
        return self.transcripts_done and self.audio_done and not self.pending and self.video_until == math.inf

    def on_message(self, header: dict, array, score: bool = True) -> None:
        """Take one message; then, unless score is False, publish what it made ready."""
        kind = header["type"]
        if kind in ("transcript", "partial_transcript") and self._before(header, self.scored_until):
            pass  # its utterance was published before a restart: sent again, dropped here
        elif kind == "transcript":
            self.pending.append((header, array))
            if not self.ordered:
                self._announce(header)
        elif kind == "partial_transcript":
            if self.ordered:
                self.pending.append((header, None))
            else:
                self._announce(header)
        elif kind == "progress":
            self.asr_until = max(self.asr_until, header["t"])
        elif kind == "audio":
            # Ordered, a window may wait for the ASR longer than keep_s: its audio is kept.
            hold = self.next_window - self.options.window_s if self.ordered else math.inf
            self.audio.add(header["t"], array, hold_from=hold)
        elif kind == "face":
            self.frames.append(FaceFrame(header["t"], [
                SeenFace(f["id"], tuple(f["box"]), array[i], f["motion"]) for i, f in enumerate(header["faces"])],
                header.get("main")))
            self.video_until = max(self.video_until, header["t"])
            self.last_frame_t = max(self.last_frame_t, header["t"])
            self.frame_size = header.get("frame", self.frame_size)
        elif kind == "status":  # from the supervisor: a live source reopened (realtime.pipeline)
            self.out.publish({"type": "status", "state": header["state"], "detail": header["detail"]})
        elif kind == "eos":
            if header.get("lost") and header["lost"] not in self.lost:
                self.lost.add(header["lost"])  # said once, though it reaches us on two paths
                self.out.publish({"type": "status", "state": "lost", "detail": header["lost"]})
            stream = header.get("stream")
            if stream == "transcripts":
                self.transcripts_done = True
                self.asr_until = math.inf
            elif stream == "audio":
                self.audio_done = True
            else:
                self.video_until = math.inf
        if score:
            self.score_ready()

    def _announce(self, header: dict) -> None:
        """Publish a transcript, final or partial, unless it was published before a restart
        (a partial: unless its final is already out)."""
        if self._before(header, self.transcribed_until):
            return
        final = header["type"] == "transcript"
        if final:
            self.transcribed_until = header["end"]
        self.out.publish({"type": "transcript", "start": round(header["start"], 3),
                          "end": round(header["end"], 3), "text": header["text"], "final": final})

    def _next_window(self) -> None:
        end = self.next_window
        self.next_window += self.period  # first: the checkpoint sent with it says what is next
        self.score_window(end)

    def score_ready(self) -> None:
        if self.ordered:
            self._score_in_order()
        else:
            while self.pending and self.pending[0][0]["end"] <= self.video_complete():
                self.score_utterance(*self.pending.pop(0))
            while self.next_window <= self.window_limit():
                self._next_window()
        # Frames are kept from the oldest pending utterance or the next window's start, and
        # keep_s before that for utterances still being transcribed.  With window updates off
        # the next window never comes (its start is infinite): keep_s before the newest frame.
        upcoming = self.next_window - self.options.window_s if self.period != math.inf else self.last_frame_t
        oldest = min([u["start"] for u, _ in self.pending] + [upcoming])
        self.frames = [f for f in self.frames if f.t >= oldest - self.options.keep_s]

    def _score_in_order(self) -> None:
        """Merge the ASR's results (in its order) and the window updates by media time: the
        next ASR result goes first when it ends at or before the next window's end, else the
        window does.  Which comes next is known from what has arrived only, never from when:
        a window goes before an ASR result still to come only once `progress` says that
        result ends after it; a final transcript's utterance waits for its video."""
        while True:
            # Once every input has ended no window is still to come (rounding could leave a
            # result's end a hair past the last window's).
            ended = self.transcripts_done and self.audio_done and self.video_until == math.inf
            windows_over = ended and self.next_window > self.window_limit()
            if self.pending and (self.pending[0][0]["end"] <= self.next_window or windows_over):
                header, audio = self.pending[0]
                self._announce(header)  # once: after it, transcribed_until covers it
                if header["type"] == "transcript":
                    if header["end"] > self.video_complete():
                        return
                    self.score_utterance(header, audio)
                self.pending.pop(0)
            elif self.next_window <= self.window_limit() and (self.pending or self.next_window <= self.asr_until):
                self._next_window()
            else:
                return

    def video_complete(self) -> float:
        """Media time up to which every sampled frame is in.  Sources sample at most
        [faces] sample_fps frames a second (the next frame comes at least 1/sample_fps after
        the last), so no frame up to just short of that can still come: waiting for the next
        frame itself would hold every window and utterance up to 1/sample_fps (200 ms) for
        nothing.  (A screen grabbed at that rate may now and then give a frame a few ms
        early; a window then lacks it, as it would a dropped frame.)"""
        return self.video_until + 1.0 / self.faces.sample_fps - 1e-6

    def window_limit(self) -> float:
        """Media time up to which windows can be scored: every stream has arrived that far.

        A file with one modality still gets its windows: a stream that has ended
        holds nothing back, and once both have ended windows run to the end of the
        audio, or of the video when there is no audio."""
        # Audio heard bounds the windows (complete or not): a window past the end of the audio
        # is never scored, however early the video's frames let it be.  Without any audio,
        # only the frames do: then no frame after the last may count, as the stream's end is
        # not known before its end of stream, so there the next frame is waited for.
        audio = self.audio.until if self.audio.buffer.end or not self.audio_done else math.inf
        limit = min(audio, self.video_complete() if audio != math.inf else self.video_until)
        if limit == math.inf:
            limit = self.audio.until if self.audio.buffer.end else self.last_frame_t
        return limit

    def _infer(self, windows: list[Window], dump: bool = False):
        """Predictions for windows scored in one engine call (a window and its faces' own)."""
        t0 = time.perf_counter()
        feeds = self.engine.features(windows)
        preds = self.engine.predict(feeds)
        infer_s = time.perf_counter() - t0
        if dump and self.options.dump_features:
            self._dump(windows[0], feeds)
        return preds, infer_s

    def _dump(self, window: Window, feeds: dict) -> None:
        folder = Path(self.options.dump_features)
        folder.mkdir(parents=True, exist_ok=True)
        (text_input,) = text_inputs([window], self.engine.pre)
        np.savez(folder / f"utterance-{self.utterances:04d}.npz", start=window.start, end=window.end,
                 text=window.text or "", text_input=text_input, **{k: v[0] for k, v in feeds.items()})

    def _result(self, pred) -> dict:
        thresholds = self.engine.bundle.thresholds
        return {"labels": pred.probabilities,
                "active": [l for l, t in zip(self.engine.labels, thresholds) if pred.probabilities[l] >= t],
                "peers": pred.peers, "modalities": pred.modalities}

    def score_utterance(self, utt: dict, audio: np.ndarray) -> None:
        speaker, crops = utterance_crops(self.frames, utt["start"], utt["end"], self.faces)
        window = Window(start=utt["start"], end=utt["end"], text=utt["text"], audio=audio, crops=crops,
                        context=self.history.past, speaker=face_speaker(speaker))
        (pred,), infer_s = self._infer([window], dump=True)
        self.utterances += 1
        self.history.add(Turn(window.speaker, utt["text"]))
        self.scored_until = max(self.scored_until, utt["end"])
        self.out.publish({"type": "utterance", "start": round(utt["start"], 3), "end": round(utt["end"], 3),
                          "text": utt["text"], "speaker": speaker, **self._result(pred),
                          "timing": {"asr_s": round(utt["asr_s"], 4), "asr_early": bool(utt.get("early", False)),
                                     "infer_s": round(infer_s, 4), "emitted_at": time.time()}})

    def score_window(self, end: float) -> None:
        if not self.out.windows_wanted():
            return  # window updates are most of this stage's work: none for nobody
        start = max(0.0, end - self.options.window_s)
        window = Window(start=start, end=end, audio=self.audio.span(start, end),
                        crops=face_crops(self.frames, start, end))
        # Each face seen in the window, with its latest box, gets a video-only window of
        # its own crops, scored in the same engine call as the window itself.
        boxes: dict[int, tuple] = {}
        for frame in frames_between(self.frames, start, end):
            boxes.update((f.id, f.box) for f in frame.faces if f.id is not None)
        ids = sorted(boxes)
        crops = [face_crops(self.frames, start, end, i) for i in ids]
        # A face that was the main face in every frame (one face in view) has the window's own
        # crops; its prediction is the window's video peer, which reads those crops and nothing
        # else, so it is not scored a second time.
        main = [all(a is b for (_, a), (_, b) in zip(c, window.crops)) for c in crops]
        own = [Window(start=start, end=end, crops=c) for c, is_main in zip(crops, main) if not is_main]
        (pred, *scored), infer_s = self._infer([window, *own])
        scored = iter(scored)
        face_preds = [pred if is_main else next(scored) for is_main in main]
        faces = [{"id": i, "box": list(boxes[i]), **({"video": p.peers["video"]} if "video" in p.peers else {})}
                 for i, p in zip(ids, face_preds)]
        self.out.publish({"type": "window", "start": round(start, 3), "end": round(end, 3),
                          **self._result(pred), "faces": faces,
                          **({"frame": self.frame_size} if self.frame_size else {}),
                          "timing": {"infer_s": round(infer_s, 4), "emitted_at": time.time()}})


def fusion(stage: Stage, model_options, stream_options, fusion_options, session: str,
           face_options: FaceOptions | None = None, resume: dict | None = None, bundle=None,
           local_windows: bool = True, source: str = "", ordered: bool = False) -> None:
    """The stage body.  resume (after a restart): `detail` says why, `state` is the last
    checkpoint the supervisor received (None when the stage failed before publishing).
    source: the replayed file's name, for the `started` status ("": live, none sent).
    bundle: the engines.bundle.Bundle the caller opened (and verified: its 100 MB are not
    hashed a second time at every start); None: [model] bundle is opened here.
    local_windows: the caller reads window updates from the results copy (Publisher).
    ordered: publish in media-time order (replay; the module docstring says how)."""
    import engines

    inbox = stage.pull(stage.endpoints.fusion)
    engine = engines.load(bundle or model_options.bundle, backend=model_options.backend, device=model_options.device,
                          threads=model_options.threads, triton_url=model_options.triton_url,
                          triton_timeout_s=model_options.triton_timeout_s,
                          service_endpoint=model_options.service_endpoint,
                          service_timeout_s=model_options.service_timeout_s)
    out = Publisher(stage, stream_options, session, local_windows=local_windows)
    state = Fusion(engine, fusion_options, out, face_options, resume=(resume or {}).get("state"), ordered=ordered)
    if not resume:  # a restart does not wait: subscribers reconnect by themselves
        out.wait_for_subscribers(stream_options.wait_subscribers, stream_options.wait_timeout_s)
    stage.report("ready")
    if not (resume or {}).get("state"):
        # `labels` is the 1.0 name of the list, kept for 1.x readers until a major version
        # (everywhere else `labels` are probabilities); 1.3 readers use `label_names`.
        out.publish({"type": "status", "state": "started", "label_names": engine.labels, "labels": engine.labels,
                     **({"source": source} if source else {})})
    if resume:
        out.publish({"type": "status", "state": "restarted", "detail": resume["detail"]})
    while not state.finished:
        state.on_message(*stage.recv(inbox, bus.FUSION_IN), score=False)
        # Take what is already queued (bounded: the audio ring must still hold every window's
        # audio) before scoring: when this stage falls behind, a transcript waiting behind
        # audio chunks and frames is scored before the window updates they make due, instead
        # of after them.  What each result holds does not change, only the order.
        for _ in range(DRAIN_MAX):
            if not inbox.poll(0):
                break
            state.on_message(*stage.recv(inbox, bus.FUSION_IN), score=False)
        state.score_ready()
    out.publish({"type": "status", "state": "finished"})
    stage.send(out.results, {"type": "eos"})
    out.public.close()
