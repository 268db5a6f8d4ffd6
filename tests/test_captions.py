"""StablePrefix, the partials' text policy, by tables: decodes in, (stable, unstable) out, revisions included."""

from __future__ import annotations

import itertools

import pytest

from daemon.live.captions import StablePrefix, common_prefix, partial_text

# Each case: the words of consecutive partial decodes of one segment → the (stable, unstable) expected after each.
CASES = {
    "grows when two decodes agree": [
        ("turn on", "", "turn on"),
        ("turn on the", "turn on", "the"),
        ("turn on the lights", "turn on the", "lights"),
    ],
    "the review's revision: no repeated text": [
        ("turn on the", "", "turn on the"),
        ("turn on the lights", "turn on the", "lights"),
        ("turn off the lights in", "turn on the", "lights in"),  # not "turn on the off the lights in"
    ],
    "after a revision, stable grows again only when both decodes start with it": [
        ("turn on the", "", "turn on the"),
        ("turn on the lights", "turn on the", "lights"),
        ("turn off the lights in", "turn on the", "lights in"),
        ("turn on the lights in the", "turn on the", "lights in the"),  # the previous decode did not agree
        ("turn on the lights in the hall", "turn on the lights in the", "hall"),
    ],
    "a flickering last word never becomes stable": [
        ("one TWO", "", "one TWO"),
        ("one two", "one", "two"),
        ("one TWO", "one", "TWO"),
        ("one two three", "one", "two three"),
        ("one two three", "one two three", ""),
    ],
    "a shorter decode keeps stable and shows nothing after it": [
        ("a b c", "", "a b c"),
        ("a b c d", "a b c", "d"),
        ("a b", "a b c", ""),
        ("", "a b c", ""),
    ],
    "the first word revised: stable stays, the rest follows it": [
        ("hello world", "", "hello world"),
        ("hello world again", "hello world", "again"),
        ("yellow world again and", "hello world", "again and"),
    ],
    "no agreement at all": [
        ("a", "", "a"),
        ("b", "", "b"),
        ("c d", "", "c d"),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_stable_prefix_table(name: str) -> None:
    policy = StablePrefix()
    for decode, stable, unstable in CASES[name]:
        got = policy.update(decode.split())
        assert got == (stable.split(), unstable.split()), (name, decode)


@pytest.mark.parametrize("name", list(CASES))
def test_stable_only_grows_and_the_text_never_repeats(name: str) -> None:
    policy = StablePrefix()
    shown: list[list[str]] = []
    for decode, _, _ in CASES[name]:
        words = decode.split()
        stable, unstable = policy.update(words)
        shown.append(stable)
        assert stable + unstable == stable + words[len(stable):]  # what follows stable is the decode's own tail
        assert len(stable + unstable) == max(len(stable), len(words))
    for a, b in itertools.pairwise(shown):
        assert b[: len(a)] == a


@pytest.mark.parametrize(("stable", "unstable", "fields"), [
    ([], [], ("", "")),
    ([], ["a", "b"], ("", "a b")),
    (["a"], [], ("a", "")),
    (["a", "b"], ["c"], ("a b", " c")),
])
def test_partial_text_joins_with_one_space(stable: list[str], unstable: list[str], fields: tuple[str, str]) -> None:
    s, u = partial_text(stable, unstable)
    assert (s, u) == fields
    assert (s + u).split() == stable + unstable and "  " not in s + u


def test_common_prefix() -> None:
    assert common_prefix([], ["a"]) == 0
    assert common_prefix(["a", "b"], ["a", "c"]) == 1
    assert common_prefix(["a", "b"], ["a", "b", "c"]) == 2
