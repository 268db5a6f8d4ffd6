"""Audio sources at the edge: microphone (sounddevice), file (real-time paced or fast), stdin (raw s16le PCM).

Each source yields float32 frames of FRAME_SAMPLES at 16 kHz into an asyncio queue. Producer threads (the
PortAudio callback, the stdin reader) hand chunks to the event loop with call_soon_threadsafe, which never
blocks them; the queue is unbounded so audio that arrives while the model loads is kept, not lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from daemon.audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from daemon.errors import CaptureError

log = logging.getLogger(__name__)

__all__ = ["FRAME_MS", "FRAME_SAMPLES", "SAMPLE_RATE", "FileSource", "MicSource", "SilenceWatch", "Source",
           "StdinSource", "list_devices", "open_source"]

END = None  # queue marker: the source has no more audio
SILENT_MIC_S = 5.0  # this much exact digital silence from a microphone means macOS withheld permission


class Reframer:
    """Resample chunks of any length from `rate` to 16 kHz and cut them into FRAME_SAMPLES frames."""

    def __init__(self, rate: int) -> None:
        self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None
        self._buf = np.zeros(0, np.float32)

    def push(self, chunk: npt.NDArray[np.float32], last: bool = False) -> list[npt.NDArray[np.float32]]:
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk.astype(np.float32), last=last)
        self._buf = np.concatenate([self._buf, chunk.astype(np.float32)])
        n = len(self._buf) // FRAME_SAMPLES
        frames = [self._buf[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(n)]
        self._buf = self._buf[n * FRAME_SAMPLES :]
        return frames


class Source:
    """Base: an asyncio queue of frames, filled by `start()`, drained by `frames()`."""

    name = "source"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[npt.NDArray[np.float32] | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _put_threadsafe(self, frames: list[npt.NDArray[np.float32]] | None) -> None:
        assert self._loop is not None
        if frames is None:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, END)
        else:
            for f in frames:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, f)

    async def frames(self) -> AsyncIterator[npt.NDArray[np.float32]]:
        while (frame := await self.queue.get()) is not END:
            yield frame

    @property
    def lag_seconds(self) -> float:
        """Audio waiting to be processed."""
        return self.queue.qsize() * FRAME_MS / 1000

    def close(self) -> None:
        pass


class FileSource(Source):
    """A file, paced in real time (or as fast as possible with fast=True)."""

    def __init__(self, path: str, fast: bool) -> None:
        super().__init__()
        from daemon.audio.files import load_audio

        self.name = f"file {path}"
        self._samples = load_audio(path, SAMPLE_RATE)
        self.fast = fast  # the daemon then paces the file by the model instead of the clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        super().start()
        self._task = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        frames = Reframer(SAMPLE_RATE).push(self._samples)
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            if self.fast:
                if i % 64 == 0:
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.monotonic()))
            self.queue.put_nowait(f)
        self.queue.put_nowait(END)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class StdinSource(Source):
    """Raw signed 16-bit little-endian mono PCM on stdin at `rate` Hz."""

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.name = f"stdin s16le {rate} Hz"
        self._reframer = Reframer(rate)
        self._stop = threading.Event()

    def start(self) -> None:
        super().start()
        threading.Thread(target=self._read, name="stdin-reader", daemon=True).start()

    def _read(self) -> None:
        stream = sys.stdin.buffer
        carry = b""
        while not self._stop.is_set():
            data = stream.read1(8192) if hasattr(stream, "read1") else stream.read(8192)
            if not data:
                break
            data = carry + data
            carry = data[len(data) // 2 * 2 :]  # an odd trailing byte waits for its partner
            pcm = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
            self._put_threadsafe(self._reframer.push(pcm))
        self._put_threadsafe(self._reframer.push(np.zeros(0, np.float32), last=True))
        self._put_threadsafe(None)

    def close(self) -> None:
        self._stop.set()


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio missing
        raise CaptureError(f"the microphone needs PortAudio ({e}); on Debian: apt-get install libportaudio2") from e
    return sd


def resolve_device(device: str | None) -> tuple[int | None, dict[str, Any]]:
    """A device index or name substring → (index, info) of an input device; None → the default input."""
    sd = _sounddevice()
    devices = sd.query_devices()
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if not inputs:
        raise CaptureError("no audio input device found (check the microphone and its permission)")
    if device is None:
        try:
            info = sd.query_devices(kind="input")
        except sd.PortAudioError as e:
            raise CaptureError(f"no default input device: {e}; choose one with --device") from e
        return None, info
    if device.isdigit():
        for i, d in inputs:
            if i == int(device):
                return i, d
        raise CaptureError(f"no input device with index {device} (see: python -m daemon devices)")
    matches = [(i, d) for i, d in inputs if device.lower() in d["name"].lower()]
    if not matches:
        raise CaptureError(f"no input device matches {device!r} (see: python -m daemon devices)")
    return matches[0]


def list_devices() -> list[str]:
    """One line per input device: index, name, default rate; the default is marked with *."""
    sd = _sounddevice()
    try:
        default = sd.default.device[0]
    except (TypeError, IndexError):
        default = -1
    return [f"{'*' if i == default else ' '} {i:3d}  {d['name']}  ({d['max_input_channels']} ch, "
            f"{int(d['default_samplerate'])} Hz)" for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


class MicSource(Source):
    """The microphone at the device's own rate, resampled to 16 kHz in the PortAudio callback thread."""

    def __init__(self, device: str | None) -> None:
        super().__init__()
        self._index, info = resolve_device(device)
        self._rate = int(info["default_samplerate"])
        self.name = f"microphone {info['name']} ({self._rate} Hz)"
        self._reframer = Reframer(self._rate)
        self._stream: Any = None
        self.overflows = 0

    def start(self) -> None:
        super().start()
        sd = _sounddevice()

        def callback(indata: npt.NDArray[np.float32], n: int, t: Any, status: Any) -> None:
            if status.input_overflow:
                self.overflows += 1
            self._put_threadsafe(self._reframer.push(indata[:, 0].copy()))

        try:
            self._stream = sd.InputStream(device=self._index, channels=1, samplerate=self._rate, dtype="float32",
                                          blocksize=self._rate * FRAME_MS // 1000, callback=callback)
            self._stream.start()
        except sd.PortAudioError as e:
            raise CaptureError(f"cannot open {self.name}: {e}") from e

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class SilenceWatch:
    """Notices a microphone that delivers only exact digital silence (on macOS: no microphone permission)."""

    def __init__(self, seconds: float = SILENT_MIC_S, sample_rate: int = SAMPLE_RATE) -> None:
        self._limit = round(seconds * sample_rate)
        self._seconds = seconds
        self._zero_run = 0
        self._warned = False

    def check(self, frame: npt.NDArray[np.float32]) -> str | None:
        """The warning to give, once per run of silence that reaches the limit; else None."""
        if frame.any():
            self._zero_run, self._warned = 0, False
            return None
        self._zero_run += len(frame)
        if self._warned or self._zero_run < self._limit:
            return None
        self._warned = True
        return (f"the microphone has delivered only digital silence for {self._seconds:.0f} s: on macOS, allow "
                "microphone access for this terminal (System Settings → Privacy & Security → Microphone)")


def open_source(source: str, device: str | None, rate: int, fast: bool) -> Source:
    """mic | - (stdin) | a file path → a Source (not started)."""
    if source == "mic":
        return MicSource(device)
    if source == "-":
        return StdinSource(rate)
    return FileSource(source, fast)
