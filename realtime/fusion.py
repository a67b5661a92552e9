"""The fusion stage: align transcripts, audio and face crops by media time, run
the model, publish on the public stream.

An utterance is scored once the video stream has passed its end (or ended), so
a result never misses face crops that were still on their way.
"""
from __future__ import annotations

import math
import time

import zmq

from realtime import bus, protocol
from realtime.stage import Stage

KEEP_CROPS_S = 2.0  # crops older than the last scored utterance end minus this are dropped


class Publisher:
    """The public PUB socket (XPUB, so it can see subscribers join) and the lossless results copy."""

    def __init__(self, stage: Stage, stream_options, session: str):
        self.session = session
        self.seq = 0
        self.pub = stage.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        try:
            self.pub.bind(stream_options.endpoint)
        except zmq.ZMQError as exc:
            raise RuntimeError(f"cannot bind the emotion stream to {stream_options.endpoint}: {exc}") from exc
        self.results = stage.push(stage.endpoints.results)

    def wait_for_subscribers(self, count: int, timeout_s: float) -> int:
        """Block until `count` subscriptions arrived (replay: nobody misses the start)."""
        joined, deadline = 0, time.monotonic() + timeout_s
        while joined < count and time.monotonic() < deadline:
            if self.pub.poll(100):
                if self.pub.recv()[:1] == b"\x01":  # 1 = subscribe, 0 = unsubscribe
                    joined += 1
        return joined

    def publish(self, body: dict) -> dict:
        body = {"protocol": protocol.PROTOCOL, "session": self.session, "seq": self.seq, **body}
        self.seq += 1
        self.pub.send_multipart(protocol.encode(body))
        bus.send(self.results, {"type": "result", "body": body})
        return body


def fusion(stage: Stage, model_options, stream_options, session: str) -> None:
    import engines
    from engines.runtime import Window

    inbox = stage.pull(stage.endpoints.fusion)
    engine = engines.load(model_options.bundle, backend=model_options.backend, threads=model_options.threads)
    out = Publisher(stage, stream_options, session)
    out.wait_for_subscribers(stream_options.wait_subscribers, stream_options.wait_timeout_s)
    stage.report("ready")
    out.publish({"type": "status", "state": "started", "labels": engine.labels})

    pending: list[tuple[dict, object]] = []  # transcripts waiting for their video
    crops: list[tuple[float, object]] = []
    video_until = -math.inf  # media time up to which every frame has arrived
    audio_done = False
    while not (audio_done and not pending and video_until == math.inf):
        header, array = bus.recv(inbox)
        if header["type"] == "transcript":
            pending.append((header, array))
        elif header["type"] == "face":
            crops.append((header["t"], array if header["found"] else None))
            video_until = max(video_until, header["t"])
        elif header["type"] == "eos":
            if header.get("stream") == "audio":
                audio_done = True
            else:
                video_until = math.inf
        while pending and pending[0][0]["end"] <= video_until:
            utt, audio = pending.pop(0)
            window = Window(start=utt["start"], end=utt["end"], text=utt["text"], audio=audio,
                            crops=[c for c in crops if utt["start"] <= c[0] <= utt["end"]])
            t0 = time.perf_counter()
            (pred,) = engine.infer([window])
            infer_s = time.perf_counter() - t0
            out.publish({
                "type": "utterance",
                "start": round(utt["start"], 3),
                "end": round(utt["end"], 3),
                "text": utt["text"],
                "labels": pred.probabilities,
                "active": [l for l, t in zip(engine.labels, engine.bundle.thresholds)
                           if pred.probabilities[l] >= t],
                "peers": pred.peers,
                "modalities": pred.modalities,
                "timing": {"asr_s": round(utt["asr_s"], 4), "infer_s": round(infer_s, 4),
                           "emitted_at": time.time()},
            })
            crops = [c for c in crops if c[0] >= utt["end"] - KEEP_CROPS_S]
    out.publish({"type": "status", "state": "finished"})
    bus.send(out.results, {"type": "eos"})
