"""`trainer data fetch` against a real HTTP server on loopback that serves ../shared/data's
files under the public URLs' paths (no internet here): success, a corrupted file, a transfer
cut short (resumed, or restarted where the server ignores ranges), a server that is down."""
from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import need
from trainer.cli import main
from trainer.fetch import CORPORA, IEMOCAP_NOTE, FetchError, fetch
from trainer.recipe import FOLDERS, corpus_specs

MELD_DEV = next(r for r in CORPORA["meld"].files if r.name == "dev_sent_emo.csv")


class Server(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes); `corrupt`, `cut` and `ranges` make it misbehave."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.corrupt: set[str] = set()  # paths served with one byte changed
        self.cut: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
        self.ranges = True  # honour Range requests (206); False: always the whole file (200)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self):
        server, path = self.server, self.path
        server.requests.append((path, self.headers.get("Range")))
        if path not in server.files:
            self.send_error(404)
            return
        body = server.files[path]
        if path in server.corrupt:
            body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and server.ranges:
            start, status = int(wanted.removeprefix("bytes=").rstrip("-")), 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if path in server.cut:  # the length promised, then the connection drops part-way
            self.wfile.write(body[start:server.cut.pop(path)])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    files = {}
    for source in CORPORA.values():
        folder = need(source.folder)
        for remote in source.files:
            files[remote.path] = (folder / remote.name).read_bytes()
    srv = Server(files)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


def test_recorded_hashes_are_shared_datas():
    for name, source in CORPORA.items():
        folder = need(source.folder)
        assert source.folder in FOLDERS.values(), f"{name}: [recipe] data_root has no {source.folder}/"
        assert {r.name for r in source.files} == {p.name for p in folder.iterdir()}, name
        for remote in source.files:
            data = (folder / remote.name).read_bytes()
            assert (remote.size, remote.sha256) == (len(data), hashlib.sha256(data).hexdigest()), remote.name


def test_fetch_lays_out_checked_corpora(server, tmp_path):
    root = tmp_path / "data"
    assert main(["--no-progress", "data", "fetch", "--to", str(root), "--base-url", server.url + "/"]) == 0
    for source in CORPORA.values():
        for remote in source.files:
            assert (root / source.folder / remote.name).read_bytes() == server.files[remote.path]
    assert leftovers(root) == []
    assert set(corpus_specs(root, ["meld", "goemotions-ekman"])) == {"meld", "goemotions-ekman"}
    served = len(server.requests)
    assert served == sum(len(s.files) for s in CORPORA.values())
    fetch(["meld", "goemotions"], root, server.url, progress=False, log=lambda m: None)
    assert len(server.requests) == served  # every file was there and checked: nothing fetched again


def test_corrupted_file_is_refused(server, tmp_path):
    server.corrupt.add(MELD_DEV.path)
    bad = server.files[MELD_DEV.path]
    bad = hashlib.sha256(bad[:100] + bytes([bad[100] ^ 1]) + bad[101:]).hexdigest()
    with pytest.raises(FetchError) as caught:
        fetch(["meld"], tmp_path, server.url, progress=False, log=lambda m: None)
    message = str(caught.value)
    assert "meld/dev_sent_emo.csv" in message and bad in message and MELD_DEV.sha256 in message
    assert not (tmp_path / "meld" / "dev_sent_emo.csv").exists()
    assert leftovers(tmp_path) == []  # the bad bytes are not kept to resume from


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_cut_download_resumes_or_restarts(server, tmp_path, ranges):
    server.ranges = ranges
    server.cut[MELD_DEV.path] = 50_000
    fetch(["meld"], tmp_path, server.url, progress=False, log=lambda m: None)
    assert (tmp_path / "meld" / "dev_sent_emo.csv").read_bytes() == server.files[MELD_DEV.path]
    asked = [rng for path, rng in server.requests if path == MELD_DEV.path]
    assert asked == [None, "bytes=50000-"]  # the second transfer asked for the rest only
    assert leftovers(tmp_path) == []


def test_partial_file_of_a_killed_run_is_resumed(server, tmp_path):
    (tmp_path / "meld").mkdir()
    (tmp_path / "meld" / ".dev_sent_emo.csv.download").write_bytes(server.files[MELD_DEV.path][:1234])
    fetch(["meld"], tmp_path, server.url, progress=False, log=lambda m: None)
    assert (tmp_path / "meld" / "dev_sent_emo.csv").read_bytes() == server.files[MELD_DEV.path]
    assert (MELD_DEV.path, "bytes=1234-") in server.requests


def test_server_down_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--no-progress", "data", "fetch", "meld", "--to", str(tmp_path),
                 "--base-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainer data: error: cannot reach "
                                               f"http://127.0.0.1:{port}/declare-lab/MELD/"), err
    assert not (tmp_path / "meld").exists()  # no empty folder that `recipe real --check` would take for MELD


def test_missing_file_and_iemocap(server, tmp_path, capsys):
    del server.files[MELD_DEV.path]
    with pytest.raises(FetchError, match="dev_sent_emo.csv: HTTP 404"):
        fetch(["meld"], tmp_path, server.url, progress=False, log=lambda m: None)
    assert main(["data", "fetch", "iemocap", "--to", str(tmp_path)]) == 2  # nothing asked of any server
    err = capsys.readouterr().err
    assert IEMOCAP_NOTE in err and "https://sail.usc.edu/iemocap/" in err and "IEMOCAP_{train,dev,test}.csv" in err
    assert main(["data", "fetch", "elderreact", "--to", str(tmp_path)]) == 2
    assert "unknown corpus elderreact" in capsys.readouterr().err
