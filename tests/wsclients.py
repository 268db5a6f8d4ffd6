"""Websocket test clients shared by the server tests: a CaptionServer with a fake command handler, raw
handshakes with chosen headers, a client that never reads, and a reader of raw server frames."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable

from daemon.live.access import AccessPolicy
from daemon.live.messages import PROTOCOL, Command, Event, Hello, Pong, Settings
from daemon.live.server import CaptionServer, Limits

SETTINGS = Settings("en", True, False)
SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))  # stretch every wait on a slow machine


def make_server(policy: AccessPolicy | None = None, limits: Limits | None = None,
                on_command: Callable[[Command], Event | None] | None = None) -> CaptionServer:
    """A server on 127.0.0.1, a free port, answering pings and ignoring every other command."""
    def pong(cmd: Command) -> Event | None:
        return Pong(cmd.id) if cmd.type == "ping" else None

    return CaptionServer("127.0.0.1", 0, lambda finals: Hello(PROTOCOL, "test", "onnx", SETTINGS, finals),
                         on_command or pong, lambda: {"status": "ok", "queue_depth": 0}, policy, limits or Limits())


def handshake_request(port: int, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    """A websocket upgrade request; `headers` adds to (or replaces) the usual ones, Host included."""
    h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version": "13"}
    h.update(headers or {})
    return (f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode()


def raw_handshake(port: int, path: str = "/", headers: dict[str, str] | None = None,
                  rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """Send a handshake from a plain socket; return the socket and the response head (status line, headers)."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10 * SCALE)
    s.connect(("127.0.0.1", port))
    s.sendall(handshake_request(port, path, headers))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def handshake_status(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The HTTP status a handshake gets, and what the server sent after the response head (up to close)."""
    s, head = raw_handshake(port, path, headers)
    rest = b""
    if status_of(head) != 101:
        s.settimeout(2 * SCALE)
        try:
            while chunk := s.recv(65536):
                rest += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    s.close()
    return status_of(head), head + rest


def stalled_socket(port: int) -> socket.socket:
    """A raw websocket client with a tiny receive buffer that never reads after the handshake."""
    s, head = raw_handshake(port, rcvbuf=4096)
    assert b" 101 " in head, head
    return s


def close_code(data: bytes) -> int | None:
    """Walk unmasked server frames; return the code of the close frame, if any."""
    i = 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if op == 0x8:
            return int.from_bytes(data[i : i + 2], "big")
        i += n
    return None


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN set, masked as clients must), payload < 64 KiB."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def poll_until(condition: Callable[[], bool], within_s: float = 10.0, step_s: float = 0.005) -> None:
    """Wait until condition() holds, looking every step_s (the test watches server state from outside)."""
    deadline = time.monotonic() + within_s * SCALE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within_s * SCALE} s")
        await asyncio.sleep(step_s)


async def drain_close_code(sock: socket.socket, within_s: float = 5.0) -> int | None:
    """Read everything the server queued for a client that never answered; return the close code at its end."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + within_s * SCALE
    while time.monotonic() < deadline and close_code(data) is None:
        try:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        except BlockingIOError:
            await asyncio.sleep(0.005)
        except ConnectionResetError:
            break
    return close_code(data)
