"""The pipeline's stages before fusion, one process each.

    media source --audio--> segmenter --utterances--> asr --------+
                 --video--> faces -----------crops----------------+--> fusion

Each function is a stage body for `realtime.framework.run_stage`.  End of stream
travels as an `eos` message so every stage can flush and exit in order.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from realtime import bus
from realtime.framework import Stage


CLOCK_LINE = "media time 0 is wall clock "  # benchmarks/pipeline.py finds this on stderr


def print_clock(doing: str, wall: float) -> None:
    """The wall clock of media time 0 on stderr (sources stamp media time m as wall + m): what
    a latency measurement needs (benchmarks/pipeline.py)."""
    print(f"realtime: {doing}; {CLOCK_LINE}{wall:.6f}", file=sys.stderr, flush=True)

def _media_messages(path: str, session: str, chunk_ms: int, video_fps: float, sample_rate: int):
    """A recording as the source sends it: (stream, header, array, media time it is complete).

    Deterministic: every pass over the same file gives the same chunks with the same
    seq, so a rewind resends exactly what was sent before.
    """
    from engines.media import AudioChunk, iter_media

    chunk = sample_rate * chunk_ms // 1000
    pending = np.zeros(0, np.float32)
    pending_t = 0.0
    seq = 0
    for item in iter_media(path, sample_rate, video_fps):
        if isinstance(item, AudioChunk):
            if pending.size == 0:
                pending_t = item.t
            pending = np.concatenate([pending, item.samples])
            while pending.size >= chunk:
                yield ("audio", {"type": "audio", "session": session, "seq": seq, "t": pending_t}, pending[:chunk],
                       pending_t + chunk / sample_rate)
                pending, pending_t, seq = pending[chunk:], pending_t + chunk / sample_rate, seq + 1
        else:
            yield "video", {"type": "frame", "session": session, "seq": seq, "t": item.t}, item.image, item.t
            seq += 1
    if pending.size:
        yield ("audio", {"type": "audio", "session": session, "seq": seq, "t": pending_t}, pending,
               pending_t + pending.size / sample_rate)
    for stream in ("audio", "video"):
        yield stream, {"type": "eos", "session": session}, None, math.inf


def media_source(stage: Stage, path: str, session: str, chunk_ms: int, video_fps: float,
                 sample_rate: int, realtime: bool = False, rewindable: bool = False,
                 since: float = -math.inf) -> None:
    """Replay a recorded session: audio in fixed chunks, video frames, as fast as consumers take them.

    With realtime, each item waits until its media time has passed on the wall clock
    since the first one, so the stream comes out at the pace it was recorded (a
    dashboard, or a listener, sees the session as it would have seen it live).

    With rewindable (under a supervisor that restarts stages), the source stays until the
    supervisor says `finish`: a `rewind` makes it send the file again, from the rewind's
    media time on and stamped with the new generation, to a restarted processing chain.
    The file is the source's buffer: it is read again, so nothing is held in memory.
    since: the media time to start from (a source restarted after its predecessor died), as if
    a rewind to it had come first.
    """
    out = {"audio": stage.push(stage.endpoints.audio), "video": stage.push(stage.endpoints.video)}
    commands = stage.commands() if rewindable else None
    stage.report("ready")
    clock0 = time.monotonic() - max(since, 0.0)  # a restarted source goes on at its pace from `since`
    if realtime and since == -math.inf:  # the wall clock of media time 0: what a latency measurement needs
        # (benchmarks/pipeline.py); a restarted source's clock is not the session's
        print_clock(f"replaying {session} at its own pace", time.time())
    while True:
        command = None
        for stream, header, array, complete_at in _media_messages(path, session, chunk_ms, video_fps, sample_rate):
            # A rewind resends what the chain still needs: each audio chunk that ends after
            # `since` (so the one holding it is whole) and each frame from `since` on.
            if complete_at < since or (header["type"] == "audio" and complete_at == since):
                continue
            if realtime:
                # An audio chunk is complete only at its end; a frame exists at its own time.
                while (wait := clock0 + complete_at - time.monotonic()) > 0 and complete_at < math.inf:
                    time.sleep(min(wait, 0.5))
                    stage.heartbeat()
            stage.send(out[stream], dict(header, gen=stage.gen), array)
            if commands is not None and (command := stage.command(commands)) is not None:
                break
        if commands is None:
            return
        while command is None:  # all sent: wait for a rewind or the end of the session
            command = stage.command(commands, timeout_s=60.0)
        if command["type"] == "finish":
            return
        stage.gen, since = command["gen"], command["t"]


def segmenter(stage: Stage, vad_options, partial_every_s: float = 0.0, speculative: bool = False,
              asr_pad_ms: int | None = None, asr_lead_ms: int = 0, progress: bool = False) -> None:
    """Streaming voice activity detection: audio chunks in, utterance windows out.

    With partial_every_s > 0 the utterance still being spoken also goes to the ASR,
    as a `partial`, each time that much more speech has been heard.  With speculative,
    an utterance whose closing silence has begun goes to the ASR as a `speculative` as
    soon as the audio the ASR reads is heard (asr_pad_ms of padding after the speech), so the
    ASR runs while the silence is still being timed.

    With progress (replay), a `progress` message follows the utterances each chunk closed
    whenever StreamingSegmenter.done_until moved: through the ASR it tells fusion which
    transcripts can still come, so fusion publishes in media-time order.  It goes before
    any speculative or partial of that chunk, whose ends lie past it, so the ASR finds no
    progress queued behind a speculative and still speculates.
    """
    from realtime.segmenter import StreamingSegmenter

    inbox, out = stage.pull(stage.endpoints.audio), stage.push(stage.endpoints.utterances)
    # Fusion also gets every chunk, for its window updates between utterances.
    audio_copy = stage.push(stage.endpoints.fusion)
    vad = StreamingSegmenter(vad_options, asr_pad_ms=asr_pad_ms, asr_lead_ms=asr_lead_ms)
    stage.report("ready")
    seq = 0
    partial_at: tuple[float, float] | None = None  # (start, end) of the last partial sent
    speculated: tuple[float, float] | None = None  # (start, end) of the last speculative sent
    done_until = -math.inf  # the last progress sent

    def emit(kind: str, utt) -> None:
        nonlocal seq
        asr = {} if utt.asr_samples is None else {"asr_samples": utt.asr_samples}
        audio = utt.audio
        if utt.asr_lead.size:  # the audio before the utterance that only the ASR reads travels in front
            asr["asr_lead"] = utt.asr_lead.size
            audio = np.concatenate([utt.asr_lead, utt.audio])
        stage.send(out, {"type": kind, "session": header["session"], "seq": seq,
                         "start": utt.start, "end": utt.end, **asr}, audio)
        seq += 1

    while True:
        header, samples = stage.recv(inbox, bus.AUDIO_IN)
        if header["type"] == "audio":
            stage.send(audio_copy, {k: header[k] for k in ("type", "session", "seq", "t")}, samples)
            found = vad.feed(samples, header["t"])
        else:  # eos
            found = vad.flush()
        for utt in found:
            emit("utterance", utt)
            partial_at = None
        if progress and header["type"] == "audio" and vad.done_until() != done_until:
            done_until = vad.done_until()
            stage.send(out, {"type": "progress", "session": header["session"], "t": done_until})
        if header["type"] == "eos":
            # Fusion learns that every audio chunk is in (its windows need that), then the ASR passes eos on.
            # A lost microphone is announced from here, not after the ASR has caught up.
            copy_eos = {"type": "eos", "session": header.get("session", ""), "stream": "audio"}
            stage.send(audio_copy, dict(copy_eos, lost=header["lost"]) if "lost" in header else copy_eos)
            stage.send(out, header)
            return
        settled = vad.settled() if speculative else None
        if settled is not None and (settled.start, settled.end) != speculated:
            emit("speculative", settled)
            speculated = (settled.start, settled.end)
        current = vad.open_utterance() if partial_every_s > 0 else None
        if current is not None:
            last = partial_at if partial_at and partial_at[0] == current.start else (current.start, current.start)
            if current.end - last[1] >= partial_every_s:
                emit("partial", current)
                partial_at = (current.start, current.end)


def asr(stage: Stage, asr_options, ordered: bool = False) -> None:
    """faster-whisper on each utterance window; the audio travels on to fusion.

    ordered (replay): the segmenter's `progress` goes on to fusion behind the transcripts
    before it, and every partial is transcribed: skipping one while newer work waits would
    make a replay's partial transcripts depend on the machine's speed."""
    from realtime.asr import Speculation, Transcriber

    inbox, out = stage.pull(stage.endpoints.utterances), stage.push(stage.endpoints.fusion)
    transcriber = Transcriber(asr_options)
    speculation = Speculation()
    stage.report("ready")
    while True:
        header, audio = stage.recv(inbox, bus.UTTERANCES_IN)
        if header["type"] == "eos":
            stage.send(out, dict(header, stream="transcripts"))  # every transcript is out
            return
        if header["type"] == "progress":
            stage.send(out, header)
            continue
        if header["type"] == "speculative" or (header["type"] == "partial" and not ordered):
            if inbox.poll(0):
                continue  # newer audio is waiting (a speculative's own final, at worst): do that first
        lead = header.get("asr_lead", 0)  # audio before the utterance, for the ASR only
        heard = audio[: lead + header.get("asr_samples", len(audio) - lead)]  # the trailing silence past it is not read
        audio = audio[lead:]
        if header["type"] == "speculative":
            t0 = time.perf_counter()
            speculation.keep(header["start"], header["end"], heard, transcriber.transcribe(heard),
                             time.perf_counter() - t0)
            continue
        early = speculation.take(header["start"], header["end"], heard) if header["type"] == "utterance" else None
        if early is not None:
            text, asr_s = early  # transcribed while the closing silence was still being timed
        else:
            t0 = time.perf_counter()
            text = transcriber.transcribe(heard)
            asr_s = time.perf_counter() - t0
        fields = {k: header[k] for k in ("session", "seq", "start", "end")}
        if header["type"] == "partial":
            stage.send(out, {"type": "partial_transcript", **fields, "text": text, "asr_s": asr_s})
        else:
            stage.send(out, {"type": "transcript", **fields, "text": text, "asr_s": asr_s,
                             "early": early is not None}, audio)


def faces(stage: Stage, face_options, preprocessing) -> None:
    """Every face of every sampled frame, tracked (stable ids) with its crop and mouth motion.

    One message per frame: `faces` lists each face's id (null until confirmed), box and
    mouth motion, `main` indexes the main face, and the crops travel stacked in that
    order as one (n, size, size) array; a frame without a face is sent as such."""
    import cv2

    from engines.faces import FaceTracker

    # One stage, one thread, as the ONNX Runtime stages: OpenCV's own pool spread each whole-
    # frame search over every core (0.75 CPU s per 25.7 s session against 0.63 on one thread),
    # cores the ASR and the fusion stage need at that moment.
    cv2.setNumThreads(1)
    inbox, out = stage.pull(stage.endpoints.video), stage.push(stage.endpoints.fusion)
    tracker = FaceTracker(face_options, preprocessing)
    stage.report("ready")
    while True:
        header, image = stage.recv(inbox, bus.VIDEO_IN)
        if header["type"] == "eos":
            stage.send(out, dict(header, stream="video"))
            return
        frame = tracker.update(image, header["t"])
        crops = np.stack([f.crop for f in frame.faces]) if frame.faces else None
        stage.send(out, {"type": "face", "session": header["session"], "seq": header["seq"], "t": header["t"],
                         "found": frame.main is not None, "main": frame.main,
                         "frame": [int(image.shape[1]), int(image.shape[0])],  # width, height: what boxes are in
                         "faces": [{"id": f.id, "box": list(f.box), "motion": f.motion} for f in frame.faces]},
                   crops)
