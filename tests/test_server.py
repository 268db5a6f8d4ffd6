"""CaptionServer with real websocket clients on 127.0.0.1: fan-out, slow clients, bad messages, /health."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from wsclients import drain_close_code, make_server, poll_until, stalled_socket

from daemon.errors import ConfigError
from daemon.live.app import _summary
from daemon.live.messages import PROTOCOL, Final, Partial
from daemon.live.server import CLOSE_S, CLOSE_TOO_SLOW, FLUSH_S, CaptionServer


async def reader(url: str, out: list, stop_after: int) -> None:
    async with connect(url) as ws:
        while len(out) < stop_after:
            m = json.loads(await ws.recv())
            out.append((time.monotonic(), m))



async def fan_out(n_clients: int, with_stalled: bool) -> tuple[list[list], list[float], int | None]:
    """20 rounds of (big partials, a final); clients read as fast as they can, one maybe never reads."""
    server = make_server()
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    n_finals, per_round = 20, 40
    outs: list[list] = [[] for _ in range(n_clients)]
    tasks = [asyncio.create_task(reader(url, o, 1 + n_finals * (per_round + 2))) for o in outs]
    stalled = await asyncio.to_thread(stalled_socket, server.port) if with_stalled else None
    await poll_until(lambda: server.n_clients == n_clients + with_stalled)
    sent_at, code = {}, None
    filler = "x" * 16000  # partials big enough to fill a stalled socket's kernel buffers quickly
    for k in range(n_finals):
        for _ in range(per_round):
            server.broadcast(Partial(k, float(k), "", filler))
        seq = server.broadcast(Final(k, float(k), k + 0.5, f"final {k}", "en", "eos"))
        sent_at[seq] = time.monotonic()
        server.broadcast(Partial(k, float(k), "", "tail"))
        await poll_until(lambda k=k: min(len(o) for o in outs) >= 1 + (k + 1) * (per_round + 2),  # readers
                         within_s=30, step_s=0.002)  # catch up
        if stalled is not None and code is None and server.n_clients == n_clients:
            code = await drain_close_code(stalled)  # the server gave up on it: read what it sent
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    if stalled is not None:
        stalled.close()
    await server.close()
    delays = [t - sent_at[m["seq"]] for o in outs for t, m in o if m["type"] == "final"]
    return outs, delays, code


def test_twenty_clients_get_identical_finals_and_a_stalled_client_is_cut_off() -> None:
    outs, delays_without, _ = asyncio.run(fan_out(20, with_stalled=False))
    finals = [[(m["seq"], m["text"]) for _, m in o if m["type"] == "final"] for o in outs]
    assert len(finals[0]) == 20 and all(f == finals[0] for f in finals)
    outs, delays_with, code = asyncio.run(fan_out(20, with_stalled=True))
    assert code == CLOSE_TOO_SLOW
    assert all([m["text"] for _, m in o if m["type"] == "final"] == [f"final {k}" for k in range(20)] for o in outs)
    extra = statistics.median(delays_with) - statistics.median(delays_without)
    print(f"final delay median without/with a stalled client: {statistics.median(delays_without) * 1000:.1f} / "
          f"{statistics.median(delays_with) * 1000:.1f} ms; p95 with: "
          f"{sorted(delays_with)[int(0.95 * len(delays_with))] * 1000:.1f} ms")
    assert extra <= 0.100


def test_bad_messages_get_an_error_and_the_connection_survives() -> None:
    async def scenario() -> list[dict]:
        server = make_server()
        await server.start()
        got = []
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            got.append(json.loads(await ws.recv()))  # hello
            for bad in ("garbage", "[1,2]", '{"type": "explode"}', '{"type": "configure", "language": 5}',
                        '{"type": "pause", "extra": 1}', b"\x00\x01"):
                await ws.send(bad)
                got.append(json.loads(await ws.recv()))
            await ws.send('{"type": "ping", "id": 7}')
            got.append(json.loads(await ws.recv()))
        await server.close()
        return got

    got = asyncio.run(scenario())
    assert got[0]["type"] == "hello" and got[0]["protocol"] == PROTOCOL
    assert [g["code"] for g in got[1:-1]] == ["bad_json", "bad_message", "unknown_type", "bad_value",
                                              "bad_message", "bad_message"]
    assert got[-1] == {"type": "pong", "seq": 0, "id": 7}


def test_health_and_hello_replay_recent_finals() -> None:
    async def scenario() -> tuple[dict, dict]:
        server = make_server()
        await server.start()
        for k in range(3):
            server.broadcast(Final(k, float(k), k + 0.5, f"t{k}", "en", "eos"))
        health = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/health", timeout=5).read()))
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            hello = json.loads(await ws.recv())
        await server.close()
        return health, hello

    health, hello = asyncio.run(scenario())
    assert health == {"status": "ok", "queue_depth": 0}
    assert hello["seq"] == 3 and [f["text"] for f in hello["finals"]] == ["t0", "t1", "t2"]
    assert [f["seq"] for f in hello["finals"]] == [1, 2, 3]


@pytest.mark.parametrize("path", ["/nope", "/favicon.ico"])
def test_unknown_path_is_404(path: str) -> None:
    async def scenario() -> int:
        server = make_server()
        await server.start()
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{server.port}{path}", timeout=5)
        except urllib.error.HTTPError as e:
            return e.code
        finally:
            await server.close()
        return 200

    assert asyncio.run(scenario()) == 404


def test_health_with_a_query_string() -> None:
    async def scenario() -> dict:
        server = make_server()
        await server.start()
        try:
            return await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/health?x=1", timeout=5).read()))
        finally:
            await server.close()

    assert asyncio.run(scenario()) == {"status": "ok", "queue_depth": 0}


def test_a_failing_listener_is_isolated_and_reported_once() -> None:
    """A listener that raises on every message: every client still gets every event, plus one `status`
    warning (listener_failed) that names it; the server keeps it in `warnings`."""
    calls: list[dict] = []

    def broken_listener(message: dict) -> None:
        calls.append(message)
        raise OSError(28, "No space left on device")

    async def scenario() -> tuple[list[dict], CaptionServer]:
        server = make_server()
        server.listeners.append(broken_listener)
        seen: list[dict] = []
        server.listeners.append(seen.append)  # a second listener still sees everything
        await server.start()
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            await ws.recv()  # hello
            for k in range(3):
                server.broadcast(Final(k, float(k), k + 0.5, f"t{k}", "en", "eos"))
            got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(4)]
        await server.close()
        assert [m["type"] for m in seen] == ["final", "status", "final", "final"]
        return got, server

    got, server = asyncio.run(scenario())
    assert [m["type"] for m in got] == ["final", "status", "final", "final"]
    assert [m["text"] for m in got if m["type"] == "final"] == ["t0", "t1", "t2"]
    status = got[1]
    assert status["level"] == "warning" and status["code"] == "listener_failed"
    assert "broken_listener" in status["message"] and "No space left" in status["message"]
    assert len(server.warnings) == 1 and len(calls) == 4


def test_a_port_in_use_is_a_config_error() -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = CaptionServer("127.0.0.1", taken.getsockname()[1], lambda finals: None, lambda c: None,
                                   lambda: {})
            await server.start()

    with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:"):
        asyncio.run(scenario())


def test_close_flushes_stalled_clients_in_parallel() -> None:
    """Four clients that stopped reading, each with messages still queued: close() gives them FLUSH_S all at
    once (one by one it took FLUSH_S each), and one that does not take the close frame is cut off after CLOSE_S
    (it held the shutdown until the ping timeout, 20 s)."""
    n = 4

    async def scenario() -> float:
        server = make_server()
        await server.start()
        socks = [await asyncio.to_thread(stalled_socket, server.port) for _ in range(n)]
        await poll_until(lambda: server.n_clients == n)
        for _ in range(120):  # 120 × 100 kB: more than the kernel buffers hold, fewer than SEND_QUEUE messages
            server.broadcast(Partial(0, 0.0, "", "x" * 100_000))
            await asyncio.sleep(0)
        assert server.n_clients == n
        t0 = time.monotonic()
        await server.close()
        elapsed = time.monotonic() - t0
        for s in socks:
            s.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert FLUSH_S * 0.9 <= elapsed < n * FLUSH_S + CLOSE_S, elapsed  # in parallel, not one by one


@pytest.mark.parametrize(("seconds", "median", "p95"), [
    ([0.1], 100.0, 100.0),
    ([0.2, 0.1], 150.0, 195.0),  # was median 200, p95 100: p95 below the median
    ([0.3, 0.1, 0.2], 200.0, 290.0),
    ([0.05] * 19 + [1.0], 50.0, 97.5),  # linear between the 19th and 20th of 20 (numpy's default)
])
def test_health_latency_percentiles(seconds: list[float], median: float, p95: float) -> None:
    """/health's final_latency_ms: the median and p95 interpolate linearly, so median ≤ p95 ≤ max for any n."""
    got = _summary(seconds)
    assert got == {"median": median, "p95": p95, "n": len(seconds)}
    assert got["median"] <= got["p95"] <= 1000 * max(seconds)
    assert _summary([]) == {"median": None, "p95": None, "n": 0}
