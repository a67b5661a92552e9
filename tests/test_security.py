"""Who can read the emotion stream: loopback by default, CURVE keys for anything else.

Real `realtime` processes, real sockets: a listener with the right keys receives the
stream; one without keys, or with a key the server does not know, receives nothing.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from realtime import protocol
from realtime.config import StreamOptions
from realtime.framework import Endpoints
from realtime.pipeline import private_workdir
from realtime.security import PublicSocket, generate_keys
from tests.conftest import free_port


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_keys_are_private_and_never_overwritten(tmp_path):
    result = _cli("keys", "--out", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    keys = tmp_path / "keys"
    for name in ("server", "client"):
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
        assert "secret-key" in (keys / f"{name}.key_secret").read_text()
        assert "secret-key" not in (keys / f"{name}.key").read_text()
    assert (keys / "clients" / "client.key").read_text() == (keys / "client.key").read_text()
    before = (keys / "server.key_secret").read_text()
    again = _cli("keys", "--out", str(keys))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (keys / "server.key_secret").read_text() == before


@pytest.mark.parametrize("command", ["replay", "serve"])
def test_a_public_endpoint_needs_keys(tmp_path, command):
    args = [command, *(["session.mp4"] if command == "replay" else []), "--model", str(tmp_path),
            "--endpoint", f"tcp://0.0.0.0:{free_port()}"]
    result = _cli(*args)
    assert result.returncode == 2
    assert "stream" in result.stderr and "realtime keys" in result.stderr and "Traceback" not in result.stderr
    # Half a key setup is refused too, naming what is missing.
    half = _cli(*args, "--set", f"stream.curve_secret_key={tmp_path}/server.key_secret")
    assert half.returncode == 2 and "curve_clients" in half.stderr


def test_missing_key_files_are_named(tmp_path):
    from common.settings import ConfigError
    from realtime.security import check_server_keys

    options = StreamOptions(endpoint="tcp://0.0.0.0:5555", curve_secret_key=str(tmp_path / "nope.key_secret"),
                            curve_clients=str(tmp_path))
    with pytest.raises(ConfigError, match="stream.curve_secret_key.*nope.key_secret"):
        check_server_keys(options)


def test_only_a_client_with_an_allowed_key_reads_the_stream(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    stranger = generate_keys(tmp_path / "stranger")  # a valid key pair the server was not told about
    port = free_port()
    options = StreamOptions(endpoint=f"tcp://0.0.0.0:{port}", curve_secret_key=str(keys["server_secret"]),
                            curve_clients=str(keys["clients"]))
    ctx = zmq.Context()
    public = PublicSocket(ctx, options)
    stop = threading.Event()

    def publish():
        seq = 0
        while not stop.is_set():
            public.sock.send_multipart(protocol.encode({"protocol": protocol.PROTOCOL, "type": "status",
                                                        "session": "s", "seq": seq, "state": "started"}))
            seq += 1
            time.sleep(0.05)

    endpoint = f"tcp://127.0.0.1:{port}"
    listeners = {
        "allowed": ["--curve-key", str(keys["client_secret"]), "--server-key", str(keys["server_public"])],
        "no keys": [],
        "unknown key": ["--curve-key", str(stranger["client_secret"]), "--server-key", str(keys["server_public"])],
        "wrong server key": ["--curve-key", str(keys["client_secret"]),
                             "--server-key", str(stranger["server_public"])],
    }
    # How the server refused the listeners with keys (libzmq's handshake events): a hello sealed
    # for another server key, a client key ZAP turns away.  One without CURVE may be refused by
    # either side first (a mechanism mismatch), so for it the server may see only a disconnect.
    refusals = {(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC),
                (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)}
    monitor = public.sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
    procs = {}
    # From here on only the sender thread uses the publishing socket.
    sender = threading.Thread(target=publish, daemon=True)
    sender.start()
    try:
        for name, extra in listeners.items():
            out = tmp_path / f"{name.replace(' ', '_')}.jsonl"
            procs[name] = (out, subprocess.Popen(
                [sys.executable, "-m", "realtime.cli", "listen", "--endpoint", endpoint, "--count", "3",
                 "--jsonl", str(out), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        out, allowed = procs["allowed"]
        allowed.wait(timeout=30)
        assert allowed.returncode == 0, allowed.stderr.read()
        assert len(out.read_text().splitlines()) == 3
        # Wait until every listener's connection has ended: the allowed one's (it has exited) and
        # the three refused ones' (libzmq does not retry a failed handshake).
        seen, disconnects, deadline = set(), 0, time.monotonic() + 30
        while not (refusals <= seen and disconnects >= 4) and time.monotonic() < deadline:
            if monitor.poll(200):
                event = recv_monitor_message(monitor)
                seen.add((event["event"], event["value"]))
                disconnects += event["event"] == zmq.EVENT_DISCONNECTED
        assert refusals <= seen and disconnects >= 4, (seen, disconnects)  # each has tried, and been refused
        for name in ("no keys", "unknown key", "wrong server key"):
            out, proc = procs[name]
            assert proc.poll() is None, f"{name}: listener ended: {proc.stderr.read()}"
            assert not out.exists() or out.read_text() == "", f"{name}: received the stream"
    finally:
        stop.set()
        sender.join(2)
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait(5)
        public.close()
        ctx.destroy(linger=0)


def test_internal_sockets_are_private_to_the_user():
    with private_workdir() as workdir:
        assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
        assert os.stat(workdir).st_uid == os.getuid()
        endpoints = Endpoints.in_dir(workdir)
        for endpoint in vars(endpoints).values():
            assert endpoint.startswith(f"ipc://{workdir}/")
    assert not os.path.exists(workdir)


def test_the_default_stream_is_loopback():
    from realtime.security import is_local

    assert is_local(StreamOptions().endpoint)
    assert not is_local("tcp://0.0.0.0:5555") and not is_local("tcp://*:5555")
    assert not is_local("tcp://192.168.1.4:5555") and is_local("tcp://[::1]:5555")
