"""The websocket wire format: one JSON text message per event, each with a `type` and a sequence number.

Server → client (every message has `seq`, a number that grows by one per message the daemon emits, shared
by all clients, so a reconnecting client can tell what it missed; `hello`, `pong` and `error` are sent to one
client only and carry the seq of the last broadcast message instead):

| type            | fields                                                                                      |
|-----------------|---------------------------------------------------------------------------------------------|
| hello           | protocol, model, backend, settings, finals (the most recent, oldest first), seq             |
| speech_started  | segment, start                                                                              |
| partial         | segment, start, stable (only grows between partials), unstable                              |
| final           | segment, start, end, text, language, timestamp (ISO 8601 UTC), stop_reason                  |
| speech_stopped  | segment, end                                                                                |
| status          | level (info / warning), code, message, settings (when settings changed), lag_s (falling_behind, caught_up) |
| error           | code, message                                                                               |
| pong            | id (echoed), seq                                                                            |

Client → server: `configure` {language?, punctuation?} (daemon-wide; announced to every client with a status),
`finalize` (close the open segment now), `pause`, `resume`, `ping` {id?}.

Times (`start`, `end`) are seconds on the stream clock (audio since the daemon started listening); `final`
also carries a wall-clock `timestamp`. docs/protocol.md and docs/protocol.schema.json describe the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

PROTOCOL = "cohere-transcribe/1"


def _r(seconds: float) -> float:
    return round(seconds, 3)


@dataclass(frozen=True)
class Settings:
    """The daemon-wide settings a client can see (and change with `configure`)."""

    language: str
    punctuation: bool
    paused: bool


@dataclass(frozen=True)
class Event:
    """Base of server messages: `type` comes from the class, `seq` is set when the event is emitted."""

    type: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name in ("start", "end"):  # stream times go out in milliseconds
            if hasattr(self, name):
                object.__setattr__(self, name, _r(getattr(self, name)))

    def to_dict(self, seq: int) -> dict[str, Any]:
        return {"type": self.type, "seq": seq, **asdict(self)}

    def to_json(self, seq: int) -> str:
        return json.dumps(self.to_dict(seq), ensure_ascii=False)


@dataclass(frozen=True)
class SpeechStarted(Event):
    type: ClassVar[str] = "speech_started"
    segment: int
    start: float


@dataclass(frozen=True)
class Partial(Event):
    type: ClassVar[str] = "partial"
    segment: int
    start: float
    stable: str
    unstable: str


@dataclass(frozen=True)
class Final(Event):
    type: ClassVar[str] = "final"
    segment: int
    start: float
    end: float
    text: str
    language: str
    stop_reason: str  # eos | max_new_tokens | repetition | error (decoding failed; text is empty)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


@dataclass(frozen=True)
class SpeechStopped(Event):
    type: ClassVar[str] = "speech_stopped"
    segment: int
    end: float


@dataclass(frozen=True)
class Status(Event):
    type: ClassVar[str] = "status"
    level: str  # info | warning
    code: str  # e.g. silent_microphone, settings_changed, model_loaded, paused, resumed, source_ended
    message: str
    settings: Settings | None = None
    lag_s: float | None = None  # falling_behind, caught_up: how late captions are, in seconds (0.1 s steps)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lag_s is not None:
            object.__setattr__(self, "lag_s", round(self.lag_s, 1))

    def to_dict(self, seq: int) -> dict[str, Any]:
        d = super().to_dict(seq)
        for optional in ("settings", "lag_s"):
            if d[optional] is None:
                del d[optional]
        return d


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str  # bad_json | bad_message | unknown_type | bad_value
    message: str


@dataclass(frozen=True)
class Pong(Event):
    type: ClassVar[str] = "pong"
    id: str | int | None = None


@dataclass(frozen=True)
class Hello(Event):
    type: ClassVar[str] = "hello"
    protocol: str
    model: str
    backend: str
    settings: Settings
    finals: list[dict[str, Any]]  # Final.to_dict() of the most recent finals, oldest first


# Client commands -------------------------------------------------------------------------------------------

CLIENT_TYPES = ("configure", "finalize", "pause", "resume", "ping")


class BadMessage(ValueError):
    """A client message that cannot be used; `code` is the error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Command:
    """A validated client command."""

    type: str
    language: str | None = None
    punctuation: bool | None = None
    id: str | int | None = None


def parse_command(raw: str | bytes, max_bytes: int = 4096) -> Command:
    """Parse and validate one client message.

    Raises:
        BadMessage: with code bad_json, bad_message, unknown_type or bad_value.
    """
    if isinstance(raw, bytes):
        raise BadMessage("bad_message", "binary messages are not accepted; send JSON text")
    if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadMessage("bad_message", f"message longer than {max_bytes} bytes")
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadMessage("bad_json", f"not JSON: {e.msg}") from e
    except RecursionError as e:  # "[[[[..." nested deeper than the parser allows
        raise BadMessage("bad_json", "not JSON: nested too deeply") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise BadMessage("bad_message", "a message is a JSON object with a string field 'type'")
    kind = msg["type"]
    if kind not in CLIENT_TYPES:
        raise BadMessage("unknown_type", f"unknown type {kind!r} (expected one of {', '.join(CLIENT_TYPES)})")
    allowed = {"configure": {"language", "punctuation"}, "ping": {"id"}}.get(kind, set())
    extra = set(msg) - allowed - {"type"}
    if extra:
        raise BadMessage("bad_message", f"unexpected fields for {kind}: {', '.join(sorted(extra))}")
    if kind == "configure":
        lang, pnc = msg.get("language"), msg.get("punctuation")
        if lang is not None and not isinstance(lang, str):
            raise BadMessage("bad_value", "language must be a string such as 'en'")
        if pnc is not None and not isinstance(pnc, bool):
            raise BadMessage("bad_value", "punctuation must be true or false")
        if lang is None and pnc is None:
            raise BadMessage("bad_message", "configure needs language and/or punctuation")
        return Command(kind, language=lang, punctuation=pnc)
    if kind == "ping":
        pid = msg.get("id")
        if pid is not None and (not isinstance(pid, (str, int)) or isinstance(pid, bool)):
            raise BadMessage("bad_value", "ping id must be a string or an integer")
        return Command(kind, id=pid)
    return Command(kind)
