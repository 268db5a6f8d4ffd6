"""Who may connect: the token, Origin and Host rules of the websocket handshake, as pure functions.

A web page the user visits can open a websocket to 127.0.0.1, and DNS rebinding can make a foreign name point
there; the browser then sends that page's `Origin` and the foreign name in `Host`. So a handshake is refused
(403) unless `Host` names the address the daemon is bound to (any name when bound to a wildcard address, where
a token is required), and unless `Origin` is absent (a program, not a browser), is the daemon's own page
(http://<a bound name>:<port>) or is listed in `allowed_origins`. When a token is set, every handshake must
carry it (`Authorization: Bearer T`, `?token=T`, or the subprotocols `token, T` a browser can send), compared
in constant time; otherwise 401. Binding anything but loopback requires a token (DaemonConfig checks it).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

TOKEN_ENV = "COHERE_TRANSCRIBE_TOKEN"
TOKEN_SUBPROTOCOL = "token"  # `new WebSocket(url, ["token", T])`: the daemon answers with this subprotocol
MIN_TOKEN_CHARS = 16
_TOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110), so it fits a subprotocol
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """Why a token cannot be used (None when it can): it must be ≥ 16 characters of an HTTP token."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"token must be at least {MIN_TOKEN_CHARS} characters"
    if not _TOKEN_RE.fullmatch(token):
        return "token may hold only letters, digits and !#$%&'*+.^_`|~- (e.g. secrets.token_urlsafe(32))"
    return None


def parse_origins(text: str | None) -> frozenset[str]:
    """`allowed_origins` ("https://a.example, http://localhost:3000") → normalised origins."""
    return frozenset(normal_origin(o) for o in re.split(r"[\s,]+", text or "") if o)


def origins_problem(text: str | None) -> str | None:
    """Why `allowed_origins` cannot be used (None when it can): every entry must be scheme://host[:port]."""
    bad = [o for o in parse_origins(text) if not re.fullmatch(r"https?://[^/?#\s]+", o)]
    return f"allowed_origins: {bad[0]!r} is not an origin such as https://captions.example" if bad else None


def normal_origin(origin: str) -> str:
    """scheme://host[:port], lower case, no trailing slash, the scheme's default port dropped."""
    o = origin.strip().rstrip("/").lower()
    for scheme, port in (("http", ":80"), ("https", ":443")):
        if o.startswith(f"{scheme}://") and o.endswith(port):
            o = o.removesuffix(port)
    return o


@dataclass(frozen=True)
class AccessPolicy:
    """The daemon's rules: the address it is bound to, its token (None: no token) and extra Origins."""

    host: str
    token: str | None = None
    extra_origins: frozenset[str] = frozenset()

    def names(self) -> frozenset[str] | None:
        """Host names a request may use; None for a wildcard bind (the machine's every name)."""
        if self.host in WILDCARD_HOSTS:
            return None
        bound = self.host.strip("[]").lower()
        return LOOPBACK_NAMES | {bound} if is_loopback(self.host) else frozenset({bound})


@dataclass(frozen=True)
class Handshake:
    """What the rules read from an HTTP request (header values as sent; None when absent)."""

    path: str
    host: str | None = None
    origin: str | None = None
    authorization: str | None = None
    subprotocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer that ends the handshake."""

    status: int  # 401 (token) or 403 (Host, Origin)
    reason: str


def request_host(host_header: str | None) -> str | None:
    """The host name of a Host header ("[::1]:8765" → "::1"); None when absent or malformed."""
    if not host_header:
        return None
    try:
        parts = urlsplit("//" + host_header)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return None
    return parts.hostname


def origin_allowed(policy: AccessPolicy, port: int, origin: str | None, host: str) -> bool:
    """No Origin (not a browser), the daemon's own page, or an allowed origin; `host` is the request's Host."""
    if origin is None:
        return True
    o = normal_origin(origin)
    if o in policy.extra_origins:
        return True
    try:
        parts = urlsplit(o)
        origin_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    names = policy.names()
    own_names = {host} if names is None else names
    return parts.scheme == "http" and parts.hostname in own_names and origin_port == port  # it serves http


def request_token(request: Handshake) -> str | None:
    """The token a request carries: Authorization Bearer, then ?token=, then the subprotocols `token, T`."""
    auth = request.authorization or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    protocols = list(request.subprotocols)
    if TOKEN_SUBPROTOCOL in protocols:
        i = protocols.index(TOKEN_SUBPROTOCOL)
        if i + 1 < len(protocols):
            return protocols[i + 1]
    return None


def token_matches(expected: str | None, given: str | None) -> bool:
    """True when no token is required, or `given` is it (constant-time comparison)."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def check(policy: AccessPolicy, port: int, request: Handshake, need_token: bool = True) -> Refusal | None:
    """The refusal of a request, or None to let it through (Host, then Origin, then the token)."""
    host = request_host(request.host)
    names = policy.names()
    if host is None or (names is not None and host.lower() not in names):
        return Refusal(403, "Host not allowed: connect to the address the daemon listens on\n")
    if not origin_allowed(policy, port, request.origin, host.lower()):
        return Refusal(403, "Origin not allowed: add it to allowed_origins to let that page read captions\n")
    if need_token and not token_matches(policy.token, request_token(request)):
        return Refusal(401, "a valid token is required (Authorization: Bearer, ?token=, or subprotocols "
                            "'token, <token>')\n")
    return None
