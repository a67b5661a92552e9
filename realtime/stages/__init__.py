"""The pipeline's stages, one module each, holding the stage's options, its algorithm and its
stage body: a function `body(stage, ...)` that realtime.framework.run_stage runs in the
stage's own process.

    source --audio--> segmenter --utterances--> asr --------+
           --video--> faces -----------crops----------------+--> fusion

- source: replay's media source, and the live camera (or screen) and microphone; device listing
- segmenter: streaming voice activity detection, cutting the audio into utterances
- asr: faster-whisper on each utterance
- faces: face tracking and crops on each sampled frame (the algorithms are engines.faces)
- fusion: aligns the streams by media time, runs the model, publishes the public stream

Live, the camera and the microphone are two sources (one process each) in place of replay's
one.  End of stream travels as an `eos` message so every stage can flush and exit in order.
"""
