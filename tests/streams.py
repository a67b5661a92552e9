"""Emotion-stream messages made in a test: what the fusion stage publishes, body for body
(the tests validate them against the protocol's JSON Schema), for tests that need a
stream without running the model."""
from __future__ import annotations

import random
import time

from realtime import protocol

LABELS = ["neutral", "happiness", "sadness", "anger", "surprise"]
WORDS = ["I cannot believe the party is already done!", "Well, that is how it goes.",
         "Why would anyone do that to us?", "Oh wow, look at this!", "I miss them so much."]


class SessionStream:
    """One session's messages in publication order: started, window updates at 4 Hz,
    a transcript then an utterance result at each utterance's end, finished."""

    FRAME = [320, 240]

    def __init__(self, session: str = "s-test", labels=LABELS, seed: int = 0, faces: bool = False):
        """faces: window updates carry two tracked faces in a 320x240 frame (protocol 1.2)
        and utterances name a speaker (2, 1, 2, ...)."""
        self.session, self.labels, self.with_faces = session, list(labels), faces
        self.utterances = 0
        self.rng = random.Random(seed)
        self.seq = 0
        self.topic_seq = dict.fromkeys(protocol.TOPICS.values(), 0)

    def _body(self, **fields) -> dict:
        topic = protocol.topic_for(fields)
        body = protocol.stamp(fields, self.session, self.seq, self.topic_seq[topic])
        self.seq += 1
        self.topic_seq[topic] += 1
        protocol.validate(body)
        return body

    def _probs(self) -> dict[str, float]:
        return {label: round(self.rng.random(), 3) for label in self.labels}

    def started(self) -> dict:
        return self._body(type="status", state="started", label_names=self.labels, labels=self.labels)

    def finished(self) -> dict:
        return self._body(type="status", state="finished")

    def window(self, end: float) -> dict:
        probs = self._probs()
        return self._body(type="window", start=max(0.0, round(end - 2.0, 3)), end=end, labels=probs,
                          active=[l for l in self.labels if probs[l] >= 0.5],
                          peers={"audio": self._probs(), "video": self._probs()}, modalities=["audio", "video"],
                          timing={"infer_s": 0.01, "emitted_at": time.time()}, **self._faces(end))

    def _faces(self, end: float) -> dict:
        if not self.with_faces:
            return {}
        drift = int(end * 4) % 7  # the boxes move a little, as detections do
        return {"frame": self.FRAME,
                "faces": [{"id": 1, "box": [30 + drift, 60, 80, 80], "video": self._probs()},
                          {"id": 2, "box": [190, 70 + drift, 76, 76], "video": self._probs()}]}

    def transcript(self, start: float, end: float, text: str, final: bool = True) -> dict:
        return self._body(type="transcript", start=start, end=end, text=text, final=final)

    def utterance(self, start: float, end: float, text: str, modalities=("text", "audio", "video")) -> dict:
        probs = self._probs()
        speaker = {"speaker": 2 - self.utterances % 2} if self.with_faces else {}
        self.utterances += 1
        return self._body(type="utterance", start=start, end=end, text=text, labels=probs, **speaker,
                          active=[l for l in self.labels if probs[l] >= 0.5],
                          peers={m: self._probs() for m in modalities}, modalities=list(modalities),
                          timing={"asr_s": round(0.3 + self.rng.random() / 5, 3), "infer_s": 0.02,
                                  "emitted_at": time.time()})

    def session_messages(self, utterances: int = 4) -> list[dict]:
        """A whole session: each utterance of 2 s after 1.5 s of silence, windows between."""
        out, t = [self.started()], 0.0
        for i in range(utterances):
            start, end = round(t + 1.5, 3), round(t + 3.5, 3)
            while t + 0.25 <= end:
                t = round(t + 0.25, 3)
                out.append(self.window(t))
            text = WORDS[i % len(WORDS)]
            out += [self.transcript(start, end, text), self.utterance(start, end, text)]
        out.append(self.finished())
        return out


class CollectingPublisher:
    """Stands in for realtime.stages.fusion.Publisher in a fusion stage run in process: what it
    publishes goes to `bodies`, and it reads every type (the sockets: test_end_to_end)."""

    def __init__(self):
        self.bodies: list[dict] = []

    def publish(self, body: dict) -> None:
        self.bodies.append(body)

    def windows_wanted(self) -> bool:
        return True
