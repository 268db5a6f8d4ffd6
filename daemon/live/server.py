"""The websockets server: one port, captions broadcast to every client, `GET /health` beside them.

Each client has a bounded send queue drained by its own task, so a slow client only ever delays itself:
when its queue overflows it is closed with CLOSE_TOO_SLOW. Messages are serialised once per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from daemon.errors import DaemonError
from daemon.live.messages import BadMessage, Command, Error, Event, Final, Hello, parse_command

log = logging.getLogger(__name__)

SEND_QUEUE = 256  # messages waiting for one client before it counts as too slow
CLOSE_TOO_SLOW = 4008
CLOSE_SHUTDOWN = 1001
RECENT_FINALS = 50  # finals replayed in `hello`


@dataclass(eq=False)  # identity, so clients can live in a set
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue[str]


class CaptionServer:
    """Broadcasts events to websocket clients and hands their commands to `on_command`."""

    def __init__(self, host: str, port: int, hello: Callable[[], Hello],
                 on_command: Callable[[Command], Event | None], health: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = host, port
        self._hello, self._on_command, self._health = hello, on_command, health
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self.seq = 0
        self.recent_finals: deque[dict[str, Any]] = deque(maxlen=RECENT_FINALS)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. the transcript writer

    @property
    def n_clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        self._server = await serve(self._handler, self.host, self.port, process_request=self._http,
                                   close_timeout=2, ping_interval=20, ping_timeout=20, max_size=65536)
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            body = json.dumps(self._health())
            return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                                ("Content-Length", str(len(body)))]), body.encode())
        if request.path.split("?")[0] != "/":
            return connection.respond(404, "not found: connect a websocket to / or GET /health\n")
        return None

    def broadcast(self, event: Event) -> int:
        """Give the event the next sequence number and queue it for every client; return the seq."""
        self.seq += 1
        d = event.to_dict(self.seq)
        text = json.dumps(d, ensure_ascii=False)
        if isinstance(event, Final):
            self.recent_finals.append(d)
        for listener in self.listeners:
            listener(d)
        for client in list(self._clients):
            self._send(client, text)
        return self.seq

    def _send(self, client: _Client, text: str) -> None:
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._clients.discard(client)
            log.warning("closing a client that stopped reading (%d messages queued)", SEND_QUEUE)
            asyncio.get_running_loop().create_task(
                client.ws.close(CLOSE_TOO_SLOW, f"client too slow: more than {SEND_QUEUE} messages queued"))

    async def _handler(self, ws: ServerConnection) -> None:
        client = _Client(ws, asyncio.Queue(maxsize=SEND_QUEUE))
        hello = self._hello()
        client.queue.put_nowait(json.dumps({**hello.to_dict(self.seq), "finals": list(self.recent_finals)},
                                           ensure_ascii=False))
        self._clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in ws:
                reply = self._command(raw)
                if reply is not None:
                    self._send(client, reply.to_json(self.seq))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            sender.cancel()

    def _command(self, raw: str | bytes) -> Event | None:
        try:
            return self._on_command(parse_command(raw))
        except BadMessage as e:
            return Error(e.code, str(e))
        except DaemonError as e:
            return Error("bad_value", str(e))

    async def _sender(self, client: _Client) -> None:
        try:
            while True:
                await client.ws.send(await client.queue.get())
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        """Close every connection with 1001 and stop listening; idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        for client in list(self._clients):
            await self._flush(client)
        server.close(close_connections=False)
        await asyncio.gather(*(c.ws.close(CLOSE_SHUTDOWN, "daemon shutting down") for c in list(self._clients)),
                             return_exceptions=True)
        await server.wait_closed()

    async def _flush(self, client: _Client, timeout: float = 1.0) -> None:
        """Give a client up to `timeout` s to receive what is queued (the last finals) before closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not client.queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.01)
