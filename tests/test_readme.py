"""README.md against the code: the configuration reference is the generated one, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.live.config import FIELDS
from devtools import config_reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_the_configuration_reference_is_what_the_code_defines() -> None:
    text = README.read_text(encoding="utf-8")
    assert config_reference.replace_in(text) == text, (
        "README's configuration table differs from the code: python -m devtools.config_reference --write")


def test_every_config_key_is_in_the_reference_once() -> None:
    keys = [re.match(r"`(\w+)", r[0]).group(1) for r in config_reference.rows()]  # type: ignore[union-attr]
    assert sorted(keys) == sorted(FIELDS), "a DaemonConfig field without a serve flag, or a flag twice"


def test_every_relative_link_and_image_in_the_docs_exists() -> None:
    missing = []
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not missing, missing
