"""The live captions page (clients/web/): its few static files, answered at GET / beside the websocket.

Only the files named in ROUTES are served, by fixed URL path (nothing from a request is ever joined to a disk
path), read once from the installed package data (`clients/web/`, shipped in the wheel) and kept in memory.
The page is public and holds no secret, so its files need no token; the websocket it opens still does (the
page passes on the `?token=` of its own address). A request that asks for a websocket upgrade is never
answered with a file. Every answer carries a Content-Security-Policy that lets the page load only its own
files and connect only to its own origin.
"""

from __future__ import annotations

import functools
import logging
from importlib.resources import files

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

PACKAGE, FOLDER = "clients", "web"  # the page ships as package data of clients/ (pyproject's package-data)

# URL path -> (file in clients/web/, Content-Type); nothing else is served
ROUTES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/captions.css": ("captions.css", "text/css; charset=utf-8"),
    "/captions.js": ("captions.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

# Its own files and its own websocket, nothing else: no inline script or style, no other origin, no frames.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def wants_websocket(request: Request) -> bool:
    """True when the request asks to become a websocket (`Upgrade: websocket`)."""
    return any(p.strip().lower() == "websocket" for v in request.headers.get_all("Upgrade") for p in v.split(","))


def route(path: str, request: Request) -> str | None:
    """The page file a plain GET of `path` asks for; None for a websocket handshake or any other path."""
    return None if path not in ROUTES or wants_websocket(request) else path


@functools.cache
def _read(name: str) -> bytes | None:
    """A file of the page (cached for the daemon's life); None when the install lacks it."""
    try:
        return (files(PACKAGE) / FOLDER / name).read_bytes()
    except (OSError, ModuleNotFoundError) as e:
        log.error("the captions page file %s/%s/%s cannot be read: %s", PACKAGE, FOLDER, name, e)
        return None


def response(path: str) -> Response:
    """The answer to GET `path` (one of ROUTES): the file, or 404 when the install lacks it."""
    name, content_type = ROUTES[path]
    body = _read(name)
    if body is None:
        text = f"the captions page is not installed ({PACKAGE}/{FOLDER}/{name} is missing)\n".encode()
        return Response(404, "Not Found", Headers([("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(text)))]), text)
    return Response(200, "OK", Headers([
        ("Content-Type", content_type), ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),  # a newer daemon's page is picked up at the next load
        ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),  # the page's address may hold the token
    ]), body)
