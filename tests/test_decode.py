"""Decode-loop helpers: the loop guard and the token budget."""

from __future__ import annotations

import pytest

from daemon.model.decode import repetition_cut


@pytest.mark.parametrize("tokens,keep", [
    ([1, 2, 3] + [5] * 12, 4),  # one token over and over: keep one copy
    ([1, 2] + [7, 8] * 6, 4),  # a bigram loop
    ([9] + [4, 5, 6] * 4, 4),  # a trigram loop
    ([1, 2] + [3, 4, 5, 6, 7, 8, 9, 10] * 4, 10),  # an 8-gram repeated 4 times
])
def test_loops_are_cut_to_one_copy(tokens: list[int], keep: int) -> None:
    assert repetition_cut(tokens) == keep


@pytest.mark.parametrize("tokens", [
    list(range(30)),  # no repetition
    [5] * 11,  # "no no no ..." shorter than the 12-token floor
    [1, 2] * 5,  # 10 tokens of a bigram: under the floor
    [1, 2, 3] * 3,  # three repeats of a trigram
])
def test_speech_is_not_a_loop(tokens: list[int]) -> None:
    assert repetition_cut(tokens) is None
