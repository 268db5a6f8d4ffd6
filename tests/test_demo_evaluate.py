"""The demo evaluation's multi-sentence sets (exporter/demo/evaluate.py --multi-rounds) and the model card's
pooled WER over sets of different sizes (exporter/demo/card.py)."""

from __future__ import annotations

from exporter.demo import card, grammar
from exporter.demo.evaluate import PER_CLIP, multi_groups


def test_round_zero_is_the_set_measured_so_far_and_later_rounds_regroup_the_same_sentences() -> None:
    sentences = grammar.demo_heldout("en")[:60]
    one = multi_groups(sentences, 1, seed=7)
    assert one == [sentences[i:i + PER_CLIP] for i in range(0, 60, PER_CLIP)]
    four = multi_groups(sentences, 4, seed=7)
    assert len(four) == 80 and four[:20] == one
    for r in range(1, 4):
        clips = four[20 * r:20 * (r + 1)]
        assert sorted(s for c in clips for s in c) == sorted(sentences)  # every sentence once per round
        assert clips != one
    assert four[20:40] != four[40:60]
    assert multi_groups(sentences, 4, seed=7) == four  # seeded: the same clips every run


def test_pooled_wer_weights_each_set_by_its_words() -> None:
    """A set of 4 rounds holds 4× the words of a one-sentence set over the same sentences."""
    single = {"lang": "en", "wer": 0.10}
    multi = {"lang": "en", "wer": 0.40, "rounds": 4}
    assert abs(card._pooled([single, multi], 60) - 100 * (0.10 + 4 * 0.40) / 5) < 1e-9
    assert abs(card._pooled([single, {**multi, "rounds": 1}], 60) - 25.0) < 1e-9
