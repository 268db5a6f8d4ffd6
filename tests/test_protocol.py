"""The wire format: daemon/live/messages.py against docs/protocol.schema.json, and parse_command's verdicts.

The set of server message types comes from the code (every subclass of `Event`) and from the schema (its
`oneOf`), never from a list typed here, so a new event without a schema entry (or the reverse) fails.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema
import pytest
from protocol_schema import SCHEMA, VALIDATOR

from daemon.live.messages import (
    CLIENT_TYPES,
    PROTOCOL,
    BadMessage,
    Command,
    Error,
    Event,
    Final,
    Hello,
    Partial,
    Pong,
    Settings,
    SpeechStarted,
    SpeechStopped,
    Status,
    parse_command,
)


def event_classes(base: type[Event] = Event) -> list[type[Event]]:
    """Every class below `base` (subclasses of subclasses too): the server messages the code can send."""
    return [c for sub in base.__subclasses__() for c in (sub, *event_classes(sub))]


EVENTS = {cls.type: cls for cls in event_classes()}
SCHEMA_SERVER_TYPES = {b["$ref"].removeprefix("#/$defs/") for b in SCHEMA["oneOf"]}

SETTINGS = Settings(language="en", punctuation=True, paused=False)
FINAL = Final(segment=3, start=12.4801, end=15.9, text="Turn on the lights.", language="en", stop_reason="eos")


def server_messages() -> list[dict[str, Any]]:
    """One of each server message (two of status), as the daemon serialises them."""
    return [
        json.loads(m)
        for m in (
            Hello(PROTOCOL, "cohere-transcribe-03-2026", "onnx", SETTINGS, [FINAL.to_dict(40)]).to_json(57),
            Hello(PROTOCOL, "tiny", "coreml", SETTINGS, []).to_json(0),
            SpeechStarted(segment=4, start=17.2).to_json(58),
            Partial(segment=4, start=17.2, stable="Set a", unstable=" timer").to_json(59),
            FINAL.to_json(60),
            Final(0, 0.0, 1.0, "", "es", "max_new_tokens").to_json(61),
            Final(1, 1.0, 2.0, "la la la", "es", "repetition").to_json(62),
            SpeechStopped(segment=4, end=19.85).to_json(63),
            Status("info", "settings_changed", "language is now es", Settings("es", False, True)).to_json(64),
            Status("warning", "silent_microphone", "no audio").to_json(65),
            Status("warning", "falling_behind", "captions are 3.2 s behind the audio", lag_s=3.24).to_json(65),
            Status("info", "caught_up", "captions have caught up with the audio", lag_s=0.0).to_json(65),
            Error("bad_json", "not JSON").to_json(65),
            Pong(id=7).to_json(65),
            Pong(id="abc").to_json(65),
            Pong().to_json(65),
        )
    ]


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(CLIENT_TYPES) <= set(SCHEMA["$defs"])


def test_server_types_in_code_and_schema_agree() -> None:
    assert len(EVENTS) == len(event_classes()), "two Event classes share a type"
    assert "" not in EVENTS, "an Event subclass without a type"
    assert set(EVENTS) == SCHEMA_SERVER_TYPES
    for name in SCHEMA_SERVER_TYPES:
        assert SCHEMA["$defs"][name]["properties"]["type"] == {"const": name}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_event_fields_are_the_schema_properties(name: str) -> None:
    fields = {f.name for f in dataclasses.fields(EVENTS[name])}
    assert fields | {"type", "seq"} == set(SCHEMA["$defs"][name]["properties"])


@pytest.mark.parametrize("msg", server_messages(), ids=lambda m: m["type"])
def test_server_messages_match_schema(msg: dict[str, Any]) -> None:
    VALIDATOR.validate(msg)


def test_every_server_type_is_covered() -> None:
    assert {m["type"] for m in server_messages()} == set(EVENTS)


def _broken(base: dict[str, Any], drop: str | None = None, **change: Any) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k != drop}
    return out | change


def malformed() -> list[tuple[str, dict[str, Any]]]:
    final = FINAL.to_dict(5)
    hello = json.loads(Hello(PROTOCOL, "m", "onnx", SETTINGS, [final]).to_json(5))
    status = Status("info", "paused", "paused").to_dict(5)
    return [
        ("missing seq", _broken(final, drop="seq")),
        ("negative seq", _broken(final, seq=-1)),
        ("float seq", _broken(final, seq=1.5)),
        ("string seq", _broken(final, seq="5")),
        ("extra field", _broken(final, confidence=0.9)),
        ("missing text", _broken(final, drop="text")),
        ("missing timestamp", _broken(final, drop="timestamp")),
        ("bad timestamp", _broken(final, timestamp="yesterday")),
        ("bad stop_reason", _broken(final, stop_reason="timeout")),
        ("negative start", _broken(final, start=-0.1)),
        ("string end", _broken(final, end="15.9")),
        ("negative segment", _broken(final, segment=-1)),
        ("unknown type", _broken(final, type="transcript")),
        ("no type", _broken(final, drop="type")),
        ("client type", {"type": "ping", "seq": 1}),
        ("bad level", _broken(status, level="error")),
        ("status without message", _broken(status, drop="message")),
        ("bad settings", _broken(status, settings={"language": "en", "punctuation": "yes", "paused": False})),
        ("partial settings", _broken(status, settings={"language": "en"})),
        ("negative lag", _broken(status, lag_s=-0.5)),
        ("string lag", _broken(status, lag_s="3 s")),
        ("hello without finals", _broken(hello, drop="finals")),
        ("hello with a bad final", _broken(hello, finals=[_broken(final, drop="seq")])),
        ("partial without unstable", _broken(Partial(1, 0.5, "a", "b").to_dict(2), drop="unstable")),
        ("pong float id", Pong(id=1.5).to_dict(3)),  # type: ignore[arg-type]
        ("pong without id", _broken(Pong(id=1).to_dict(3), drop="id")),
        ("bad error code", _broken(Error("bad_json", "x").to_dict(3), code="oops")),
        ("not an object", []),
    ]


@pytest.mark.parametrize(("why", "msg"), malformed(), ids=[w for w, _ in malformed()])
def test_malformed_messages_fail(why: str, msg: Any) -> None:
    assert not VALIDATOR.is_valid(msg), why


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type": "configure", "language": "es"}', Command("configure", language="es")),
        ('{"type": "configure", "punctuation": false}', Command("configure", punctuation=False)),
        ('{"type": "configure", "language": "de", "punctuation": true}', Command("configure", "de", True)),
        ('{"type": "finalize"}', Command("finalize")),
        ('{"type": "pause"}', Command("pause")),
        ('{"type": "resume"}', Command("resume")),
        ('{"type": "ping"}', Command("ping")),
        ('{"type": "ping", "id": 7}', Command("ping", id=7)),
        ('{"type": "ping", "id": "abc"}', Command("ping", id="abc")),
    ],
)
def test_parse_command_accepts(raw: str, expected: Command) -> None:
    assert parse_command(raw) == expected
    # and the documented client shape in the schema agrees
    jsonschema.Draft202012Validator(SCHEMA["$defs"][expected.type] | {"$defs": SCHEMA["$defs"]}).validate(
        json.loads(raw)
    )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("hello", "bad_json"),
        ("", "bad_json"),
        ('{"type": "ping"', "bad_json"),
        (b'{"type": "ping"}', "bad_message"),
        ("[1, 2]", "bad_message"),
        ('"ping"', "bad_message"),
        ("null", "bad_message"),
        ("{}", "bad_message"),
        ('{"type": 3}', "bad_message"),
        ('{"type": "subscribe"}', "unknown_type"),
        ('{"type": "final"}', "unknown_type"),
        ('{"type": "pause", "now": true}', "bad_message"),
        ('{"type": "ping", "id": 1, "x": 2}', "bad_message"),
        ('{"type": "configure"}', "bad_message"),
        ('{"type": "configure", "language": "en", "model": "x"}', "bad_message"),
        ('{"type": "configure", "language": 5}', "bad_value"),
        ('{"type": "configure", "punctuation": "yes"}', "bad_value"),
        ('{"type": "configure", "punctuation": 1}', "bad_value"),
        ('{"type": "ping", "id": 1.5}', "bad_value"),
        ('{"type": "ping", "id": [1]}', "bad_value"),
        ('{"type": "ping", "id": "' + "x" * 5000 + '"}', "bad_message"),
    ],
)
def test_parse_command_rejects(raw: str | bytes, code: str) -> None:
    with pytest.raises(BadMessage) as e:
        parse_command(raw)
    assert e.value.code == code
    assert str(e.value)  # a message for the client


def test_parse_command_size_limit() -> None:
    msg = '{"type": "ping", "id": "' + "x" * 100 + '"}'
    assert parse_command(msg, max_bytes=len(msg)).id == "x" * 100
    with pytest.raises(BadMessage, match="longer"):
        parse_command(msg, max_bytes=len(msg) - 1)


def test_ping_id_rejects_bool() -> None:  # bool is an int subclass; its pong would break the schema
    with pytest.raises(BadMessage):
        parse_command('{"type": "ping", "id": true}')


def test_deeply_nested_json_is_bad_message() -> None:  # json.loads raises RecursionError
    with pytest.raises(BadMessage, match="nested"):
        parse_command("[" * 4000)
