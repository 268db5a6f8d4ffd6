"""The websockets server: one port, captions broadcast to every client, `GET /health` beside them.

Each client has a bounded send queue drained by its own task, so a slow client only ever delays itself:
when its queue overflows it is closed with CLOSE_TOO_SLOW. Messages are serialised once per event.
Listeners (the transcript writer) see every message; one that raises is isolated: logged once per kind,
announced to clients as a `status` warning (code listener_failed), kept in `warnings`, and captions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from daemon.errors import ConfigError, DaemonError
from daemon.live.messages import BadMessage, Command, Error, Event, Final, Hello, Status, parse_command

log = logging.getLogger(__name__)

SEND_QUEUE = 256  # messages waiting for one client before it counts as too slow
CLOSE_TOO_SLOW = 4008
CLOSE_SHUTDOWN = 1001
RECENT_FINALS = 50  # finals replayed in `hello`
FLUSH_S = 1.0  # at shutdown, how long a client may take to receive what is queued for it
CLOSE_S = 2.0  # ... and then to take the close frame

Listener = Callable[[dict[str, Any]], None]


@dataclass(eq=False)  # identity, so clients can live in a set
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue[str]
    sender: asyncio.Task[None] | None = None


class CaptionServer:
    """Broadcasts events to websocket clients and hands their commands to `on_command`."""

    def __init__(self, host: str, port: int, hello: Callable[[list[dict[str, Any]]], Hello],
                 on_command: Callable[[Command], Event | None], health: Callable[[], dict[str, Any]]) -> None:
        """hello(recent finals) builds the greeting of a new client."""
        self.host, self.port = host, port
        self._hello, self._on_command, self._health = hello, on_command, health
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._closing: set[asyncio.Task[None]] = set()  # close() of clients cut off as too slow
        self.seq = 0
        self.recent_finals: deque[dict[str, Any]] = deque(maxlen=RECENT_FINALS)
        self.listeners: list[Listener] = []  # e.g. the transcript writer
        self.warnings: list[str] = []  # listener failures, one per kind
        self._failed_kinds: set[str] = set()

    @property
    def n_clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        """Listen.

        Raises:
            ConfigError: the address cannot be used (the port is taken, the host is not this machine's).
        """
        try:
            self._server = await serve(self._handler, self.host, self.port, process_request=self._http,
                                       close_timeout=2, ping_interval=20, ping_timeout=20, max_size=65536)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e} "
                              "(choose another --port or --host)") from e
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/health":
            body = json.dumps(self._health())
            return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                                ("Content-Length", str(len(body)))]), body.encode())
        if path != "/":
            return connection.respond(404, "not found: connect a websocket to / or GET /health\n")
        return None

    def broadcast(self, event: Event) -> int:
        """Give the event the next sequence number and queue it for every client; return the seq."""
        self.seq += 1
        d = event.to_dict(self.seq)
        text = json.dumps(d, ensure_ascii=False)
        if isinstance(event, Final):
            self.recent_finals.append(d)
        failed = [(listener, e) for listener in self.listeners if (e := _call(listener, d)) is not None]
        for client in list(self._clients):
            self._send(client, text)
        for listener, e in failed:  # after the clients got this event: a warning never overtakes it
            self._listener_failed(listener, e)
        return self.seq

    def _listener_failed(self, listener: Listener, e: Exception) -> None:
        """Log the first failure of each kind with its traceback and tell the clients; later ones quietly."""
        kind = f"{_name(listener)}: {type(e).__name__}"
        if kind in self._failed_kinds:
            log.debug("%s failed again: %s", kind, e)
            return
        self._failed_kinds.add(kind)
        msg = f"{kind}: {e} (captions continue; further failures of this kind are not reported)"
        self.warnings.append(msg)
        log.error("listener %s", msg, exc_info=e)
        self.broadcast(Status("warning", "listener_failed", msg))

    def _send(self, client: _Client, text: str) -> None:
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._clients.discard(client)
            log.warning("closing a client that stopped reading (%d messages queued)", SEND_QUEUE)
            task = asyncio.get_running_loop().create_task(
                client.ws.close(CLOSE_TOO_SLOW, f"client too slow: more than {SEND_QUEUE} messages queued"))
            self._closing.add(task)  # keep a reference until it is done (close() awaits the rest)
            task.add_done_callback(self._closing.discard)

    async def _handler(self, ws: ServerConnection) -> None:
        client = _Client(ws, asyncio.Queue(maxsize=SEND_QUEUE))
        client.queue.put_nowait(self._hello(list(self.recent_finals)).to_json(self.seq))
        self._clients.add(client)
        sender = client.sender = asyncio.create_task(self._sender(client))
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
            with contextlib.suppress(asyncio.CancelledError):
                await sender

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
                text = await client.queue.get()
                try:
                    await client.ws.send(text)
                finally:
                    client.queue.task_done()
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        """Give every client up to FLUSH_S to receive what is queued for it (the last finals), then close all
        connections with 1001, all at once, and stop listening; idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        clients = list(self._clients)
        await asyncio.gather(*(self._flush(c) for c in clients))
        for c in clients:  # a client still not reading holds its sender in a send that may never finish
            if c.sender is not None:
                c.sender.cancel()
        server.close(close_connections=False)
        await asyncio.gather(*(self._close_client(c) for c in clients), *self._closing, return_exceptions=True)
        await server.wait_closed()

    async def _close_client(self, client: _Client) -> None:
        """Close with 1001; a client that does not take the close frame within CLOSE_S is cut off."""
        with anyio.move_on_after(CLOSE_S):
            await client.ws.close(CLOSE_SHUTDOWN, "daemon shutting down")
            return
        log.warning("a client did not take the close frame within %.0f s; cutting the connection", CLOSE_S)
        client.ws.transport.abort()

    async def _flush(self, client: _Client) -> None:
        with anyio.move_on_after(FLUSH_S):
            await client.queue.join()


def _call(listener: Listener, message: dict[str, Any]) -> Exception | None:
    """Run one listener; what it raises is returned, not propagated (one failing listener stops nothing)."""
    try:
        listener(message)
    except Exception as e:
        return e
    return None


def _name(listener: Listener) -> str:
    return getattr(listener, "__name__", type(listener).__name__)
