"""The caption text policy of partials: which words of a re-decoded segment are stable, and which may change.

Every partial re-decodes the whole open segment, and the decoder may revise any word. A client shows
`stable + unstable` and may commit `stable`, so `stable` must only ever grow, and `stable + unstable` must
never repeat words. StablePrefix is that policy, pure (words in, words out), so it can be tested by tables.
"""

from __future__ import annotations


def common_prefix(a: list[str], b: list[str]) -> int:
    """How many leading words a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class StablePrefix:
    """The stable words of one segment's partials.

    A word becomes stable when two consecutive decodes agree on it and the newer decode begins with the
    words already stable. Stable words are never taken back: when a later decode revises one, `stable`
    stays as it is and `unstable` is what that decode has after len(stable) words.
    """

    def __init__(self) -> None:
        self.stable: list[str] = []
        self._previous: list[str] | None = None

    def update(self, words: list[str]) -> tuple[list[str], list[str]]:
        """The next decode's words → (stable, unstable); stable + unstable never repeats a word."""
        n = len(self.stable)
        if self._previous is not None and words[:n] == self.stable:
            agreed = common_prefix(self._previous, words)
            if agreed > n:
                self.stable = words[:agreed]
        self._previous = list(words)
        return list(self.stable), words[len(self.stable):]


def partial_text(stable: list[str], unstable: list[str]) -> tuple[str, str]:
    """Words → the `stable` and `unstable` fields of a partial: the unstable part carries the space that
    joins it to the stable part, so a client can display stable + unstable as is."""
    s, u = " ".join(stable), " ".join(unstable)
    return s, (" " + u if s and u else u)
