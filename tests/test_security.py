"""Who may read the captions: Host and Origin checks against DNS rebinding and foreign pages, the token
(header, query, subprotocol), /health to a foreign origin, and the refusal to bind off loopback without a
token — with real websocket clients against a CaptionServer on 127.0.0.1, and the pure rules in tables."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wsclients import handshake_status, make_server

from daemon.cli import main
from daemon.errors import ConfigError
from daemon.live import access
from daemon.live.access import AccessPolicy, Handshake
from daemon.live.config import DaemonConfig, build_config
from daemon.live.messages import Final
from daemon.live.server import CaptionServer

TOKEN = "s3cret-Token_0123456789abcdef"


async def hello_or_status(url: str, **kw: Any) -> dict[str, Any] | int:
    """Connect with a real websocket client: the hello it gets, or the HTTP status of the refusal."""
    try:
        async with connect(url, open_timeout=10, **kw) as ws:
            msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            msg["_subprotocol"] = ws.subprotocol
            return msg
    except InvalidStatus as e:
        return e.response.status_code


async def started(server: CaptionServer) -> CaptionServer:
    await server.start()
    return server


# -- acceptance: a foreign page is refused, the daemon's own page is let in --------------------------------------


def test_a_foreign_origin_is_refused_and_the_daemons_own_page_is_accepted() -> None:
    async def scenario() -> dict[str, dict[str, Any] | int]:
        server = await started(make_server())
        url = f"ws://127.0.0.1:{server.port}"
        try:
            return {origin: await hello_or_status(url, origin=origin) for origin in (
                "https://example.com", f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}",
                f"http://127.0.0.1:{server.port + 1}", "null")}
        finally:
            await server.close()

    got = asyncio.run(scenario())
    foreign, own, own_by_name, other_port, null = got.values()
    assert foreign == 403
    assert isinstance(own, dict) and own["type"] == "hello"
    assert isinstance(own_by_name, dict) and own_by_name["type"] == "hello"
    assert other_port == 403  # another local page (a dev server on another port) is another origin
    assert null == 403  # a file:// page or a sandboxed frame


def test_a_program_without_origin_is_accepted() -> None:
    async def scenario() -> dict[str, Any] | int:
        server = await started(make_server())
        try:
            return await hello_or_status(f"ws://127.0.0.1:{server.port}")
        finally:
            await server.close()

    got = asyncio.run(scenario())
    assert isinstance(got, dict) and got["type"] == "hello"


def test_dns_rebinding_gets_403_and_no_captions() -> None:
    """The issue's attack: Host evil.example + Origin https://evil.example got 101 and the last 50 finals."""
    async def scenario() -> list[tuple[int, bytes]]:
        server = await started(make_server())
        server.broadcast(Final(0, 0.0, 1.0, "my bank password is hunter2", "en", "eos"))
        try:
            return [await asyncio.to_thread(handshake_status, server.port, "/", headers) for headers in (
                {"Host": f"evil.example:{server.port}", "Origin": f"http://evil.example:{server.port}"},
                {"Host": "evil.example", "Origin": "https://evil.example"},
                {"Host": f"evil.example:{server.port}"},  # no Origin: a rebinding page can't drop it, but still
                {"Host": f"localhost:{server.port}", "Origin": "https://evil.example"})]
        finally:
            await server.close()

    for status, raw in asyncio.run(scenario()):
        assert status == 403, raw
        assert b"hunter2" not in raw


def test_extra_allowed_origins_are_let_in() -> None:
    async def scenario() -> list[dict[str, Any] | int]:
        policy = AccessPolicy("127.0.0.1", extra_origins=access.parse_origins("https://captions.example, "
                                                                               "http://localhost:3000/"))
        server = await started(make_server(policy))
        url = f"ws://127.0.0.1:{server.port}"
        try:
            return [await hello_or_status(url, origin=o) for o in
                    ("https://captions.example", "http://localhost:3000", "https://captions.example.evil")]
        finally:
            await server.close()

    a, b, c = asyncio.run(scenario())
    assert isinstance(a, dict) and isinstance(b, dict) and c == 403


# -- the token ------------------------------------------------------------------------------------------------


def test_with_a_token_every_handshake_must_carry_it() -> None:
    async def scenario() -> dict[str, dict[str, Any] | int]:
        server = await started(make_server(AccessPolicy("127.0.0.1", TOKEN)))
        url = f"ws://127.0.0.1:{server.port}"
        try:
            return {
                "none": await hello_or_status(url),
                "wrong": await hello_or_status(url, additional_headers={"Authorization": "Bearer " + "x" * 28}),
                "prefix": await hello_or_status(url, additional_headers={"Authorization": "Bearer " + TOKEN[:-1]}),
                "bearer": await hello_or_status(url, additional_headers={"Authorization": "Bearer " + TOKEN}),
                "query": await hello_or_status(f"{url}/?token={TOKEN}"),
                "wrong query": await hello_or_status(f"{url}/?token=nope"),
                "subprotocol": await hello_or_status(url, subprotocols=["token", TOKEN]),  # type: ignore[list-item]
                "page with token": await hello_or_status(url, origin=f"http://127.0.0.1:{server.port}",
                                                         subprotocols=["token", TOKEN]),  # type: ignore[list-item]
                "foreign page with token": await hello_or_status(url, origin="https://example.com",
                                                                 subprotocols=["token", TOKEN]),  # type: ignore
            }
        finally:
            await server.close()

    got = asyncio.run(scenario())
    assert got["none"] == got["wrong"] == got["prefix"] == got["wrong query"] == 401
    assert got["foreign page with token"] == 403  # the token does not replace the Origin check
    for ok in ("bearer", "query", "subprotocol", "page with token"):
        assert isinstance(got[ok], dict) and got[ok]["type"] == "hello", ok
    sub = got["subprotocol"]
    assert isinstance(sub, dict) and sub["_subprotocol"] == "token"  # a browser requires the echo


def test_401_names_the_scheme() -> None:
    async def scenario() -> tuple[int, bytes]:
        server = await started(make_server(AccessPolicy("127.0.0.1", TOKEN)))
        try:
            return await asyncio.to_thread(handshake_status, server.port)
        finally:
            await server.close()

    status, raw = asyncio.run(scenario())
    assert status == 401 and b"WWW-Authenticate: Bearer" in raw and TOKEN.encode() not in raw


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert access.token_matches(TOKEN, TOKEN) and not access.token_matches(TOKEN, TOKEN[:-1] + "x")
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (TOKEN.encode(), (TOKEN[:-1] + "x").encode())]
    assert access.token_matches(None, None) and not access.token_matches(TOKEN, None)


# -- /health ----------------------------------------------------------------------------------------------------


def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_health_tells_a_foreign_origin_nothing() -> None:
    async def scenario(policy: AccessPolicy | None) -> list[tuple[int, dict[str, str], bytes]]:
        server = await started(make_server(policy))
        url = f"http://127.0.0.1:{server.port}/health"
        try:
            return [await asyncio.to_thread(get, url, h) for h in (
                {}, {"Origin": "https://example.com"}, {"Host": "evil.example"},
                {"Authorization": f"Bearer {TOKEN}"}, {"Origin": f"http://127.0.0.1:{server.port}"})]
        finally:
            await server.close()

    plain, foreign, rebound, _, own = asyncio.run(scenario(None))
    assert plain[0] == 200 and json.loads(plain[2]) == {"status": "ok", "queue_depth": 0}
    assert foreign[0] == rebound[0] == 403 and b"queue_depth" not in foreign[2] + rebound[2]
    assert own[0] == 200
    for r in (plain, foreign, rebound, own):
        assert not any(k.lower().startswith("access-control-") for k in r[1]), r[1]
    assert plain[1]["Cache-Control"] == "no-store"
    without, _, _, with_token, _ = asyncio.run(scenario(AccessPolicy("127.0.0.1", TOKEN)))
    assert json.loads(without[2]) == {"status": "ok"}  # a service manager may still ask whether it is up
    assert json.loads(with_token[2]) == {"status": "ok", "queue_depth": 0}


# -- starting: no token off loopback ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "myhost.local"])
def test_binding_off_loopback_without_a_token_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"not loopback\) needs a token"):
        DaemonConfig(model="m", host=host)
    assert DaemonConfig(model="m", host=host, token=TOKEN).token == TOKEN


def test_the_refusal_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    assert main(["serve", "--model", "m", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: listening on 0.0.0.0 (not loopback) needs a token")


@pytest.mark.parametrize("token", ["short", "has space in it 123456", "comma,separated,0123456789"])
def test_a_token_that_cannot_travel_in_a_header_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        DaemonConfig(model="m", token=token)


def test_the_token_from_flag_environment_or_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text(f'token = "file-{TOKEN}"\nhost = "0.0.0.0"\n')
    monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    assert build_config({"model": "m"}, str(toml)).token == f"file-{TOKEN}"
    monkeypatch.setenv(access.TOKEN_ENV, f"env-{TOKEN}")
    assert build_config({"model": "m"}, str(toml)).token == f"env-{TOKEN}"
    assert build_config({"model": "m", "token": f"flag-{TOKEN}"}, str(toml)).token == f"flag-{TOKEN}"


def test_allowed_origins_must_be_origins() -> None:
    with pytest.raises(ConfigError, match="allowed_origins"):
        DaemonConfig(model="m", allowed_origins="https://ok.example, captions.example")
    assert DaemonConfig(model="m", allowed_origins="https://ok.example,http://localhost:3000").allowed_origins


# -- the pure rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("localhost.evil", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert access.is_loopback(host) is loopback


@pytest.mark.parametrize(("bound", "host_header", "origin", "status"), [
    ("127.0.0.1", "127.0.0.1:8765", None, None),
    ("127.0.0.1", "localhost:8765", "http://localhost:8765", None),
    ("127.0.0.1", "[::1]:8765", "http://[::1]:8765", None),
    ("127.0.0.1", "LocalHost:8765", "HTTP://LOCALHOST:8765/", None),
    ("127.0.0.1", None, None, 403),  # no Host at all
    ("127.0.0.1", "127.0.0.1:notaport", None, 403),
    ("127.0.0.1", "evil.example:8765", None, 403),
    ("127.0.0.1", "127.0.0.1:8765", "https://127.0.0.1:8765", 403),  # not the daemon's page: it serves http
    ("127.0.0.1", "127.0.0.1:8765", "http://127.0.0.1", 403),  # port 80
    ("192.168.1.20", "192.168.1.20:8765", "http://192.168.1.20:8765", None),
    ("192.168.1.20", "localhost:8765", None, 403),  # bound to one address: only its name
    ("0.0.0.0", "anything.lan:8765", "http://anything.lan:8765", None),  # wildcard: any name (token required)
    ("0.0.0.0", "anything.lan:8765", "http://other.lan:8765", 403),
])
def test_host_and_origin_rules(bound: str, host_header: str | None, origin: str | None,
                               status: int | None) -> None:
    refusal = access.check(AccessPolicy(bound), 8765, Handshake("/", host_header, origin))
    assert (refusal.status if refusal else None) == status


@pytest.mark.parametrize(("request_", "token"), [
    (Handshake("/", authorization="Bearer abc"), "abc"),
    (Handshake("/", authorization="bearer   abc "), "abc"),
    (Handshake("/", authorization="Basic abc"), None),
    (Handshake("/?token=abc&x=1"), "abc"),
    (Handshake("/", subprotocols=("token", "abc")), "abc"),
    (Handshake("/", subprotocols=("chat", "token", "abc")), "abc"),
    (Handshake("/", subprotocols=("token",)), None),
    (Handshake("/"), None),
])
def test_where_a_token_is_found(request_: Handshake, token: str | None) -> None:
    assert access.request_token(request_) == token
