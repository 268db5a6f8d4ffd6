"""Clients that misbehave cannot disturb the others: command floods, finalize floods, non-readers, ping floods,
bad and oversized frames, 100 clients with 10 that never read, and a fuzz of ≥ 10 000 client messages — all
against a real CaptionServer on 127.0.0.1 (a scripted model where an engine is needed; no model files run)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fake_model import SR, ScriptedModel, frames, loud, silence, speech
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_schema import VALIDATOR
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from wsclients import (
    SCALE,
    close_code,
    drain_close_code,
    make_server,
    masked_frame,
    poll_until,
    raw_handshake,
    stalled_socket,
)

from daemon.live.app import Daemon
from daemon.live.config import DaemonConfig
from daemon.live.engine import ANNOUNCE_S, CaptionEngine
from daemon.live.messages import BadMessage, Command, Final, Partial, Pong, parse_command
from daemon.live.server import CLOSE_POLICY, CLOSE_S, CLOSE_TOO_SLOW, FLUSH_S, Limits, TokenBucket
from devtools.daemon_process import DEMO

# -- a daemon whose engine runs a scripted model ------------------------------------------------------------------


def scripted_daemon(tmp_path: Path) -> Daemon:
    """The real Daemon (its command handling, server and policy) with a scripted model in its engine."""
    sf.write(tmp_path / "silence.wav", silence(1.0), SR)
    daemon = Daemon(DaemonConfig(model=str(DEMO), backend="onnx", source=str(tmp_path / "silence.wav"), port=0))
    model = ScriptedModel()
    model.backend = SimpleNamespace(name="scripted")  # type: ignore[attr-defined]
    daemon.engine = CaptionEngine(daemon.config, model, daemon.emit, is_speech=loud)  # type: ignore[arg-type]
    return daemon


async def read_all(ws: ClientConnection, out: list[dict[str, Any]], closed: list[int | None]) -> None:
    try:
        async for raw in ws:
            out.append(json.loads(raw))
    except ConnectionClosed:
        pass
    closed.append(ws.close_code)


def test_a_configure_flood_from_one_client_closes_no_one(tmp_path: Path) -> None:
    """The issue: 1 000 `configure` messages from one client closed every client with 4008 (one `status`
    each, flooding every queue). Now the settings statuses are coalesced and the flooder is rate-limited."""
    async def scenario() -> tuple[list[list[dict[str, Any]]], list[int | None], float, Any]:
        daemon = scripted_daemon(tmp_path)
        engine = daemon.engine
        assert engine is not None
        await daemon.server.start()
        url = f"ws://127.0.0.1:{daemon.server.port}"
        outs: list[list[dict[str, Any]]] = [[] for _ in range(5)]
        closed: list[int | None] = []
        observers = [await connect(url) for _ in outs]
        readers = [asyncio.create_task(read_all(ws, o, closed)) for ws, o in zip(observers, outs, strict=True)]

        async def ticker() -> None:
            while True:
                engine.tick()
                await asyncio.sleep(0.05)

        ticks = asyncio.create_task(ticker())
        t0 = time.monotonic()
        async with connect(url) as flooder:
            for i in range(1000):
                await flooder.send(json.dumps({"type": "configure", "language": "es" if i % 2 else "en",
                                               "punctuation": bool(i % 3)}))
            flood_s = time.monotonic() - t0
            await asyncio.sleep(1.0 + 2 * ANNOUNCE_S)  # the last change is announced at a tick after ANNOUNCE_S
        final_settings = engine.settings
        await daemon.server.close()
        ticks.cancel()
        await asyncio.gather(*readers)
        return outs, closed, flood_s, final_settings

    outs, closed, flood_s, final_settings = asyncio.run(scenario())
    assert closed == [1001] * 5  # every observer stayed until the shutdown
    allowed = 2 + int((flood_s + 1.0 + 2 * ANNOUNCE_S) / ANNOUNCE_S)
    for out in outs:
        statuses = [m for m in out if m["type"] == "status"]
        assert 1 <= len(statuses) <= allowed, (len(statuses), allowed)
        assert statuses[-1]["settings"] == final_settings.__dict__  # the coalesced status tells the end state


def test_finalize_every_100_ms_loses_no_speech(tmp_path: Path) -> None:
    """The issue: `finalize` every 100 ms for 15 s dropped every segment as a blip (no final at all). Now a
    segment short of min speech stays open, so the speech comes out in short finals that cover all of it."""
    async def scenario() -> list[Any]:
        daemon = scripted_daemon(tmp_path)
        events: list[Any] = []
        engine = daemon.engine
        assert engine is not None
        engine.emit = events.append
        worker = asyncio.create_task(engine.run_worker())
        audio = np.concatenate([silence(0.5), speech(15.0), silence(1.5)])
        for i, frame in enumerate(frames(audio)):
            engine.push(frame)
            if i % 3 == 0:  # every 90 ms of audio
                assert daemon._command(Command("finalize")) is None
            await asyncio.sleep(0)
        await asyncio.wait_for(engine.drain(), 30 * SCALE)
        worker.cancel()
        return events

    finals = [e for e in asyncio.run(scenario()) if isinstance(e, Final)]
    covered = sum(f.end - f.start for f in finals)
    assert len(finals) >= 15, len(finals)  # it did cut: many short finals
    assert covered >= 15.0 - 0.05, covered  # and they hold all 15 s of speech (a frame of tolerance)
    assert all(a.end <= b.start for a, b in itertools.pairwise(finals))  # no audio twice


# -- clients that do not read -----------------------------------------------------------------------------------


def test_a_client_that_never_answers_is_closed_with_4008_not_1011() -> None:
    """The issue: non-readers were closed after ≈ 40 s with 1011 "keepalive ping timeout", not the documented
    4008. The keepalive is the server's own now (intervals shortened here)."""
    async def scenario() -> tuple[int | None, float]:
        server = make_server(limits=Limits(ping_interval_s=0.2, ping_timeout_s=0.3))
        await server.start()
        sock = await asyncio.to_thread(stalled_socket, server.port)
        t0 = time.monotonic()
        code = await drain_close_code(sock, within_s=10)  # reads bytes, never answers a ping
        elapsed = time.monotonic() - t0
        sock.close()
        await server.close()
        return code, elapsed

    code, elapsed = asyncio.run(scenario())
    assert code == CLOSE_TOO_SLOW
    assert elapsed < (0.2 + 0.3 + CLOSE_S) * SCALE + 1.0


def flood_pings(sock: socket.socket, stop: threading.Event, read: bool) -> list[bytes]:
    """Send masked ping frames as fast as the socket takes them; read what comes back only if `read`."""
    got: list[bytes] = []
    frame = masked_frame(0x9, b"p" * 125) * 64
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            sock.sendall(frame)
            if read:
                got.append(sock.recv(1 << 20))
        except TimeoutError:
            continue
        except OSError:
            break
    return got


async def ping_flood(read: bool, seconds: float, limits: Limits | None = None,
                     until_dropped: bool = True) -> tuple[int, float, int | None, int]:
    """A client floods pings for `seconds` (and, with until_dropped, on until the server dropped it, CLOSE_S + 1 s
    at most); then the server closes: (most unsent bytes seen, close() duration, close code read, clients left)."""
    server = make_server(limits=limits)
    await server.start()
    sock, head = await asyncio.to_thread(raw_handshake, server.port, "/", None, 4096)
    assert b" 101 " in head
    stop = threading.Event()
    flood = asyncio.create_task(asyncio.to_thread(flood_pings, sock, stop, read))
    most, t0 = 0, time.monotonic()
    assert server._server is not None
    while time.monotonic() - t0 < seconds or (until_dropped and server.n_clients
                                              and time.monotonic() - t0 < seconds + CLOSE_S + 1):
        sizes = [c.transport.get_write_buffer_size() for c in server._server.connections]
        most = max([most, *sizes])
        await asyncio.sleep(0.01)
    clients = server.n_clients
    t0 = time.monotonic()
    await server.close()
    close_s = time.monotonic() - t0
    stop.set()
    got = await flood
    sock.close()
    return most, close_s, close_code(b"".join(got)) if read else None, clients


@pytest.mark.parametrize(("limits", "code"), [(Limits(), CLOSE_POLICY),
                                              (Limits(control_per_s=1e9, control_burst=10**9), CLOSE_TOO_SLOW)],
                         ids=["ping rate", "unsent bytes"])
def test_a_ping_flood_that_never_reads_is_cut_off_and_memory_stays_bounded(
        limits: Limits, code: int, caplog: pytest.LogCaptureFixture) -> None:
    """The issue: pings flooded by a client that never reads grew the daemon from 268 MB to 3 GB in 90 s
    (every ping's pong queued in memory) and SIGTERM did not complete while it stayed connected. Cut off by
    the ping rate (1008), or, with that lifted, by its unsent bytes (4008)."""
    most, close_s, _, clients = asyncio.run(ping_flood(read=False, seconds=3.0, limits=limits))
    assert most <= limits.max_unsent_bytes + 256 * 1024, most  # + the pongs of one read (asyncio reads ≤ 256 KiB)
    assert clients == 0  # it was cut off during the flood
    assert close_s < (FLUSH_S + CLOSE_S) * SCALE + 1.0, close_s
    assert f"closing a client ({code})" in caplog.text


def test_shutdown_completes_while_a_ping_flood_goes_on() -> None:
    """With the ping limits lifted the flooder stays connected: close() still ends within FLUSH_S + CLOSE_S."""
    lifted = Limits(control_per_s=1e9, control_burst=10**9, max_unsent_bytes=1 << 40)
    _, close_s, _, clients = asyncio.run(ping_flood(read=False, seconds=1.0, limits=lifted, until_dropped=False))
    assert clients == 1
    assert close_s < (FLUSH_S + CLOSE_S) * SCALE + 1.0, close_s


def test_a_ping_flood_that_reads_is_closed_with_1008() -> None:
    _, close_s, code, clients = asyncio.run(ping_flood(read=True, seconds=1.0))
    assert code == CLOSE_POLICY and clients == 0
    assert close_s < (FLUSH_S + CLOSE_S) * SCALE + 1.0


# -- many clients -----------------------------------------------------------------------------------------------


async def crowd(n_readers: int, n_silent: int) -> tuple[list[list[dict[str, Any]]], list[float], list[int | None]]:
    """n_readers read everything; n_silent never answer (raw sockets). 12 rounds of 5 partials and a final,
    0.3 s apart (the silent ones are closed after 2.5 s, in the middle); returns what the readers got, each final's delay, and the silent clients' close codes."""
    server = make_server(limits=Limits(ping_interval_s=0.5, ping_timeout_s=2.0 * SCALE))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    outs: list[list[dict[str, Any]]] = [[] for _ in range(n_readers)]
    arrived: list[list[float]] = [[] for _ in range(n_readers)]

    async def reader(i: int) -> None:
        async with connect(url, max_queue=None) as ws:
            async for raw in ws:
                m = json.loads(raw)
                outs[i].append(m)
                if m["type"] == "final":
                    arrived[i].append(time.monotonic())
                    if m["text"] == "final 11":
                        return

    tasks = [asyncio.create_task(reader(i)) for i in range(n_readers)]
    silent = [await asyncio.to_thread(stalled_socket, server.port) for _ in range(n_silent)]
    await poll_until(lambda: server.n_clients == n_readers + n_silent, within_s=30)
    codes = [asyncio.create_task(drain_close_code(s, within_s=20)) for s in silent]  # bytes read, pings unanswered
    sent_at: list[float] = []
    for k in range(12):
        for j in range(5):
            server.broadcast(Partial(k, float(k), "words " * 10, f"more {j}"))
        server.broadcast(Final(k, float(k), k + 0.5, f"final {k}", "en", "eos"))
        sent_at.append(time.monotonic())
        await asyncio.sleep(0.3)
    await asyncio.wait_for(asyncio.gather(*tasks), 30 * SCALE)
    closes = list(await asyncio.gather(*codes))
    for s in silent:
        s.close()
    await server.close()
    delays = [t - s for a in arrived for t, s in zip(a, sent_at, strict=True)]
    return outs, delays, closes


def test_100_clients_10_of_which_never_read() -> None:
    outs, delays, closes = asyncio.run(crowd(90, 10))
    _, alone, _ = asyncio.run(crowd(90, 0))
    expected = [f"final {k}" for k in range(12)]
    assert all([m["text"] for m in o if m["type"] == "final"] == expected for o in outs)
    assert closes == [CLOSE_TOO_SLOW] * 10
    p95 = statistics.quantiles(delays, n=20, method="inclusive")[18]
    p95_alone = statistics.quantiles(alone, n=20, method="inclusive")[18]
    print(f"final delay p95 with 10 silent clients {p95 * 1000:.1f} ms, without {p95_alone * 1000:.1f} ms; "
          f"median {statistics.median(delays) * 1000:.1f} / {statistics.median(alone) * 1000:.1f} ms")
    assert statistics.median(delays) - statistics.median(alone) <= 0.100


def test_beyond_max_clients_the_handshake_gets_503() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server = make_server(limits=Limits(max_clients=3))
        await server.start()
        held = [await connect(f"ws://127.0.0.1:{server.port}") for _ in range(3)]
        await poll_until(lambda: server.n_clients == 3)
        s, refused = await asyncio.to_thread(raw_handshake, server.port)
        s.close()
        await held[0].close()
        await poll_until(lambda: server.n_clients == 2)
        s, accepted = await asyncio.to_thread(raw_handshake, server.port)
        s.close()
        for ws in held[1:]:
            await ws.close()
        await server.close()
        return refused, accepted

    refused, accepted = asyncio.run(scenario())
    assert refused.startswith(b"HTTP/1.1 503") and accepted.startswith(b"HTTP/1.1 101")


# -- bad input --------------------------------------------------------------------------------------------------


def test_commands_over_the_rate_are_dropped_with_one_error_a_second() -> None:
    async def scenario() -> list[dict[str, Any]]:
        server = make_server(limits=Limits(commands_per_s=5, command_burst=10))
        await server.start()
        got: list[dict[str, Any]] = []
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            await ws.recv()  # hello
            for i in range(100):
                await ws.send(json.dumps({"type": "ping", "id": i}))
            await asyncio.sleep(1.1)  # the bucket refills 5 a second
            await ws.send(json.dumps({"type": "ping", "id": "after"}))
            while not got or got[-1].get("id") != "after":
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        await server.close()
        return got

    got = asyncio.run(scenario())
    pongs = [m["id"] for m in got if m["type"] == "pong"]
    errors = [m for m in got if m["type"] == "error"]
    assert 10 <= len(pongs) - 1 <= 12 and pongs[:10] == list(range(10)) and pongs[-1] == "after"
    assert [e["code"] for e in errors] == ["rate_limited"]
    VALIDATOR.validate(errors[0])  # docs/protocol.schema.json knows the code


def test_token_bucket() -> None:
    now = [0.0]
    b = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [b.take(), b.take()] == [True, False]
    now[0] = 100.0  # never more than the burst
    assert sum(b.take() for _ in range(10)) == 3


@pytest.mark.parametrize(("frame", "expect"), [
    ("not json", ("error", "bad_json")),
    ('{"type": "nope"}', ("error", "unknown_type")),
    (b"\x00\x01binary", ("error", "bad_message")),
    ("[" * 2000 + "]" * 2000, ("error", "bad_json")),  # nested past the parser's depth, under 4096 bytes
    ('{"type": "ping", "id": "' + "x" * 5000 + '"}', ("error", "bad_message")),  # over max_message_bytes
    ("x" * 70_000, ("close", 1009)),  # over max_frame_bytes
])
def test_bad_frames_get_an_error_or_a_close_and_others_are_served(frame: str | bytes,
                                                                   expect: tuple[str, Any]) -> None:
    async def scenario() -> tuple[tuple[str, Any], dict[str, Any]]:
        server = make_server()
        await server.start()
        url = f"ws://127.0.0.1:{server.port}"
        async with connect(url) as other, connect(url, max_size=None) as bad:
            await other.recv()
            await bad.recv()
            await bad.send(frame)
            try:
                reply = json.loads(await asyncio.wait_for(bad.recv(), 5))
                got: tuple[str, Any] = (reply["type"], reply["code"])
            except ConnectionClosed as e:
                got = ("close", e.rcvd.code if e.rcvd else None)
            server.broadcast(Final(0, 0.0, 1.0, "still here", "en", "eos"))
            final = json.loads(await asyncio.wait_for(other.recv(), 5))
        await server.close()
        return got, final

    got, final = asyncio.run(scenario())
    assert got == expect
    assert final["text"] == "still here"


def test_invalid_utf8_text_is_a_1007_close() -> None:
    async def scenario() -> int | None:
        server = make_server()
        await server.start()
        sock, _ = await asyncio.to_thread(raw_handshake, server.port)
        sock.sendall(masked_frame(0x1, b"\xff\xfe not utf-8"))
        code = await drain_close_code(sock)
        sock.close()
        await server.close()
        return code

    assert asyncio.run(scenario()) == 1007


# -- the fuzz ---------------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["type", "language", "punctuation", "id", "extra"])
TYPES = st.sampled_from(["configure", "finalize", "pause", "resume", "ping", "hello", "", "PING"])
COMMANDISH = st.dictionaries(FIELDS, JSON | TYPES, max_size=4).map(json.dumps)
MESSAGES = st.one_of(COMMANDISH, JSON.map(json.dumps), st.text(max_size=60), st.binary(max_size=60),
                     st.integers(1, 6000).map(lambda n: '{"type": "ping", "id": "' + "x" * n + '"}'))


class FuzzTarget:
    """One server (in a thread's event loop) for all examples, with a client that watches the broadcasts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.commands: list[Command] = []
        unlimited = Limits(commands_per_s=1e9, command_burst=10**9)
        self.server = make_server(limits=unlimited, on_command=self.on_command)
        self.run(self.server.start())
        self.url = f"ws://127.0.0.1:{self.server.port}"
        self.watcher: ClientConnection = self.run(self._connect())
        self.run(self.watcher.recv())  # hello

    async def _connect(self) -> ClientConnection:
        return await connect(self.url)

    def on_command(self, cmd: Command) -> Pong | None:
        self.commands.append(cmd)
        return Pong(cmd.id) if cmd.type == "ping" else None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60 * SCALE)

    async def exchange(self, messages: list[str | bytes], end: str) -> list[dict[str, Any]]:
        """Send the messages on a new connection, then a ping with id `end`; return the replies before its pong."""
        async with connect(self.url) as ws:
            await ws.recv()  # hello
            for m in messages:
                await ws.send(m)
            await ws.send(json.dumps({"type": "ping", "id": end}))
            replies = []
            while (r := json.loads(await asyncio.wait_for(ws.recv(), 10 * SCALE))) != {
                    "type": "pong", "seq": self.server.seq, "id": end}:
                replies.append(r)
            return replies

    def close(self) -> None:
        self.run(self.watcher.close())
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def parsed(message: str | bytes) -> Command | BadMessage:
    try:
        return parse_command(message)
    except BadMessage as e:
        return e


def test_a_fuzz_of_10000_client_messages_gets_exactly_the_documented_replies() -> None:
    """Batches of fuzzed messages: each gets what parse_command says (its error code, a pong with its id, or
    nothing), in order; every valid command reaches the handler; the connection stays open; a watching client
    keeps getting broadcasts. 200 batches of 50 (+ 1 ping): ≥ 10 000 messages."""
    target = FuzzTarget()
    sent = [0]

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(MESSAGES, min_size=50, max_size=50))
    def one_batch(batch: list[str | bytes]) -> None:
        n_before, end = len(target.commands), f"end-{sent[0]}"
        replies = target.run(target.exchange(batch, end))
        sent[0] += len(batch) + 1
        outcomes = [parsed(m) for m in batch]
        expected = [("error", o.code) if isinstance(o, BadMessage) else ("pong", o.id) for o in outcomes
                    if isinstance(o, BadMessage) or o.type == "ping"]
        assert [(r["type"], r["code"] if r["type"] == "error" else r["id"]) for r in replies] == expected
        assert target.commands[n_before:-1] == [o for o in outcomes if isinstance(o, Command)]
        target.server.broadcast(Final(0, 0.0, 1.0, f"watcher {end}", "en", "eos"))
        seen = json.loads(target.run(asyncio.wait_for(target.watcher.recv(), 10 * SCALE)))
        assert seen["text"] == f"watcher {end}"

    try:
        one_batch()
    finally:
        target.close()
    print(f"fuzz: {sent[0]} client messages")
    assert sent[0] >= 10_000, sent[0]
