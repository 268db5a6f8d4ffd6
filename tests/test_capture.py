"""Capture edges without devices: reframing/resampling, the file source's pacing, stdin PCM parsing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from daemon.live.capture import FRAME_SAMPLES, FileSource, Reframer

SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))  # stretches the upper time bounds on slow machines


def test_reframer_is_exact_at_16k() -> None:
    r = Reframer(16000)
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    frames = []
    for i in range(0, len(x), 333):  # chunks of an awkward size
        frames += r.push(x[i : i + 333])
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    assert np.array_equal(np.concatenate(frames), x[: len(frames) * FRAME_SAMPLES])


def test_reframer_resamples_44100() -> None:
    r = Reframer(44100)
    t = np.arange(44100 * 2) / 44100
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    frames = []
    for i in range(0, len(x), 1323):
        frames += r.push(x[i : i + 1323])
    frames += r.push(np.zeros(0, np.float32), last=True)
    y = np.concatenate(frames)
    assert abs(len(y) - 32000) < FRAME_SAMPLES
    spectrum = np.abs(np.fft.rfft(y[1000:17000]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # 16000 samples at 16 kHz: bin k is k Hz


def test_file_source_real_time_and_fast(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(16000, np.float32), 16000)

    async def drain(fast: bool) -> tuple[int, float]:
        src = FileSource(str(p), fast)
        src.start()
        t0, n = time.monotonic(), 0
        async for _ in src.frames():
            n += 1
        return n, time.monotonic() - t0

    n, real = asyncio.run(drain(False))
    assert n == 16000 // FRAME_SAMPLES and 0.9 <= real <= 0.9 + 0.6 * SCALE  # paced like the audio (1 s)
    n, fast = asyncio.run(drain(True))
    assert fast < 0.3 * SCALE


def test_stdin_pcm_odd_chunks() -> None:
    """Bytes split at odd offsets still decode to the right samples (a stdin reader must carry the odd byte)."""
    code = (
        "import asyncio, sys, numpy as np\n"
        "from daemon.live.capture import StdinSource\n"
        "async def main():\n"
        "    s = StdinSource(16000); s.start(); out = []\n"
        "    async for f in s.frames(): out.append(f)\n"
        "    y = np.concatenate(out); print(len(y), float(y[:4800].sum()))\n"
        "asyncio.run(main())\n"
    )
    pcm = (np.arange(4800) % 100).astype("<i2").tobytes()
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for i in range(0, len(pcm), 777):  # odd chunk size
            proc.stdin.write(pcm[i : i + 777])
            proc.stdin.flush()
        proc.stdin.close()
        n, total = proc.stdout.read().decode().split()
        assert proc.wait(30) == 0
    assert int(n) == 4800
    assert abs(float(total) - (np.arange(4800) % 100).sum() / 32768) < 1e-3
