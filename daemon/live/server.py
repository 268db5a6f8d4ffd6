"""The websockets server: one port, captions broadcast to every client, `GET /health` beside them.

Each client has a bounded send queue drained by its own task, so a slow client only ever delays itself:
when its queue overflows, when it leaves keepalive pings unanswered, or when the daemon's unsent bytes to it
pile up (a ping flood that never reads its pongs), it is closed with CLOSE_TOO_SLOW. Messages are serialised
once per event. Every handshake passes daemon.live.access (Host, Origin, token) and the connection limit;
each client's commands and control frames are rate-limited (Limits, documented in docs/protocol.md).
Listeners (the transcript writer) see every message; one that raises is isolated: logged once per kind,
announced to clients as a `status` warning (code listener_failed), kept in `warnings`, and captions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import anyio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event as WsEvent
from websockets.typing import Subprotocol

from daemon.errors import ConfigError, DaemonError
from daemon.live import access, page
from daemon.live.messages import BadMessage, Command, Error, Event, Final, Hello, Status, parse_command

log = logging.getLogger(__name__)

SEND_QUEUE = 256  # messages waiting for one client before it counts as too slow
CLOSE_TOO_SLOW = 4008
CLOSE_POLICY = 1008  # too many control frames
CLOSE_SHUTDOWN = 1001
RECENT_FINALS = 50  # finals replayed in `hello`
FLUSH_S = 1.0  # at shutdown, how long a client may take to receive what is queued for it
CLOSE_S = 2.0  # ... and then to take the close frame

Listener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Limits:
    """What one client may cost the daemon (docs/protocol.md, "Limits")."""

    max_clients: int = 128  # more handshakes get 503
    max_message_bytes: int = 4096  # longer messages get an `error` (bad_message)
    max_frame_bytes: int = 65536  # longer frames close the connection with 1009 (websockets' max_size)
    max_queue: int = 16  # frames read ahead from a client before the daemon stops reading its socket
    commands_per_s: float = 20.0  # sustained; more are dropped, answered by one `error` (rate_limited) a second
    command_burst: int = 40
    control_per_s: float = 10.0  # ping and pong frames; more close the connection with 1008
    control_burst: int = 20
    max_unsent_bytes: int = 1 << 20  # bytes written to a client and not yet taken: beyond, it is not reading
    ping_interval_s: float = 20.0  # keepalive: a ping this often, and CLOSE_TOO_SLOW
    ping_timeout_s: float = 20.0  # ... when its pong does not come back this soon


@dataclass
class TokenBucket:
    """`rate` events a second on average, `burst` at once; take() says whether one more may happen now."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens, self._at = float(self.burst), self.clock()

    def take(self) -> bool:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _BoundedConnection(ServerConnection):
    """A websockets connection whose control frames cannot cost the daemon unbounded memory or time.

    websockets answers every ping with a pong at once, written whether or not the client reads: a client
    that floods pings and never reads makes those pongs pile up in memory. So control frames are
    rate-limited (CLOSE_POLICY beyond), and a client with more than max_unsent_bytes not taken is cut off.
    """

    LIMITS: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = TokenBucket(self.LIMITS.control_per_s, self.LIMITS.control_burst)
        self.shed: tuple[int, str] | None = None  # why the daemon cut this client off

    def process_event(self, event: WsEvent) -> None:
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG) and not self.control.take():
            self.cut_off(CLOSE_POLICY, f"more than {self.LIMITS.control_per_s:g} ping/pong frames a second")
        super().process_event(event)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_write_buffer_size() > self.LIMITS.max_unsent_bytes:
            self.cut_off(CLOSE_TOO_SLOW, "client not reading: its unsent data passed "
                                         f"{self.LIMITS.max_unsent_bytes} bytes")

    def cut_off(self, code: int, reason: str) -> None:
        """Send a close frame, stop reading, and drop the TCP connection after CLOSE_S (it may never read)."""
        if self.shed is not None:
            return
        self.shed = (code, reason)
        log.warning("closing a client (%d): %s", code, reason)
        self.protocol.fail(code, reason)
        self.send_data()
        self.loop.call_later(CLOSE_S, self.transport.abort)


def _connection_class(limits: Limits) -> type[ServerConnection]:
    return type("BoundedConnection", (_BoundedConnection,), {"LIMITS": limits})


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer `token` to a browser that sent its token as the subprotocols `token, T`; else no subprotocol."""
    return Subprotocol(access.TOKEN_SUBPROTOCOL) if access.TOKEN_SUBPROTOCOL in offered else None


def _handshake(request: Request) -> access.Handshake:
    h = request.headers
    protocols = tuple(p.strip() for v in h.get_all("Sec-WebSocket-Protocol") for p in v.split(",") if p.strip())
    return access.Handshake(request.path, h.get("Host"), h.get("Origin"), h.get("Authorization"), protocols)


@dataclass(eq=False)  # identity, so clients can live in a set
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue[str]
    commands: TokenBucket
    sender: asyncio.Task[None] | None = None
    keepalive: asyncio.Task[None] | None = None
    limited_at: float = float("-inf")  # when it was last told it sends too many commands


class CaptionServer:
    """Broadcasts events to websocket clients and hands their commands to `on_command`."""

    def __init__(self, host: str, port: int, hello: Callable[[list[dict[str, Any]]], Hello],
                 on_command: Callable[[Command], Event | None], health: Callable[[], dict[str, Any]],
                 policy: access.AccessPolicy | None = None, limits: Limits = Limits()) -> None:
        """hello(recent finals) builds the greeting of a new client; policy defaults to no token, no extra
        origins."""
        self.host, self.port = host, port
        self.policy = policy if policy is not None else access.AccessPolicy(host)
        self.limits = limits
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
            lim = self.limits
            self._server = await serve(self._handler, self.host, self.port, process_request=self._http,
                                       select_subprotocol=_select_subprotocol,
                                       create_connection=_connection_class(lim), close_timeout=CLOSE_S,
                                       ping_interval=None, max_size=lim.max_frame_bytes, max_queue=lim.max_queue)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e} "
                              "(choose another --port or --host)") from e
        self.port = self._server.sockets[0].getsockname()[1] if self.port == 0 else self.port

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a foreign Host or Origin (403), a missing token (401, not for /health or the page's files) and
        clients beyond max_clients (503); answer /health and the captions page (daemon.live.page); let a
        websocket handshake on / through."""
        path, hs = urlsplit(request.path).path, _handshake(request)
        page_file = page.route(path, request)  # the captions page: public files, no token (its websocket needs it)
        refusal = access.check(self.policy, self.port, hs, need_token=path != "/health" and page_file is None)
        if refusal is not None:
            log.warning("refused a handshake (%d): %s (Host %.80r, Origin %.80r)", refusal.status,
                        refusal.reason.strip(), hs.host, hs.origin)
            response = connection.respond(refusal.status, refusal.reason)
            if refusal.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if path == "/health":
            return self._health_response(hs)
        if page_file is not None:
            return page.response(page_file)
        if path != "/":
            return connection.respond(404, "not found: connect a websocket to / or GET /health\n")
        if self.n_clients >= self.limits.max_clients:
            return connection.respond(503, f"too many clients (at most {self.limits.max_clients})\n")
        return None

    def _health_response(self, hs: access.Handshake) -> Response:
        """The health JSON; only `status` without the token when one is set. No CORS headers, not cached."""
        health = self._health()
        if not access.token_matches(self.policy.token, access.request_token(hs)):
            health = {"status": health.get("status")}
        body = json.dumps(health)
        return Response(200, "OK", Headers([("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                            ("Content-Length", str(len(body)))]), body.encode())

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
            self._too_slow(client, f"client too slow: more than {SEND_QUEUE} messages queued")

    def _too_slow(self, client: _Client, reason: str) -> None:
        """Close a client that does not read with CLOSE_TOO_SLOW (cut off after CLOSE_S if it takes nothing)."""
        if client not in self._clients:
            return
        self._clients.discard(client)
        log.warning("closing a client that stopped reading: %s", reason)
        task = asyncio.get_running_loop().create_task(self._close_client(client, CLOSE_TOO_SLOW, reason))
        self._closing.add(task)  # keep a reference until it is done (close() awaits the rest)
        task.add_done_callback(self._closing.discard)

    async def _handler(self, ws: ServerConnection) -> None:
        lim = self.limits
        client = _Client(ws, asyncio.Queue(maxsize=SEND_QUEUE), TokenBucket(lim.commands_per_s, lim.command_burst))
        client.queue.put_nowait(self._hello(list(self.recent_finals)).to_json(self.seq))
        self._clients.add(client)
        sender = client.sender = asyncio.create_task(self._sender(client))
        keepalive = client.keepalive = asyncio.create_task(self._keepalive(client))
        try:
            async for raw in ws:
                reply = self._command(raw) if client.commands.take() else self._rate_limited(client)
                if reply is not None:
                    self._send(client, reply.to_json(self.seq))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            for task in (sender, keepalive):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _rate_limited(self, client: _Client) -> Event | None:
        """A command over the client's rate is dropped; the client hears so at most once a second."""
        now = time.monotonic()
        if now - client.limited_at < 1.0:
            return None
        client.limited_at = now
        return Error("rate_limited", f"more than {self.limits.commands_per_s:g} messages a second: "
                                     "messages are being dropped")

    async def _keepalive(self, client: _Client) -> None:
        """Ping every ping_interval_s; a client that does not answer within ping_timeout_s is not reading."""
        lim = self.limits
        while True:
            await asyncio.sleep(lim.ping_interval_s)
            try:
                async with asyncio.timeout(lim.ping_timeout_s):  # ping() itself waits while the socket is full
                    await (await client.ws.ping())
            except TimeoutError:
                self._too_slow(client, f"client not reading: no pong within {lim.ping_timeout_s:g} s")
                return
            except ConnectionClosed:
                return

    def _command(self, raw: str | bytes) -> Event | None:
        try:
            return self._on_command(parse_command(raw, self.limits.max_message_bytes))
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
            for task in (c.sender, c.keepalive):
                if task is not None:
                    task.cancel()
        server.close(close_connections=False)
        await asyncio.gather(*(self._close_client(c, CLOSE_SHUTDOWN, "daemon shutting down") for c in clients),
                             *self._closing, return_exceptions=True)
        await server.wait_closed()

    async def _close_client(self, client: _Client, code: int, reason: str) -> None:
        """Close with `code`; a client that does not take the close frame within CLOSE_S is cut off."""
        with anyio.move_on_after(CLOSE_S):
            await client.ws.close(code, reason)
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
