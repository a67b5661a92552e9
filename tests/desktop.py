"""A virtual desktop for the live-capture tests, with no screen or sound card: an X server
(Xvfb) and a PulseAudio daemon of null sinks, both real and private to one test.

Each skips, saying why, where its Debian package is missing (scripts/setup.sh installs
`xvfb` and `pulseaudio`)."""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest


@contextmanager
def pulse_daemon(runtime_dir, *modules: str):
    """A PulseAudio daemon with these modules (`--load` arguments) on its own socket in
    runtime_dir; yields the environment that reaches it (paplay, pactl, PyAudio's pulse device)."""
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages pulseaudio, pulseaudio-utils): no virtual sound")
    pytest.importorskip("pyaudio", reason="pyaudio (extra `live`) is needed for the microphone source")
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    env.pop("PULSE_SERVER", None)  # the private socket, not a server of the machine
    os.makedirs(runtime_dir, exist_ok=True)
    subprocess.run(["pulseaudio", "-D", "-n", "--exit-idle-time=-1", "--disallow-exit",
                    "--load=module-native-protocol-unix", *(f"--load={m}" for m in modules)],
                   env=env, check=True, capture_output=True, timeout=30)
    try:
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


@contextmanager
def xvfb(width: int = 640, height: int = 480):
    """An Xvfb screen (24-bit, black background) on a free display; yields the environment
    with DISPLAY set to it."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (Debian package xvfb): no X display to capture")
    read, write = os.pipe()
    # -displayfd: Xvfb picks a free display number and writes it here once it accepts clients.
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24",
                               "-br", "-nolisten", "tcp"], pass_fds=(write,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError(f"Xvfb did not start: {server.communicate(timeout=10)[1].decode()[-500:]}")
        yield dict(os.environ, DISPLAY=f":{number}")
    finally:
        server.terminate()
        server.wait(timeout=10)
