"""`realtime dashboard`: the emotion stream as a live web page on localhost.

A small aiohttp server subscribes to the ZeroMQ stream and passes every message
body, unchanged, to each browser connected on its WebSocket (`/ws`); the page
(`realtime/web/`) draws it with the vendored uPlot, so it needs no network.
It binds 127.0.0.1 only: emotions are personal data, as for the stream itself.

The server keeps the current session's messages (from its `started` status) and
sends them first to a page that connects late or reconnects, so opening the page
in the middle of a session shows the whole session so far.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from pathlib import Path

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from common.errors import UserError
from realtime import protocol

HOST = "127.0.0.1"
WEB = Path(__file__).parent / "web"
HISTORY_LIMIT = 50_000  # messages kept for late pages: about 3 hours of 4 Hz window updates
CLIENT_QUEUE = 1_000  # messages a slow page may fall behind before it is disconnected


class Bridge:
    """ZeroMQ SUB -> every connected WebSocket, plus the session so far for newcomers."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.history: deque[str] = deque(maxlen=HISTORY_LIMIT)
        self.clients: set[asyncio.Queue] = set()

    async def pump(self) -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.SUBSCRIBE, "")
        sock.connect(self.endpoint)  # a publisher that binds later is joined when it does
        try:
            while True:
                try:
                    _, body = protocol.decode(await sock.recv_multipart())
                except ValueError:
                    continue  # not a protocol message: nothing a page could draw
                if not isinstance(body, dict) or not protocol.compatible(body.get("protocol")):
                    continue
                if body.get("type") == "status" and body.get("state") == "started":
                    self.history.clear()  # a new session: late pages need only this one
                text = json.dumps(body, ensure_ascii=False)
                self.history.append(text)
                for queue in list(self.clients):
                    try:
                        queue.put_nowait(text)
                    except asyncio.QueueFull:
                        # A page that cannot keep up would hold every other one back.
                        self.clients.discard(queue)
                        while not queue.empty():
                            queue.get_nowait()
                        queue.put_nowait(None)
        finally:
            ctx.destroy(linger=0)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
        backlog = list(self.history)
        self.clients.add(queue)

        async def drain_incoming() -> None:  # the page sends nothing; this notices it close
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break

        reader = asyncio.create_task(drain_incoming())
        try:
            for text in backlog:
                await ws.send_str(text)
            while not ws.closed:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                text = getter.result()
                if text is None:
                    break  # dropped for falling behind; the page reconnects and catches up
                await ws.send_str(text)
        except ConnectionResetError:
            pass
        finally:
            self.clients.discard(queue)
            reader.cancel()
            await ws.close()
        return ws


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "dashboard.html")


def make_app(endpoint: str) -> web.Application:
    bridge = Bridge(endpoint)
    app = web.Application()
    app.router.add_get("/", _index)
    app.router.add_get("/ws", bridge.websocket)
    app.router.add_static("/static/", WEB, follow_symlinks=False)

    async def start_pump(app: web.Application):
        task = asyncio.create_task(bridge.pump())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    app.cleanup_ctx.append(start_pump)
    app["bridge"] = bridge
    return app


async def start(endpoint: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve on 127.0.0.1:port (0: any free port); returns the runner and the port bound."""
    runner = web.AppRunner(make_app(endpoint), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot serve the dashboard on {HOST}:{port}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0][1]
    return runner, bound


def url(port: int) -> str:
    return f"http://{HOST}:{port}/"


def run(endpoint: str, port: int, on_ready=None) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt reaches the caller)."""

    async def main() -> None:
        runner, bound = await start(endpoint, port)
        if on_ready:
            on_ready(bound)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class DashboardThread:
    """The dashboard inside another command (`realtime serve --dashboard`): its own event
    loop in a daemon thread, so the command's main thread keeps its signal handling."""

    def __init__(self, endpoint: str, port: int):
        self.endpoint, self.port = endpoint, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            runner, self.port = await start(self.endpoint, self.port)
        except BaseException as exc:  # handed to the starting thread, which reports it
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> int:
        """Start serving; returns the port, or raises what kept it from starting."""
        self.thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self.port

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(5)
