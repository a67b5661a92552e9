"""Synthetic multimodal emotion corpus: recorded two-person sessions as mp4 files.

Each session is a short conversation between speakers "A" and "B" who take
turns.  Every utterance has one or two emotion labels, and each of its three
modalities may or may not show them:

* text  - emotional wording from templates, or a plain neutral sentence;
* audio - espeak-ng prosody (pitch, speed, loudness, pitch range) per label;
* video - a real face photo with a drawn expression (mouth, brows, tint).

A modality that does not carry the cue shows a neutral rendering, so a model
that looks at one modality alone is wrong on some utterances and fusion has
work to do.  The manifest records which modalities carried the cue.

Everything random comes from one numpy Generator per session, seeded from
(seed, session index): the same seed gives the same manifest, audio and
frames, and sessions can be rendered in parallel in any order.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

LABELS = ("neutral", "happiness", "sadness", "anger", "surprise")

SAMPLE_RATE = 16000  # every stage of the project works at 16 kHz mono
FPS = 10
WIDTH, HEIGHT = 320, 240
FACE_WIDTH = 100  # typical face box width in the frame, pixels (webcam distance)
LEAD_IN_S = 0.6
TRAIL_S = 0.8
GAP_S = (0.7, 1.5)  # silence between utterances, drawn uniformly
NEUTRAL_P = 0.3  # share of single-label utterances that are neutral
MULTI_LABEL_P = 0.15  # share of utterances with a second label
CUE_P = 0.65  # chance that a modality carries the emotion of a non-neutral utterance
MODALITIES = ("text", "audio", "video")
# Label pairs that plausibly co-occur; the order within a pair is drawn per utterance.
LABEL_PAIRS = (
    ("happiness", "surprise"),
    ("anger", "sadness"),
    ("sadness", "surprise"),
    ("anger", "surprise"),
)
NOISE_STD = 0.0015  # faint hiss, as in a real room; keeps silence from being exact zeros

ASSETS = Path(__file__).resolve().parent / "assets"
FACE_FILES = {"A": "face_a.jpg", "B": "face_b.jpg"}
# Speaker A's photo is a man, B's a woman, so each gets voices to match.  These
# variants are the ones Whisper tiny.en understood best in a trial of espeak-ng
# voices (the klatt variants are male).  The female voices are harder to
# understand at the same speed, so B talks more slowly (SPEED_WPM).
VOICE_VARIANTS = {"A": ("klatt3", "klatt2", "m6"), "B": ("f3", "steph")}
SPEED_WPM = {"A": (140, 160), "B": (125, 140)}
BASE_PITCH = {"A": 42, "B": 52}  # espeak -p; the variant sets the voice's own register
WORD_GAP = 3  # espeak -g, 10 ms units: short pauses between words help recognition


# --------------------------------------------------------------------------- text

SLOTS = {
    "thing": (
        "the new project", "the report", "this plan", "the meeting", "our trip",
        "the results", "the new office", "your message", "the game", "the budget",
        "the garden", "the party",
    ),
    "person": (
        "my sister", "our manager", "the neighbor", "my friend", "the team",
        "your cousin", "the teacher", "my father",
    ),
    "time": ("today", "this morning", "last night", "this week", "yesterday", "on Monday"),
}

NEUTRAL_TEMPLATES = (
    "I need to check {thing} {time}.",
    "We talked about {thing} {time}.",
    "{person} will send the letter later.",
    "Please put the files on my desk.",
    "The train leaves from the second platform.",
    "Let me look at {thing} first.",
    "I think the room is on the left.",
    "{person} asked about {thing} {time}.",
    "We should finish the list before lunch.",
    "The printer is next to the kitchen.",
    "Can you read {thing} again?",
    "I moved {thing} to the other folder.",
    "The bus was on time {time}.",
    "We can discuss {thing} after the call.",
    "{person} has a copy of the schedule.",
)

EMOTION_TEMPLATES = {
    "happiness": (
        "I am so happy about {thing}!",
        "This is wonderful news about {thing}.",
        "I love how {thing} turned out!",
        "{person} made my day {time}.",
        "What a great day, I feel fantastic.",
        "I am thrilled that {thing} went so well.",
        "That was the best news I heard {time}.",
        "We did it, this is amazing!",
        "I am really glad {person} could join us.",
        "Everything about {thing} makes me smile.",
        "Thank you so much, this is perfect!",
        "I feel so lucky and grateful {time}.",
    ),
    "sadness": (
        "I feel so sad about {thing}.",
        "I miss {person} so much {time}.",
        "Nothing went right {time}, I feel terrible.",
        "It breaks my heart to hear that.",
        "I am really disappointed about {thing}.",
        "{person} is leaving and I feel lonely.",
        "I wish things had turned out differently.",
        "I cried all night about {thing}.",
        "Everything feels hopeless and empty {time}.",
        "I am so sorry, this is awful news.",
        "We lost {thing} and I feel miserable.",
        "I feel down and tired of everything.",
    ),
    "anger": (
        "I am furious about {thing}!",
        "This is completely unacceptable, fix it now!",
        "How dare {person} ignore me again!",
        "I am sick and tired of {thing}.",
        "Stop wasting my time with {thing}!",
        "{person} ruined everything {time}, I am so mad.",
        "That makes me so angry!",
        "I hate the way {person} treats us.",
        "Do not ever lie to me again!",
        "This is outrageous, I want answers now!",
        "I told you twice, and you ignored me!",
        "I am so annoyed with {thing} {time}.",
    ),
    "surprise": (
        "Wow, I did not expect {thing}!",
        "What, {person} is here {time}?",
        "No way, are you serious?",
        "I cannot believe {thing} is already done!",
        "Really? That happened {time}?",
        "Oh my goodness, what a surprise!",
        "Wait, {person} said what?",
        "That is so unexpected, I am shocked!",
        "I never saw that coming!",
        "You finished {thing} already?",
        "Oh, I had no idea about {thing}!",
        "Seriously, {person} won the prize?",
    ),
}

# Wording that carries both labels of a pair; keyed by the sorted pair.
PAIR_TEMPLATES = {
    ("happiness", "surprise"): (
        "Wow, I cannot believe we actually won!",
        "What a wonderful surprise, thank you so much!",
        "No way, {person} got the job, amazing!",
        "Oh wow, {thing} turned out great!",
    ),
    ("anger", "sadness"): (
        "I am angry and hurt by {person}.",
        "How could you do this, I trusted you.",
        "I am upset and so disappointed {time}.",
        "This is unfair and it breaks my heart.",
    ),
    ("sadness", "surprise"): (
        "Oh no, I did not expect {thing} to fail.",
        "What, {person} is gone? That is so sad.",
        "I cannot believe we lost {thing}.",
        "Oh no, really? That is terrible news.",
    ),
    ("anger", "surprise"): (
        "What? {person} stopped {thing} without asking?",
        "Are you kidding me, they did what?",
        "Seriously? Who broke {thing} again?",
        "You did what? That is outrageous!",
    ),
}

MIN_WORDS, MAX_WORDS = 4, 10


def fill_template(rng: np.random.Generator, templates: tuple[str, ...]) -> str:
    """A sentence from one of the templates with its slots filled, 4-10 words."""
    # Slot words vary in length, so redraw until the sentence fits; every
    # template has fillings that fit, so this ends after a few tries.
    while True:
        template = templates[rng.integers(len(templates))]
        words = {name: options[rng.integers(len(options))] for name, options in SLOTS.items()}
        text = template.format(**words)
        text = text[0].upper() + text[1:]
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return text


def utterance_text(rng: np.random.Generator, labels: list[str], text_cue: bool) -> str:
    if not text_cue or labels == ["neutral"]:
        return fill_template(rng, NEUTRAL_TEMPLATES)
    if len(labels) == 2:
        return fill_template(rng, PAIR_TEMPLATES[tuple(sorted(labels))])
    return fill_template(rng, EMOTION_TEMPLATES[labels[0]])


# --------------------------------------------------------------------------- plan


@dataclass
class Speaker:
    name: str
    voice: str  # espeak-ng voice with variant, e.g. "en-us+m3"
    pitch: float  # espeak -p for neutral speech
    speed: float  # espeak -s (words per minute) for neutral speech
    loudness_db: float  # offset on every utterance's level: some people talk louder
    face_scale: float  # face size in the frame, as a factor on FACE_WIDTH
    face_offset: tuple[float, float]  # face centre shift from the frame centre, pixels


@dataclass
class Utterance:
    index: int
    speaker: str
    labels: list[str]
    cues: dict[str, bool]
    text: str
    start_sample: int = 0
    audio: np.ndarray | None = field(default=None, repr=False)  # speech, set once synthesised

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.audio)


def draw_labels(rng: np.random.Generator) -> list[str]:
    """One label, or with MULTI_LABEL_P a co-occurring pair (primary first)."""
    if rng.random() < MULTI_LABEL_P:
        pair = list(LABEL_PAIRS[rng.integers(len(LABEL_PAIRS))])
        return pair if rng.random() < 0.5 else pair[::-1]
    if rng.random() < NEUTRAL_P:
        return ["neutral"]
    return [LABELS[1 + rng.integers(len(LABELS) - 1)]]


def draw_cues(rng: np.random.Generator, labels: list[str]) -> dict[str, bool]:
    """Which modalities show the labels.

    A neutral utterance looks neutral everywhere, so all its cues are True
    ("this modality agrees with the label").  For an emotional one each
    modality carries the cue with CUE_P, and at least one always does, so the
    label is never invisible to every modality.
    """
    if labels == ["neutral"]:
        return {m: True for m in MODALITIES}
    cues = {m: bool(rng.random() < CUE_P) for m in MODALITIES}
    if not any(cues.values()):
        cues[MODALITIES[rng.integers(len(MODALITIES))]] = True
    return cues


def draw_speakers(rng: np.random.Generator) -> dict[str, Speaker]:
    speakers = {}
    for name, variants in VOICE_VARIANTS.items():
        speakers[name] = Speaker(
            name=name,
            voice="en-us+" + variants[rng.integers(len(variants))],
            pitch=BASE_PITCH[name] + rng.uniform(-6, 6),
            speed=rng.uniform(*SPEED_WPM[name]),
            loudness_db=rng.uniform(-2, 2),
            face_scale=rng.uniform(0.85, 1.15),
            face_offset=(rng.uniform(-40, 40), rng.uniform(-10, 10)),
        )
    return speakers


def plan_session(rng: np.random.Generator, n_utterances: int) -> tuple[dict[str, Speaker], list[Utterance]]:
    """All random choices of a session except prosody jitter and motion."""
    speakers = draw_speakers(rng)
    # Who opens the conversation varies, so "A speaks first" is no shortcut.
    order = ("A", "B") if rng.random() < 0.5 else ("B", "A")
    utterances = []
    for i in range(n_utterances):
        labels = draw_labels(rng)
        cues = draw_cues(rng, labels)
        text = utterance_text(rng, labels, cues["text"])
        utterances.append(Utterance(i, order[i % 2], labels, cues, text))
    return speakers, utterances


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class Prosody:
    pitch: float = 0.0  # added to the speaker's espeak -p (0..99)
    speed: float = 1.0  # factor on the speaker's espeak -s (words per minute)
    loudness_db: float = -25.0  # RMS level of the utterance, dB full scale
    pitch_range: float = 100.0  # SSML <prosody range>, percent of the voice's default


# Textbook acoustic correlates of each emotion, exaggerated enough to be
# learnable yet mild enough that Whisper still understands the words.
# Loudness is set by scaling the samples rather than espeak's -a: espeak-ng's
# voices differ in level by several dB and loud settings clip.
LABEL_PROSODY = {
    "neutral": Prosody(),
    "happiness": Prosody(pitch=15, speed=1.08, loudness_db=-22, pitch_range=160),  # high, lively
    "sadness": Prosody(pitch=-16, speed=0.8, loudness_db=-33, pitch_range=35),  # low, flat, slow, quiet
    "anger": Prosody(pitch=5, speed=1.1, loudness_db=-17, pitch_range=125),  # loud and fast
    "surprise": Prosody(pitch=32, speed=1.0, loudness_db=-22, pitch_range=190),  # very high, wide swings
}


def prosody_for(labels: list[str], audio_cue: bool) -> Prosody:
    """Prosody of the labels (a blend for a pair), neutral without the cue."""
    if not audio_cue:
        return LABEL_PROSODY["neutral"]
    return average([LABEL_PROSODY[label] for label in labels])


def average(parts: list):
    """Field-wise mean of dataclass instances: a label pair shows a blend of both."""
    values = {}
    for f in fields(parts[0]):
        mean = np.mean([getattr(p, f.name) for p in parts], axis=0)
        values[f.name] = tuple(float(v) for v in mean) if np.ndim(mean) else float(mean)
    return type(parts[0])(**values)


def jitter_prosody(rng: np.random.Generator, p: Prosody) -> Prosody:
    # People never say two sentences identically; the jitter also keeps a
    # model from keying on exact parameter values.
    return replace(
        p,
        pitch=p.pitch + rng.uniform(-4, 4),
        speed=p.speed * rng.uniform(0.95, 1.05),
        loudness_db=p.loudness_db + rng.uniform(-1.5, 1.5),
    )


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng not found on PATH: the synthetic corpus needs it for speech; "
            "install the Debian package espeak-ng (apt-get install espeak-ng)"
        )
    return exe


def espeak(text: str, speaker: Speaker, p: Prosody) -> np.ndarray:
    """Speech for one sentence as float32 at SAMPLE_RATE, silence trimmed."""
    pitch = int(round(np.clip(speaker.pitch + p.pitch, 0, 99)))
    speed = int(round(np.clip(speaker.speed * p.speed, 80, 450)))
    # Pitch range has no command-line flag, only SSML; text is escaped for it.
    ssml = f'<speak><prosody range="{p.pitch_range:.0f}%">{escape(text)}</prosody></speak>'
    cmd = [require_espeak(), "-v", speaker.voice, "-p", str(pitch), "-s", str(speed),
           "-g", str(WORD_GAP), "-m", "-z", "--stdin", "--stdout"]
    proc = subprocess.run(cmd, input=ssml.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    audio, rate = parse_wav(proc.stdout)
    audio = trim_silence(resample(audio, rate, SAMPLE_RATE))
    return set_loudness(audio, p.loudness_db + speaker.loudness_db)


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM from espeak-ng's stdout WAV.

    When writing to a pipe espeak-ng cannot seek back to fill in the sizes,
    so the header's lengths are bogus and the `wave` module is no use; the
    data simply runs to the end.
    """
    if data[:4] != b"RIFF" or data[36:40] != b"data":
        raise RuntimeError("espeak-ng produced no WAV data")
    rate = int.from_bytes(data[24:28], "little")
    pcm = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by cutting or padding the spectrum.

    Utterances are a few seconds long, so one FFT over the whole clip is
    cheap and needs neither scipy nor a sox round trip.
    """
    if rate == target or audio.size == 0:
        return audio
    n_out = int(round(audio.size * target / rate))
    # Zero-pad to a length whose FFTs are fast (few, small prime factors) and
    # that maps to a whole number of output samples; the padding is cut off.
    step = rate // np.gcd(rate, target)
    blocks = _smooth_at_least(-(-audio.size // step))
    padded = np.pad(audio, (0, blocks * step - audio.size))
    n_padded_out = blocks * step * target // rate
    spectrum = np.fft.rfft(padded)[: n_padded_out // 2 + 1]
    out = np.fft.irfft(spectrum, n_padded_out) * (n_padded_out / padded.size)
    return out[:n_out].astype(np.float32)


def _smooth_at_least(n: int) -> int:
    """Smallest integer >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def trim_silence(audio: np.ndarray, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading and trailing near-silence so manifest times bound the speech."""
    loud = np.flatnonzero(np.abs(audio) > 0.02 * max(float(np.abs(audio).max()), 1e-6))
    if loud.size == 0:
        return audio
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def set_loudness(audio: np.ndarray, level_db: float) -> np.ndarray:
    """Scale to an RMS level in dBFS, softly limiting the peaks of loud speech."""
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    if rms == 0.0:
        return audio
    return soft_limit(audio * (10 ** (level_db / 20) / rms))


def soft_limit(audio: np.ndarray, knee: float = 0.7, ceiling: float = 0.95) -> np.ndarray:
    """Compress only the samples above `knee` so none passes `ceiling`.

    Turning a whole shouted sentence down until its highest peak fits would
    make it no louder than calm speech; squashing just the peaks keeps the
    level difference, much as a shouting voice itself saturates.
    """
    magnitude = np.abs(audio)
    over = magnitude > knee
    squashed = knee + (ceiling - knee) * np.tanh((magnitude[over] - knee) / (ceiling - knee))
    out = audio.astype(np.float32, copy=True)
    out[over] = np.sign(audio[over]) * squashed
    return out


def mix_session(rng: np.random.Generator, utterances: list[Utterance]) -> np.ndarray:
    """Place utterances on the timeline with silent gaps; returns the session audio.

    Sets each utterance's start_sample, the placement the manifest reports.
    """
    pos = int(round(LEAD_IN_S * SAMPLE_RATE))
    for i, utt in enumerate(utterances):
        if i > 0:
            pos += int(round(rng.uniform(*GAP_S) * SAMPLE_RATE))
        utt.start_sample = pos
        pos = utt.end_sample
    total = pos + int(round(TRAIL_S * SAMPLE_RATE))
    mix = rng.normal(0.0, NOISE_STD, total).astype(np.float32)
    for utt in utterances:
        mix[utt.start_sample : utt.end_sample] += utt.audio
    return np.clip(mix, -1.0, 1.0)


# --------------------------------------------------------------------------- video


@dataclass(frozen=True)
class Expression:
    """Drawn facial features, lengths in units of the face box width."""

    smile: float = 0.0  # mouth corners raised (+) or lowered (-)
    mouth_open: float = 0.012  # gap between the lips
    mouth_width: float = 0.34
    brow_tilt: float = 0.0  # inner brow ends raised (+, sad) or pulled down (-, angry)
    brow_raise: float = 0.0  # both brows up (+) or down (-)
    teeth: float = 0.0  # > 0 shows the upper teeth (a laughing or clenched mouth)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # BGR gain on the face


LABEL_EXPRESSIONS = {
    "neutral": Expression(),
    "happiness": Expression(smile=0.09, mouth_open=0.05, mouth_width=0.46, brow_raise=0.015,
                            teeth=1.0, tint=(0.98, 1.0, 1.04)),
    "sadness": Expression(smile=-0.08, mouth_open=0.012, mouth_width=0.32, brow_tilt=0.07,
                          brow_raise=-0.01, tint=(1.06, 1.0, 0.95)),
    "anger": Expression(smile=-0.035, mouth_open=0.03, mouth_width=0.38, brow_tilt=-0.08,
                        brow_raise=-0.03, teeth=1.0, tint=(0.94, 0.96, 1.1)),
    "surprise": Expression(smile=0.0, mouth_open=0.16, mouth_width=0.22, brow_raise=0.08),
}


def expression_for(labels: list[str], video_cue: bool) -> Expression:
    """Expression of the labels (a blend for a pair), neutral without the cue."""
    if not video_cue:
        return LABEL_EXPRESSIONS["neutral"]
    return average([LABEL_EXPRESSIONS[label] for label in labels])


class Face:
    """A real face photo with its own mouth and brows painted out, ready for drawing.

    Feature positions are fractions of the Haar face box found on the photo,
    the same box the runtime's detector will look for.
    """

    BROW_Y, MOUTH_Y = 0.29, 0.785  # fractions of the box height
    BROWS = ((0.22, 0.43), (0.78, 0.57))  # (outer end, inner end) x, fractions of the box width

    def __init__(self, path: Path):
        image = cv2.imread(str(path))
        if image is None:
            raise RuntimeError(f"face asset missing or unreadable: {path}")
        self.box = detect_face_box(image)
        if self.box is None:
            raise RuntimeError(f"no face found in asset {path}")
        self.skin = self._skin_colour(image)
        self.blank = self._paint_out_features(image)
        size = image.shape[0]
        # Soft elliptical edge so the square photo blends into the session background.
        yy, xx = np.mgrid[0:size, 0:size]
        r = np.hypot((xx - size / 2) / (size * 0.48), (yy - size / 2) / (size * 0.5))
        self.alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0).astype(np.float32)

    def _px(self, fx: float, fy: float) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + fx * w, y + fy * h

    def _skin_colour(self, image: np.ndarray) -> np.ndarray:
        # Median of both cheeks: lit like the mouth area, free of hair and brows.
        patches = []
        for fx in (0.3, 0.7):
            cx, cy = (int(v) for v in self._px(fx, 0.62))
            patches.append(image[cy - 4 : cy + 4, cx - 4 : cx + 4].reshape(-1, 3))
        return np.median(np.concatenate(patches), axis=0)

    def _paint_out_features(self, image: np.ndarray) -> np.ndarray:
        _, _, w, h = self.box
        mask = np.zeros(image.shape[:2], np.float32)
        mx, my = self._px(0.5, self.MOUTH_Y)
        cv2.ellipse(mask, (int(mx), int(my)), (int(0.27 * w), int(0.09 * h)), 0, 0, 360, 1.0, -1)
        for outer, inner in self.BROWS:
            bx, by = self._px((outer + inner) / 2, self.BROW_Y - 0.01)
            cv2.ellipse(mask, (int(bx), int(by)), (int(0.14 * w), int(0.045 * h)), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.02 * w)[..., None]
        # Keep the photo's skin texture a little so the patch does not look flat.
        skin = 0.8 * self.skin + 0.2 * cv2.GaussianBlur(image, (0, 0), 3).astype(np.float32)
        return (image * (1 - mask) + skin * mask).astype(np.uint8)

    def draw(self, expr: Expression, speaking_open: float = 0.0) -> np.ndarray:
        """The face with an expression; speaking_open (0..1) opens the mouth further."""
        image = self.blank.copy()
        x, y, w, h = self.box
        thick = max(2, int(round(0.035 * w)))
        brow_colour = tuple(int(c) for c in self.skin * 0.3)
        base = y + (self.BROW_Y - expr.brow_raise) * h
        for outer, inner in self.BROWS:
            ox, ix = x + outer * w, x + inner * w
            # A gentle arch; the tilt moves only the inner end (up: sad, down: angry).
            pts = [(ox, base + 0.01 * h), ((ox + ix) / 2, base - 0.02 * h), (ix, base - expr.brow_tilt * h)]
            cv2.polylines(image, [np.int32(pts)], False, brow_colour, thick, cv2.LINE_AA)
        self._draw_mouth(image, expr, speaking_open)
        return image

    def _draw_mouth(self, image: np.ndarray, expr: Expression, speaking_open: float) -> None:
        _, _, w, _ = self.box
        cx, cy = self._px(0.5, self.MOUTH_Y)
        half = expr.mouth_width * w / 2
        gap = (expr.mouth_open + 0.05 * speaking_open) * w / 2
        u = np.linspace(-1.0, 1.0, 21)
        centre = cy - expr.smile * w * u**2  # a parabola: corners up for a smile
        bulge = np.sqrt(1.0 - u**2)
        xs = cx + u * half
        upper = np.stack([xs, centre - gap * bulge], axis=1)
        lower = np.stack([xs, centre + gap * bulge], axis=1)
        inside = np.int32(np.concatenate([upper, lower[::-1]]) * 4)  # 2 fractional bits
        cv2.fillPoly(image, [inside], (35, 25, 45), cv2.LINE_AA, shift=2)
        if expr.teeth > 0 and gap > 2:
            teeth = np.concatenate([upper, (upper + lower)[::-1] / 2])
            cv2.fillPoly(image, [np.int32(teeth * 4)], (225, 230, 235), cv2.LINE_AA, shift=2)
        lip = tuple(int(c) for c in self.skin * np.array([0.55, 0.5, 0.75]))
        thick = max(2, int(round(0.03 * w)))
        for curve in (upper, lower):
            cv2.polylines(image, [np.int32(curve * 4)], False, lip, thick, cv2.LINE_AA, shift=2)


@lru_cache(maxsize=1)
def _cascade():
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV Haar cascade not found at {path}: install opencv-python-headless<5")
    return cascade


def detect_face_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest Haar face (x, y, w, h), with the settings the runtime uses."""
    grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    boxes = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4, minSize=(40, 40))
    if len(boxes) == 0:
        return None
    return tuple(int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))


@lru_cache(maxsize=None)
def load_face(speaker: str) -> Face:
    return Face(ASSETS / FACE_FILES[speaker])


class FrameRenderer:
    """Places a face in the 320x240 frame with smooth head motion."""

    PROBE_TIMES = (0.0, 2.5, 5.0, 7.5)  # seconds at which a new look is checked
    MAX_TRIES = 10

    def __init__(self, rng: np.random.Generator, speakers: dict[str, Speaker]):
        self.speakers = speakers
        # The Haar detector is fickle: a rare mix of background colour,
        # brightness and head pose hides a face on most frames of a session.
        # Such a session is useless for the video branch, so redraw the look
        # until both faces are found at every probe.
        for _ in range(self.MAX_TRIES):
            self._draw_look(rng)
            if self._faces_detectable():
                return
        raise RuntimeError("no session look found in which the Haar detector sees both faces")

    def _draw_look(self, rng: np.random.Generator) -> None:
        # Background: a plain muted colour with a vertical gradient, per session.
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(30, 160, 3)
        ramp = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]
        self.background = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        # Head motion: a sum of slow sinusoids with random phases, so it is
        # smooth like a real head and different in every session.
        self.freqs = rng.uniform(0.1, 0.6, (3, 2))
        self.phases = rng.uniform(0, 2 * np.pi, (3, 2))
        self.brightness = rng.uniform(0.85, 1.15)

    def _faces_detectable(self) -> bool:
        neutral = LABEL_EXPRESSIONS["neutral"]
        return all(
            detect_face_box(self.render(speaker, neutral, 0.0, t, False)) is not None
            for speaker in self.speakers
            for t in self.PROBE_TIMES
        )

    def _motion(self, t: float, speaking: bool) -> tuple[float, float, float]:
        wave = np.sin(2 * np.pi * self.freqs * t + self.phases).sum(axis=1) / 2
        amount = 1.6 if speaking else 1.0  # speakers move their heads more
        dx, dy, angle = wave * amount * np.array([4.0, 3.0, 2.5])
        return float(dx), float(dy), float(angle)

    def render(self, speaker: str, expr: Expression, speaking_open: float, t: float, speaking: bool) -> np.ndarray:
        face = load_face(speaker)
        spk = self.speakers[speaker]
        gain = tuple(float(c) * self.brightness for c in expr.tint) + (0.0,)
        image = cv2.multiply(face.draw(expr, speaking_open), gain, dtype=cv2.CV_8U)  # per-channel, saturating
        dx, dy, angle = self._motion(t, speaking)
        size = image.shape[0]
        scale = spk.face_scale * FACE_WIDTH / face.box[2]
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        matrix[:, 2] += (WIDTH / 2 + spk.face_offset[0] + dx - size / 2, HEIGHT / 2 + spk.face_offset[1] + dy - size / 2)
        warped = cv2.warpAffine(image, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(face.alpha, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        return cv2.blendLinear(warped, self.background, alpha, 1.0 - alpha)


def speech_envelope(audio: np.ndarray, t: float, window_s: float = 0.05) -> float:
    """RMS loudness around time t, 0 at silence; drives the talking mouth."""
    c = int(t * SAMPLE_RATE)
    half = int(window_s * SAMPLE_RATE)
    chunk = audio[max(c - half, 0) : c + half]
    return float(np.sqrt(np.mean(chunk**2))) if chunk.size else 0.0


def session_frames(rng: np.random.Generator, speakers: dict[str, Speaker],
                   utterances: list[Utterance], audio: np.ndarray):
    """Yields the BGR frames of a session, FPS per second, covering the audio."""
    renderer = FrameRenderer(rng, speakers)
    n_frames = int(np.ceil(len(audio) / SAMPLE_RATE * FPS))
    expressions = [expression_for(u.labels, u.cues["video"]) for u in utterances]
    peaks = [max(float(np.sqrt(np.mean(u.audio**2))) * 2.0, 1e-4) for u in utterances]
    current = 0  # utterance now playing or last played
    for i in range(n_frames):
        t = i / FPS
        sample = int(round(t * SAMPLE_RATE))
        while current + 1 < len(utterances) and sample >= utterances[current + 1].start_sample:
            current += 1
        utt = utterances[current]
        if utt.start_sample <= sample < utt.end_sample:
            opening = min(speech_envelope(audio, t) / peaks[current], 1.0)
            yield renderer.render(utt.speaker, expressions[current], opening, t, True)
        else:
            # Silence: the last speaker (the first one before anyone spoke) listens, neutral.
            yield renderer.render(utt.speaker, LABEL_EXPRESSIONS["neutral"], 0.0, t, False)


# --------------------------------------------------------------------------- muxing


def write_mp4(path: Path, audio: np.ndarray, frames) -> None:
    """Mux BGR frames (FPS) and mono float audio (SAMPLE_RATE) into an mp4."""
    from engines.media import MediaWriter

    fed = 0
    with MediaWriter(path, FPS, WIDTH, HEIGHT, SAMPLE_RATE) as writer:
        for i, image in enumerate(frames):
            writer.video(image)
            # Keep audio in step with video so the muxer interleaves without buffering.
            until = min(len(audio), int((i + 1) * SAMPLE_RATE / FPS))
            writer.audio(audio[fed:until])
            fed = max(fed, until)
        writer.audio(audio[fed:])


# --------------------------------------------------------------------------- sessions


def session_rng(seed: int, index: int) -> np.random.Generator:
    # Independent stream per session: results do not depend on how many
    # sessions are made or in which order workers render them.
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def render_session(out_dir: Path, index: int, seed: int, n_utterances: int) -> list[dict]:
    """Writes one session's mp4; returns its manifest rows."""
    rng = session_rng(seed, index)
    speakers, utterances = plan_session(rng, n_utterances)
    for utt in utterances:
        prosody = jitter_prosody(rng, prosody_for(utt.labels, utt.cues["audio"]))
        utt.audio = espeak(utt.text, speakers[utt.speaker], prosody)
    audio = mix_session(rng, utterances)
    name = f"s{index:03d}"
    write_mp4(out_dir / f"{name}.mp4", audio, session_frames(rng, speakers, utterances, audio))
    return [
        {
            "session": name,
            "file": f"{name}.mp4",
            "index": utt.index,
            "start": round(utt.start_sample / SAMPLE_RATE, 3),
            "end": round(utt.end_sample / SAMPLE_RATE, 3),
            "text": utt.text,
            "speaker": utt.speaker,
            "labels": list(utt.labels),
            "cues": dict(utt.cues),
        }
        for utt in utterances
    ]


def generate(
    out_dir: str | Path,
    sessions: int,
    seed: int,
    utterances_per_session: int = 6,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Writes out_dir/s000.mp4 ..., out_dir/manifest.jsonl, out_dir/labels.json; returns manifest path.

    workers: processes rendering sessions in parallel (default: one per CPU).
    """
    if sessions < 1 or utterances_per_session < 1:
        raise ValueError("sessions and utterances_per_session must be >= 1")
    require_espeak()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for speaker in FACE_FILES:
        load_face(speaker)  # fail early, before any worker starts, if an asset is broken
    workers = max(1, min(workers or _cpu_count(), sessions))
    jobs = [(out_dir, i, seed, utterances_per_session) for i in range(sessions)]
    with ExitStack() as stack:
        if workers == 1:
            results = map(_render_job, jobs)
        else:
            # spawn, not fork: the caller may already hold threads (torch, tqdm)
            # that a forked child would inherit in a broken state.
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            )
            results = pool.map(_render_job, jobs)  # yields in session order
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=sessions, desc="synth sessions", unit="session")
        rows = [row for session_rows in results for row in session_rows]
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out_dir / "labels.json").write_text(json.dumps({"labels": list(LABELS)}, indent=2) + "\n")
    return manifest


def _render_job(job: tuple) -> list[dict]:
    return render_session(*job)


def _cpu_count() -> int:
    # CPUs this process may use, which in a container can be fewer than the machine's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
