"""docs/protocol.schema.json loaded once, with a validator that checks date-times too (shared by the tests)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "protocol.schema.json").read_text())


# jsonschema checks "date-time" only when rfc3339-validator is installed; check it here either way.
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value or datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is None:
        raise ValueError(f"not an RFC 3339 date-time with an offset: {value!r}")
    return True


VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=FORMATS)
