"""Who may read the emotion stream: loopback only, unless CURVE encryption is set up.

Emotions are personal data.  The public stream binds to loopback by default; to
publish it to other machines the stream is encrypted with ZeroMQ's CURVE and only
subscribers whose public key is in an allowed directory are let in:

    realtime keys --out keys
    realtime serve --endpoint tcp://0.0.0.0:5555 \\
        --set stream.curve_secret_key=keys/server.key_secret --set stream.curve_clients=keys/clients
    realtime listen --endpoint tcp://HOST:5555 --curve-key keys/client.key_secret --server-key keys/server.key

Key files are ZeroMQ certificates (z85 text, the format of `zmq.auth`); secret ones
are written mode 0600.  Internal sockets never leave the machine: they are ipc
sockets in a directory only this user can enter (realtime.pipeline).
"""
from __future__ import annotations

import os
import shutil
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

from common.settings import ConfigError

KEY_NAMES = ("server", "client")


def is_local(endpoint: str) -> bool:
    """True for endpoints other machines cannot reach: tcp on a loopback address, ipc, inproc."""
    scheme = endpoint.partition("://")[0]
    if scheme != "tcp":
        return True
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from outside


def generate_keys(out: str | Path) -> dict[str, Path]:
    """A server and a client key pair in `out`, plus `out/clients/` holding the client's public key.

    Refuses to overwrite existing keys (a new server key locks every client out)."""
    out = Path(out)
    existing = [out / f"{name}{ext}" for name in KEY_NAMES for ext in (".key", ".key_secret")]
    existing = [p for p in existing if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; remove it or choose another --out")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    clients = out / "clients"
    clients.mkdir(mode=0o755, exist_ok=True)
    old = os.umask(0o077)  # the secret file is created private, not made private after the fact
    try:
        files = {}
        for name in KEY_NAMES:
            public, secret = zmq.auth.create_certificates(out, name)
            os.chmod(public, 0o644)
            files[f"{name}_public"], files[f"{name}_secret"] = Path(public), Path(secret)
    finally:
        os.umask(old)
    shutil.copy(files["client_public"], clients / "client.key")
    os.chmod(clients / "client.key", 0o644)
    files["clients"] = clients
    return files


def _load(path: str, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read key file {path}: {exc}") from exc
    if secret and private is None:
        raise ConfigError(f"{key}: {path} holds no secret key (use the .key_secret file)")
    return public, private


def check_server_keys(options) -> None:
    """Raise ConfigError naming the setting when [stream]'s key files cannot be used."""
    if options.curve_secret_key:
        _load(options.curve_secret_key, "stream.curve_secret_key", secret=True)
        clients = Path(options.curve_clients)
        if not clients.is_dir():
            raise ConfigError(f"stream.curve_clients: {clients} is not a directory")
        if not any(clients.glob("*.key")):
            raise ConfigError(f"stream.curve_clients: {clients} holds no public key (*.key): nobody could subscribe")


class PublicSocket:
    """The public XPUB socket, CURVE-encrypted when [stream] has keys; close() stops the authenticator."""

    def __init__(self, ctx: zmq.Context, options):
        self.auth = None
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        # Subscribers only send subscriptions (a topic each): nothing large is ever ours.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        # PUB never waits for a subscriber: past this many queued messages it drops that
        # subscriber's, so one that stops reading slows no one and grows no memory.
        self.sock.setsockopt(zmq.SNDHWM, options.subscriber_queue)
        if options.curve_secret_key:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = _load(options.curve_secret_key, "stream.curve_secret_key", secret=True)
            # The ZAP handler: a client whose public key is not in curve_clients is refused
            # during the handshake, so it never receives a byte of the stream.
            self.auth = ThreadAuthenticator(ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=options.curve_clients)
            self.sock.curve_secretkey, self.sock.curve_publickey = secret, public
            self.sock.curve_server = True
        try:
            self.sock.bind(options.endpoint)
        except zmq.ZMQError:
            self.close()
            raise

    def close(self) -> None:
        self.sock.close(linger=1000)
        if self.auth is not None:
            self.auth.stop()


def client_keys(sock: zmq.Socket, client_secret_file: str, server_public_file: str) -> None:
    """Make `sock` a CURVE client: its own key pair and the server's public key."""
    public, secret = _load(client_secret_file, "--curve-key", secret=True)
    server, _ = _load(server_public_file, "--server-key", secret=False)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server
