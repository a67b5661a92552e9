"""Shared fixtures: one small synthetic corpus, one trained run and its bundle per test session;
a virtual microphone and a spoken session for the tests of live capture (per test).  Shared
helpers that are not fixtures are in tests/helpers.py.

They are real (espeak-ng speech, face video, a trained student, ONNX export), only small.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: models come from the offline extra

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def need(name: str) -> Path:
    """The shared corpus `name` (../shared/data/NAME), or a skip that says it is absent."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data are not on this machine)")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from trainer.synth import generate

    out = tmp_path_factory.mktemp("corpus")
    generate(out, sessions=5, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def held_out_session(tmp_path_factory) -> Path:
    """A session the model never saw (another seed)."""
    from trainer.synth import generate

    out = tmp_path_factory.mktemp("session")
    generate(out, sessions=1, seed=4242, progress=False)
    return out


@pytest.fixture(scope="session")
def two_people_session(tmp_path_factory) -> Path:
    """A short `trainer synth --people 2` session: A on the left, B on the right, taking turns."""
    from trainer.cli import main

    out = tmp_path_factory.mktemp("two_people")
    assert main(["--no-progress", "synth", "--out", str(out), "--sessions", "1", "--seed", "11",
                 "--utterances", "8", "--people", "2"]) in (0, None)
    return out


@pytest.fixture(scope="session")
def run_dir(corpus, tmp_path_factory) -> Path:
    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from trainer.fit import TrainOptions, fit

    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    fit(f"synthetic:{corpus}", out, TrainOptions(epochs=3, dim=64, cache_dir=str(cache)),
        Preprocessing(), FaceOptions(), progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(run_dir, tmp_path_factory) -> Path:
    from trainer.export import export

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export(run_dir, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def virtual_microphone(tmp_path):
    """A PulseAudio daemon with a null sink `virtmic_sink` whose monitor is the source `virtmic`."""
    from tests.desktop import pulse_daemon

    with pulse_daemon(tmp_path / "pulse", "module-null-sink sink_name=virtmic_sink rate=16000 channels=1",
                      "module-remap-source master=virtmic_sink.monitor source_name=virtmic") as env:
        yield dict(env, PULSE_SOURCE="virtmic")


@pytest.fixture
def spoken_session(held_out_session, tmp_path):
    """The held-out session's manifest, its mp4 (the camera) and its speech as a wav (the microphone)."""
    import json

    from engines.media import read_media
    from tests.helpers import write_pcm_wav

    truth = [json.loads(l) for l in (held_out_session / "manifest.jsonl").read_text().splitlines()]
    media = held_out_session / truth[0]["file"]
    audio, _, _ = read_media(media, 16000)
    wav = tmp_path / "speech.wav"
    write_pcm_wav(wav, audio, 16000)
    return truth, media, wav, len(audio) / 16000
