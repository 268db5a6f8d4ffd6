"""Audio without a model: files, windows, voice activity. Imports no asyncio, websockets or sounddevice.

The live path's constants live here, once: every other module derives from them.
"""

from __future__ import annotations


def exact_div(a: int, b: int) -> int:
    """a / b, asserting that it divides exactly (a constant that does not divide is a bug)."""
    assert a % b == 0, f"{a} is not a multiple of {b}"
    return a // b


SAMPLE_RATE = 16000  # Hz: the live stream's rate; a bundle with another rate is refused at startup
FRAME_MS = 30  # one VAD frame (webrtcvad accepts 10, 20 or 30 ms)
FRAME_SAMPLES = exact_div(SAMPLE_RATE * FRAME_MS, 1000)  # 480
