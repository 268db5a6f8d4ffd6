"""The live captions page (clients/web/, served at GET /): its HTTP answers, then the page in real headless Chromium.

Playwright drives Debian's /usr/bin/chromium (it never downloads a browser of its own) against `python -m daemon
serve` playing espeak-ng speech from a file with the demo model. The daemon's transcript file is the truth: the
page must show each of its finals once, in order, through a dropped connection (hello.finals repeat what the page
has) and a daemon restart on the same port (a new seq counter, which must not hide the new daemon's finals).
Set CAPTIONS_SCREENSHOTS=docs/img to write the screenshots (light, dark, phone) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Browser, Page, WebSocketRoute, expect, sync_playwright
from wsclients import handshake_status, make_server

from daemon.live import page as page_files
from daemon.live.access import TOKEN_ENV, AccessPolicy
from daemon.live.messages import Event, Final, Partial, SpeechStarted, SpeechStopped, Status
from devtools.daemon_process import ROOT, Daemon, wer
from devtools.speech import heldout_sentences, program

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEB = ROOT / "clients" / "web"
SR = 16000
LEAD_S = 2.5  # silence before the speech, so that the page is connected before the first word
TOKEN = "page-token-0123456789abcdef"
WIDE = {"width": 1280, "height": 720}
PHONE = {"width": 360, "height": 640}
WAIT_MS = 60_000  # for a caption to come: speech in real time plus the model on a busy 2-core machine

# Every change of the partial line, with how many finals were on screen then.
RECORD_PARTIALS = """
window.__partials = [];
document.addEventListener("DOMContentLoaded", () => {
  const p = document.getElementById("partial"), finals = document.getElementById("finals");
  new MutationObserver(() => window.__partials.push({
    stable: p.querySelector(".stable").textContent, unstable: p.querySelector(".unstable").textContent,
    shown: !p.hidden, finals: finals.childElementCount, partials: document.querySelectorAll(".partial").length,
  })).observe(p, {subtree: true, childList: true, characterData: true, attributes: true});
});
"""

THIRD_PARTIAL = """() => { const p = document.getElementById("partial");
  return !p.hidden && p.querySelector(".words").textContent.trim() !== "" && document.querySelectorAll("#finals li").length === 2; }"""
THIRD_PARTIAL_BOTH = """() => { const p = document.getElementById("partial");
  return !p.hidden && p.querySelector(".stable").textContent !== "" && p.querySelector(".unstable").textContent !== ""
    && document.querySelectorAll("#finals li").length === 2; }"""


# -- what the daemon answers over HTTP --------------------------------------------------------------------------


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def serve_and(check: Callable[[int], Any], policy: AccessPolicy | None = None) -> Any:
    """Run check(port) in a thread against a CaptionServer (no model) on a free port."""
    async def scenario() -> Any:
        server = make_server(policy)
        await server.start()
        try:
            return await asyncio.to_thread(check, server.port)
        finally:
            await server.close()

    return asyncio.run(scenario())


def test_page_files_are_served_as_they_are_with_a_strict_csp() -> None:
    def check(port: int) -> list[tuple[str, int, dict[str, str], bytes]]:
        return [(path, *http_get(f"http://127.0.0.1:{port}{path}")) for path in page_files.ROUTES]

    answers = serve_and(check)
    types = {"/": "text/html", "/captions.css": "text/css", "/captions.js": "text/javascript",
             "/favicon.svg": "image/svg+xml"}
    assert [a[0] for a in answers] == list(types)
    for path, status, headers, body in answers:
        name = "index.html" if path == "/" else path[1:]
        assert status == 200 and body == (WEB / name).read_bytes(), path
        assert headers["Content-Type"].split(";")[0] == types[path]
        csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
        assert csp["style-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert {p.name for p in WEB.iterdir()} == {"index.html", "captions.css", "captions.js", "favicon.svg"}


def test_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, no inline script or style (the CSP would block them): every reference is one of the daemon's."""
    html = (WEB / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(refs) == ["captions.css", "captions.js", "favicon.svg"]
    assert "<style" not in html and re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert " style=" not in html and not re.search(r" on[a-z]+=", html)
    js = (WEB / "captions.js").read_text()
    assert not re.search(r"[\"'`](?:https?|wss?)://", js)  # addresses come from location, not from the code
    assert "innerHTML" not in js and "eval(" not in js and "new Function" not in js


def test_page_needs_no_token_but_its_websocket_does() -> None:
    def check(port: int) -> dict[str, Any]:
        base = f"http://127.0.0.1:{port}"
        return {
            "page": http_get(f"{base}/")[0],
            "script": http_get(f"{base}/captions.js")[0],
            "rebound page": http_get(f"{base}/", {"Host": "evil.example"})[0],  # DNS rebinding: still 403
            "socket": handshake_status(port, "/")[0],
            "socket with token": handshake_status(port, f"/?token={TOKEN}", {"Origin": base})[0],
            "foreign page's socket": handshake_status(port, f"/?token={TOKEN}", {"Origin": "http://evil.example"})[0],
        }

    assert serve_and(check, AccessPolicy("127.0.0.1", TOKEN)) == {
        "page": 200, "script": 200, "rebound page": 403, "socket": 401, "socket with token": 101,
        "foreign page's socket": 403}


def test_a_websocket_handshake_never_gets_a_file() -> None:
    def check(port: int) -> tuple[int, int, int]:
        return handshake_status(port, "/")[0], handshake_status(port, "/captions.js")[0], \
            http_get(f"http://127.0.0.1:{port}/index.html")[0]

    assert serve_and(check) == (101, 404, 404)  # only the fixed routes; `/` is the page or the socket


# -- the page in Chromium ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (a fresh profile each launch), never one that Playwright would download."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: bash scripts/setup.sh installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def speech_wav(path: Path, texts: list[str]) -> Path:
    audio, _ = program(texts)
    sf.write(path, np.concatenate([np.zeros(int(LEAD_S * SR), np.float32), audio]), SR)
    return path


def health(port: int) -> dict[str, Any]:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())


def until(cond: Callable[[], Any], what: str, timeout_s: float = 30.0, pump: Page | None = None) -> None:
    """Poll cond(); with `pump`, wait through that page, so Playwright runs its callbacks (routes) meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if pump is not None:
            pump.wait_for_timeout(50)
        else:
            time.sleep(0.05)


def transcript(folder: Path, skip: set[Path]) -> tuple[Path, list[dict[str, Any]]]:
    """The one transcript file in `folder` not in `skip`, and its finals that hold text."""
    (path,) = set(folder.glob("*.jsonl")) - skip
    return path, [f for f in map(json.loads, path.read_text().splitlines()) if f["text"].strip()]


def shown(page: Page) -> list[tuple[int, str]]:
    """(seq, text) of every final on screen."""
    return [(int(s), t) for s, t in page.eval_on_selector_all(
        "#finals li", "els => els.map(e => [e.dataset.seq, e.querySelector('.text').textContent])")]


def font_px(page: Page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "e => parseFloat(getComputedStyle(e).fontSize)"))


def watch(page: Page, problems: list[str], origin: str) -> None:
    """Collect what must not happen: an uncaught error, a CSP violation, a request to anywhere but the daemon."""
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if "Content Security Policy" in m.text or "Refused to" in m.text else None)
    page.on("request", lambda r: None if r.url.startswith(origin) else problems.append(f"request to {r.url}"))


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path)
    assert path.stat().st_size > 10_000  # a page, not a blank
    if out := os.environ.get("CAPTIONS_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_bytes(path.read_bytes())


def check_phone_layout(phone: Page, tmp_path: Path) -> None:
    """No sideways scrolling; big captions; the controls behind one button, reachable and inside the screen."""
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert font_px(phone, "#finals .text") >= 20
    expect(phone.locator("#controls")).to_be_hidden()
    phone.click("#menu")
    screenshot(phone, tmp_path, "captions-phone-controls.png")
    for control in ("#language", "#punctuation", "#pause", "#copy", "#larger", "#theme"):
        box = phone.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control
    assert phone.locator("#pause").bounding_box()["height"] >= 40  # a finger's target
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def check_controls(wide: Page, phone: Page, port: int) -> None:
    """Language, punctuation and pause reach the daemon (its /health) and every page; a refusal is shown."""
    wide.select_option("#language", "es")
    until(lambda: health(port)["settings"]["language"] == "es", "the daemon's language to become es")
    for p in (wide, phone):  # the other client hears the settings status too
        expect(p.locator("#language")).to_have_value("es")
    expect(wide.locator("#language")).not_to_have_class(re.compile("pending"))
    wide.uncheck("#punctuation")
    until(lambda: health(port)["settings"]["punctuation"] is False, "punctuation off")
    expect(phone.locator("#punctuation")).not_to_be_checked()
    wide.click("#pause")
    until(lambda: health(port)["settings"]["paused"] is True, "the daemon to pause")
    for p in (wide, phone):
        expect(p.locator("#paused-badge")).to_be_visible()
        expect(p.locator("#pause")).to_have_text("Resume")
    wide.click("#pause")
    until(lambda: health(port)["settings"]["paused"] is False, "the daemon to resume")
    expect(wide.locator("#paused-badge")).to_be_hidden()
    wide.select_option("#language", "fr")  # the demo model knows en and es only: the daemon answers `error`
    expect(wide.locator("#notice")).to_contain_text("'fr'")
    expect(wide.locator("#language")).to_have_value("es")  # put back as the daemon has it
    assert health(port)["settings"]["language"] == "es"
    wide.select_option("#language", "en")
    wide.check("#punctuation")
    until(lambda: health(port)["settings"] == {"language": "en", "punctuation": True, "paused": False},
          "the settings back to en, punctuation on")


def check_reader_controls(wide: Page) -> None:
    """Text size, dark and light, copy transcript."""
    before = font_px(wide, "#finals .text")
    wide.click("#larger")
    assert font_px(wide, "#finals .text") == pytest.approx(before * 1.15, rel=0.01)
    wide.click("#smaller")
    assert font_px(wide, "#finals .text") == pytest.approx(before, rel=0.01)
    light = wide.evaluate("getComputedStyle(document.body).backgroundColor")
    wide.click("#theme")
    expect(wide.locator("html")).to_have_attribute("data-theme", "dark")
    dark = wide.evaluate("getComputedStyle(document.body).backgroundColor")
    assert luminance(light) > 0.8 and luminance(dark) < 0.1, (light, dark)
    wide.click("#theme")
    expect(wide.locator("html")).to_have_attribute("data-theme", "light")
    wide.click("#copy")
    times = wide.eval_on_selector_all("#finals time", "els => els.map(e => e.textContent)")
    lines = [f"[{t}] {text}" for t, (_, text) in zip(times, shown(wide), strict=True)]
    until(lambda: wide.evaluate("navigator.clipboard.readText()") == "\n".join(lines), "the copied transcript", 5)


def luminance(css_rgb: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_rgb)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_captions_page_end_to_end(browser: Browser, tmp_path: Path) -> None:
    texts = heldout_sentences(5)
    wav1, wav2 = speech_wav(tmp_path / "one.wav", texts[:3]), speech_wav(tmp_path / "two.wav", texts[3:])
    folder = tmp_path / "transcripts"
    wide_ctx = browser.new_context(viewport=WIDE, permissions=["clipboard-read", "clipboard-write"])
    phone_ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    wide, phone = wide_ctx.new_page(), phone_ctx.new_page()
    wide.add_init_script(RECORD_PARTIALS)
    routes: list[WebSocketRoute] = []

    def through_test(ws: WebSocketRoute) -> None:  # every socket of the wide page, so the test can drop one
        ws.connect_to_server()
        routes.append(ws)

    wide.route_web_socket(re.compile(r"^ws://"), through_test)
    problems: list[str] = []
    conn = wide.locator("#conn")

    with Daemon("--source", str(wav1), "--transcripts", str(folder)) as d1:
        port = d1.port
        origin = f"http://127.0.0.1:{port}/"
        for p in (wide, phone):
            watch(p, problems, origin.rstrip("/"))
            p.goto(origin)
            expect(p.locator("#conn")).to_have_attribute("data-state", "live")

        # the partial, shown apart from the finals and lighter where unstable, then the final in its place
        expect(wide.locator("#partial")).to_be_visible(timeout=WAIT_MS)
        style = wide.evaluate("""() => { const s = getComputedStyle(document.querySelector('#partial .stable')),
            u = getComputedStyle(document.querySelector('#partial .unstable'));
            return [s.color, u.color, parseFloat(u.opacity)]; }""")
        assert style[0] != style[1] and style[2] < 1, style
        expect(wide.locator("#finals li")).to_have_count(1, timeout=WAIT_MS)
        record = wide.evaluate("window.__partials")
        before_final = [r for r in record if r["finals"] == 0 and r["shown"]]
        words = {(r["stable"] + r["unstable"]).strip() for r in before_final} - {""}
        assert len(words) >= 2, record  # the partial grew in place before the final came
        assert all(r["partials"] == 1 for r in record)
        until(lambda: wide.evaluate(THIRD_PARTIAL), "a partial of the third sentence", WAIT_MS / 1000)
        with contextlib.suppress(AssertionError):  # for the picture: stable and unstable words, if timing allows
            until(lambda: wide.evaluate(THIRD_PARTIAL_BOTH), "stable and unstable words", 2.0)
        screenshot(wide, tmp_path, "captions.png")
        wide.click("#theme")
        screenshot(wide, tmp_path, "captions-dark.png")
        wide.click("#theme")
        until(lambda: "source ended" in d1.log(), "the first source to end", WAIT_MS / 1000)
        path1, finals1 = transcript(folder, set())
        assert len(finals1) == 3 and wer(texts[:3], [f["text"] for f in finals1]) <= 0.25, finals1
        expected = [(f["seq"], f["text"].strip()) for f in finals1]
        for p in (wide, phone):
            expect(p.locator("#finals li")).to_have_count(len(expected), timeout=WAIT_MS)
            assert shown(p) == expected
        expect(wide.locator("#partial")).to_be_hidden()

        check_phone_layout(phone, tmp_path)
        check_controls(wide, phone, port)
        check_reader_controls(wide)

        # a dropped connection: the next hello repeats both finals, the page shows them once
        n_routes = len(routes)
        routes[-1].close(code=4008, reason="dropped by the test")
        until(lambda: len(routes) == n_routes + 1, "the page to reconnect", 15, wide)  # after 0.5 s of backoff
        expect(conn).to_have_attribute("data-state", "live")  # its hello (with both finals) has been read
        assert shown(wide) == expected

        # the reader scrolls up on the phone: new captions must not pull the view down
        for _ in range(8):
            if phone.locator("#larger").is_enabled():
                phone.click("#larger")
        phone.click("#menu")  # close the controls
        overflow = phone.eval_on_selector("#captions", "c => c.scrollHeight - c.clientHeight")
        assert overflow > 100, overflow
        phone.eval_on_selector("#captions", "c => { c.scrollTop = 0; }")

    # the daemon restarts on the same port: a new seq counter; the page must show its finals, each once
    expect(conn).to_have_attribute("data-state", "down")
    with Daemon("--port", str(port), "--source", str(wav2), "--transcripts", str(folder)) as d2:
        assert d2.port == port
        expect(conn).to_have_attribute("data-state", "live", timeout=30_000)
        until(lambda: "source ended" in d2.log(), "the second source to end", WAIT_MS / 1000)
        _, finals2 = transcript(folder, {path1})
        assert len(finals2) == 2 and wer(texts[3:], [f["text"] for f in finals2]) <= 0.25, finals2
        assert finals2[0]["seq"] <= expected[-1][0]  # the new counter is behind the old: a naive page skips
        expected += [(f["seq"], f["text"].strip()) for f in finals2]
        for p in (wide, phone):
            expect(p.locator("#finals li")).to_have_count(len(expected), timeout=WAIT_MS)
            assert shown(p) == expected

        # the phone stayed where the reader put it, and offers the way back down
        assert phone.eval_on_selector("#captions", "c => c.scrollTop") == 0
        expect(phone.locator("#latest")).to_be_visible()
        phone.click("#latest")
        assert phone.eval_on_selector("#captions", "c => c.scrollHeight - c.scrollTop - c.clientHeight") <= 2
        expect(phone.locator("#latest")).to_be_hidden()
        wide_gap = wide.eval_on_selector("#captions", "c => c.scrollHeight - c.scrollTop - c.clientHeight")
        assert wide_gap <= 2  # the wide page followed the captions
        phone.click("#menu")  # the phone in dark colours, at the usual text size, its controls closed again
        while phone.locator("#smaller").is_enabled() and font_px(phone, "#finals .text") > 24:
            phone.click("#smaller")
        phone.click("#theme")
        phone.click("#menu")
        screenshot(phone, tmp_path, "captions-phone.png")

        wide.click("#clear")
        expect(wide.locator("#finals li")).to_have_count(0)
        expect(wide.locator("#empty")).to_be_visible()
    assert problems == []
    wide_ctx.close()
    phone_ctx.close()


@pytest.fixture()
def fake_daemon() -> Iterator[tuple[int, Callable[[Event], None]]]:
    """A CaptionServer (no model) on its own event loop in a thread: its port, and emit(event) to broadcast."""
    loop = asyncio.new_event_loop()
    server = make_server()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server.port, lambda event: loop.call_soon_threadsafe(server.broadcast, event)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_page_shows_the_protocol_as_documented(browser: Browser, fake_daemon: tuple[int, Any]) -> None:
    """Chosen messages, byte for byte: the partial's stable and unstable parts, a final in its place, text never
    taken as HTML, a cut-short and a failed final, warnings shown and ended by the messages that end them."""
    port, emit = fake_daemon
    ctx = browser.new_context(viewport=WIDE)
    page = ctx.new_page()
    problems: list[str] = []
    watch(page, problems, f"http://127.0.0.1:{port}")
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    partial, finals = page.locator("#partial"), page.locator("#finals li")

    emit(SpeechStarted(0, 1.0))
    expect(partial).to_be_visible()
    emit(Partial(0, 1.0, "Set a timer", " for ten"))
    expect(partial.locator(".stable")).to_have_text("Set a timer")
    expect(partial.locator(".unstable")).to_have_text(" for ten")
    emit(Partial(0, 1.0, "Set a timer for", " <b>ten</b> minutes"))
    expect(partial.locator(".unstable")).to_have_text(" <b>ten</b> minutes")
    emit(Final(0, 1.0, 3.5, "Set a timer for <b>ten</b> minutes.", "en", "eos", "2026-11-25T10:36:29.900+00:00"))
    emit(SpeechStopped(0, 3.5))
    expect(finals).to_have_count(1)
    expect(partial).to_be_hidden()
    expect(finals.first.locator(".text")).to_have_text("Set a timer for <b>ten</b> minutes.")
    assert page.locator("#finals b").count() == 0  # text, never markup
    local = page.evaluate("new Date('2026-11-25T10:36:29.900+00:00').toLocaleTimeString([], "
                          "{hour: '2-digit', minute: '2-digit', second: '2-digit'})")
    expect(finals.first.locator("time")).to_have_text(local)

    emit(Final(1, 4.0, 40.0, "one two one two", "en", "repetition"))
    emit(Final(2, 41.0, 43.0, "", "en", "error"))
    emit(Final(3, 44.0, 45.0, "", "en", "eos"))  # nothing was said: nothing to show
    expect(finals).to_have_count(3)
    expect(finals.nth(1)).to_have_class(re.compile(r"\bcut\b"))
    expect(finals.nth(2)).to_have_class(re.compile(r"\bfailed\b"))

    warnings = page.locator("#warnings .warning")
    emit(Status("warning", "falling_behind", "captions are 2.4 s behind the audio"))
    emit(Status("warning", "silent_microphone", "no audio above the noise floor for 30 s"))
    emit(Status("warning", "listener_failed", "transcript file: OSError: disk full"))
    expect(warnings).to_have_count(3)
    expect(warnings.first).to_be_visible()
    emit(Status("warning", "falling_behind", "captions are 5.0 s behind the audio"))  # the same warning, updated
    expect(page.locator(".warning[data-code=falling_behind]")).to_have_text(re.compile("5.0 s behind"))
    emit(Status("info", "caught_up", "captions have caught up with the audio"))
    expect(page.locator(".warning[data-code=falling_behind]")).to_have_count(0)
    emit(SpeechStarted(4, 50.0))  # speech: the microphone is not silent
    expect(page.locator(".warning[data-code=silent_microphone]")).to_have_count(0)
    page.click(".warning[data-code=listener_failed] button")  # dismissed by the reader
    expect(warnings).to_have_count(0)
    assert problems == []
    ctx.close()


def test_page_passes_the_token_of_its_address_to_its_websocket(browser: Browser) -> None:
    """With a token set the page still loads, says why it cannot connect, and connects with ?token=."""
    with Daemon("--source", str(ROOT / "samples" / "demo-en.wav"), env={TOKEN_ENV: TOKEN}) as d:
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{d.port}/")
        expect(page.locator("#conn")).to_have_attribute("data-state", "down")
        expect(page.locator("#conn-text")).to_contain_text("?token=")
        page.goto(f"http://127.0.0.1:{d.port}/?token={TOKEN}")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#finals li").first).to_be_visible(timeout=WAIT_MS)
        ctx.close()
