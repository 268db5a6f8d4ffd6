"""README's configuration reference, generated from `serve`'s own parser and DaemonConfig.

    python -m devtools.config_reference          # print the table
    python -m devtools.config_reference --write  # replace it in README.md between the markers

Every key of the `--config` TOML file is a `serve` flag; the table lists each with its type, default and help
as the code defines them. tests/test_readme.py fails when README.md's table differs from this output, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from daemon.cli import _parser
from daemon.live.config import FIELDS, HINTS, field_default

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- config-reference:start (python -m devtools.config_reference --write) -->"
END = "<!-- config-reference:end -->"


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def _type_name(name: str) -> str:
    hint = HINTS[name]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    return " or ".join(k.__name__ for k in kinds)


def _default(name: str, help_text: str) -> str:
    value = field_default(name)
    if value is None:  # the help says what None means, as "(default: ...)"
        _, sep, said = help_text.partition(" (default: ")
        return _cell(said.removesuffix(")")) if sep else "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows() -> list[tuple[str, str, str, str, str]]:
    """(TOML key, flag, type, default, meaning) for every DaemonConfig field, in the parser's order."""
    out = []
    for action in _serve_parser()._actions:
        if action.dest not in FIELDS or not action.option_strings:
            continue
        help_text = (action.help or "").split(" (default: ")[0]
        default = _default(action.dest, action.help or "")
        if action.choices is not None and not isinstance(action.choices, range):
            help_text += f" ({' | '.join(map(str, action.choices))})"
        flag = action.option_strings[0]
        key = action.dest
        if isinstance(field_default(key), bool) or key == "punctuation":
            key_text = f"`{key} = {'false' if action.const is False else 'true'}`"
        else:
            key_text = f"`{key}`"
        out.append((key_text, f"`{flag}`", _type_name(action.dest), default, _cell(help_text)))
    return out


def table() -> str:
    lines = ["| TOML key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows()]
    return "\n".join(lines)


def replace_in(text: str) -> str:
    """README text with the table between the markers replaced by the generated one."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"README.md lacks the markers {START!r} … {END!r}")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    args = ap.parse_args(argv)
    if args.write:
        README.write_text(replace_in(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
