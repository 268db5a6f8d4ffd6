"""Token budget → segment length: the longest speech one window may hold so its transcript fits the budget.

A window decodes at most `max_new_tokens` tokens (256 for our exports, 98 = 108 cache positions − 10 prompt
tokens for FluidInference's Core ML files). Speech cut longer than the budget can carry loses its end: the
decoder stops with stop_reason "max_new_tokens". So segments are cut at

    max_segment_seconds = min(window, max(MIN_SEGMENT_S, max_new_tokens / TOKENS_PER_SECOND))

TOKENS_PER_SECOND = 7 tokens per second of segment, the design rate for all 14 languages. Evidence (docs/macos.md,
"Token budget", has the table and sources):
- Measured with the real tokenizer (FluidInference's published q8 results on FLEURS, 12 clips in en, es, fr, zh,
  tokens the model produced ÷ clip duration): 2.7 to 5.4 tokens/s, mean 3.7; the densest is French (45 tokens in
  8.3 s); one French clip of 23.4 s stopped at the 98-token cap mid-word.
- Reading rates without pauses (Pellegrino, Coupé & Marsico 2011: English 6.2, Spanish 7.8, Mandarin 5.2
  syllables/s) times tokens per syllable counted in those transcripts (en 0.9, es 0.8, fr 0.9, zh 1.3–1.45: rare
  Chinese characters fall back to byte pieces) give 5.8 to 7.5 tokens per second of pure speech.
- A live segment also holds its pre-roll, the pause that ends it and the short pauses inside it, so 7 per second
  of segment covers every rate measured (5.4) with a 30 % margin and the pause-free estimates but the fastest.
For 98 tokens this cuts at 14.0 s; for 256 tokens the window (35 s) stays the limit. Speech denser still reaches the
cap, and that window ends with stop_reason "max_new_tokens" (logged), never silently.
"""

from __future__ import annotations

TOKENS_PER_SECOND = 7.0  # design rate: tokens of transcript per second of segment, any of the 14 languages
MIN_SEGMENT_S = 2.0  # a tiny --max-new-tokens (benchmarks) does not cut speech into slivers


def max_segment_seconds(max_new_tokens: int, window_s: float) -> float:
    """The longest segment (seconds) whose transcript fits max_new_tokens at TOKENS_PER_SECOND, ≤ the window."""
    return min(window_s, max(MIN_SEGMENT_S, max_new_tokens / TOKENS_PER_SECOND))


def split_search_seconds(search_s: float, segment_s: float) -> float:
    """The span at a segment's end searched for the quietest cut: the bundle's, at most half the segment."""
    return min(search_s, segment_s / 2)
