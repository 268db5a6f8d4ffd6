"""Audio sources at the edge: microphone (sounddevice), file (real-time paced or fast), stdin (raw s16le PCM).

Each source puts Blocks (daemon.live.blocks: float32 frames of FRAME_SAMPLES at 16 kHz, in stream order) into an
asyncio queue. Producer threads (the PortAudio callback, the stdin reader) decide speech where the audio arrives
(given the VAD options) and hand blocks to the event loop with call_soon_threadsafe, which never blocks them:
at once for speech, about twice a second for silence and noise, so a quiet room does not wake the loop for every
30 ms frame. The queue is unbounded so audio that arrives while the model loads is kept, not lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from daemon.audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from daemon.audio.files import iter_audio, nonfinite, open_audio
from daemon.audio.vad import SpeechDetector, VadOptions
from daemon.errors import AudioError, CaptureError
from daemon.live.blocks import Block, Gatherer

log = logging.getLogger(__name__)

__all__ = ["FRAME_MS", "FRAME_SAMPLES", "SAMPLE_RATE", "FileSource", "MicSource", "SilenceWatch", "Source",
           "StdinSource", "list_devices", "open_source"]

END = None  # queue marker: the source has no more audio
SILENT_MIC_S = 5.0  # this much exact digital silence from a microphone means macOS withheld permission
FAST_AHEAD_FRAMES = 100  # --fast file source: frames decoded ahead of the consumer (3 s)
READ_POLL_S = 0.25  # the stdin reader looks for close() this often
READ_BYTES = 65536  # the stdin reader takes up to this much at once
QUIET_READ_S = 0.2  # while nobody speaks the stdin reader waits this long between reads (at most half a pipe)
STALL_GRACE_S = 1.0  # a live source silent for longer than this counts as stalled (lag in /health)
LOST_AFTER_S = 0.75  # a microphone stream that delivered and then has no callback this long (3 blocks) has lost its device
START_GRACE_S = 3.0  # a stream just opened may be this slow to deliver (ALSA→PulseAudio: 0.03–1.3 s measured)
WATCH_S = 0.25  # the microphone's supervisor looks this often (a lost device is noticed within 1 s)
MIC_BLOCK_FRAMES = 8  # PortAudio calls back with 240 ms blocks: idle 0.9 % of a core instead of 1.2 % with 90 ms ones
RETRY_S, RETRY_MAX_S = 0.1, 0.5  # reopening a lost device: first delay, doubling up to the most


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


def gatherer(vad: VadOptions | None) -> Gatherer:
    """The producer thread's Gatherer: deciding speech with `vad` (None: undecided, every chunk at once)."""
    if vad is None:
        return Gatherer(None, 0)
    if (vad.sample_rate, vad.frame_samples) != (SAMPLE_RATE, FRAME_SAMPLES):
        raise ValueError(f"a live source decides {FRAME_MS} ms frames at {SAMPLE_RATE} Hz, not "
                         f"{vad.frame_ms} ms at {vad.sample_rate} Hz")
    return Gatherer(SpeechDetector(vad), vad.end_silence_frames)


class Source:
    """Base: an asyncio queue of Blocks, filled by `start()`, drained by `blocks()` (or frame by frame by
    `frames()`).

    A source reports trouble it survives (a stalled stdin, a lost device, damaged samples) through `warn` and
    `recover`: the daemon sets `on_status` to turn them into `status` events, and `problems` lists what is wrong
    now (for /health).
    """

    name = "source"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Block | None] = asyncio.Queue()
        self._queued_frames = 0  # frames in `queue` (counted in the event loop's thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_status: Callable[[str, str, str], None] | None = None  # (level, code, message)
        self.problems: dict[str, str] = {}  # code → message, while it lasts
        self.interrupted = False  # the audio flow is broken (a lost device): the open segment is to be finalized

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def warn(self, code: str, message: str, lasting: bool = False) -> None:
        """Report a problem (logged, a `status` warning); a lasting one stays in `problems` until `recover`."""
        if lasting:
            self.problems[code] = message
        log.warning(message)
        if self.on_status is not None:
            self.on_status("warning", code, message)

    def recover(self, code: str, resolved: str, message: str) -> None:
        """A lasting problem `resolved` is over: say so with an info `status` of code `code`."""
        if self.problems.pop(resolved, None) is None:
            return
        log.info(message)
        if self.on_status is not None:
            self.on_status("info", code, message)

    def _hand_over(self, block: Block | None) -> None:
        """From a producer thread: queue a block (None: nothing to hand over yet) without blocking."""
        if block is not None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._enqueue, block)

    def _end_threadsafe(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.queue.put_nowait, END)

    def _enqueue(self, block: Block) -> None:  # in the event loop
        self._queued_frames += block.n_frames
        self.queue.put_nowait(block)

    async def blocks(self) -> AsyncIterator[Block]:
        """The source's audio, block by block, until it ends."""
        while (block := await self.queue.get()) is not END:
            self._queued_frames -= block.n_frames
            yield block

    async def frames(self) -> AsyncIterator[npt.NDArray[np.float32]]:
        """The source's audio, FRAME_SAMPLES at a time, until it ends."""
        async for block in self.blocks():
            for frame in block.frames():
                yield frame

    @property
    def stalled_seconds(self) -> float:
        """How long a live source has delivered nothing although it should have (0 for files)."""
        return 0.0

    @property
    def lag_seconds(self) -> float:
        """Audio waiting to be processed, plus the time a live source has been stalled."""
        return self._queued_frames * FRAME_MS / 1000 + self.stalled_seconds

    def close(self) -> None:
        pass


class FileSource(Source):
    """A file, streamed block by block: paced in real time, or with fast=True as fast as it is consumed.

    Non-finite samples (NaN, ±Inf) become silence with one warning: the daemon keeps serving.
    """

    def __init__(self, path: str, fast: bool) -> None:
        super().__init__()
        self.name = f"file {path}"
        self._info = open_audio(path)  # AudioError now, before anything listens
        self.fast = fast  # the daemon then paces the file by the model instead of the clock
        if fast:  # backpressure: never more than FAST_AHEAD_FRAMES decoded ahead of the consumer
            self.queue = asyncio.Queue(maxsize=FAST_AHEAD_FRAMES)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        super().start()
        self._task = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        blocks, reframer = iter_audio(self._info, SAMPLE_RATE), Reframer(SAMPLE_RATE)
        t0, i = time.monotonic(), 0
        try:
            while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                for f in reframer.push(self._clean(block)):
                    if not self.fast:
                        await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.monotonic()))
                    self._queued_frames += 1
                    await self.queue.put(Block(f))  # one frame, undecided: the segmenter decides
                    i += 1
        except AudioError as e:  # damaged part way: what came before is served, the rest is lost
            self.warn("source_damaged", f"{e}; the rest of the file is skipped")
        await self.queue.put(END)

    def _clean(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if (bad := nonfinite(block)) == 0:
            return block
        if "bad_samples" not in self.problems:
            self.warn("bad_samples", f"{self.name}: {bad} NaN or infinite samples replaced by silence "
                                     "(a damaged float file)", lasting=True)
        return np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class StdinSource(Source):
    """Raw signed 16-bit little-endian mono PCM on stdin at `rate` Hz; with `vad`, speech is decided in the reader
    thread, which then reads every QUIET_READ_S while nobody speaks instead of at every write.

    The reader thread reads the file descriptor with os.read, never through sys.stdin's buffered object: a
    thread blocked inside the buffered reader holds its lock, and interpreter shutdown then aborts with
    "Fatal Python error: _enter_buffered_busy" (exit 134) when the daemon stops while stdin is still open.
    Where select() works on the descriptor (POSIX), the thread wakes every READ_POLL_S to see `close()`.
    """

    def __init__(self, rate: int, fd: int | None = None, vad: VadOptions | None = None) -> None:
        super().__init__()
        self.name = f"stdin s16le {rate} Hz"
        self._rate = rate
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._reframer = Reframer(rate)
        self._gather = gatherer(vad)
        self._quiet_read_s = min(QUIET_READ_S, READ_BYTES / 2 / (2 * rate))  # a pipe holds 64 KiB: stay under half
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_data = time.monotonic()
        self.ended = False

    def start(self) -> None:
        super().start()
        self._last_data = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="stdin-reader", daemon=True)
        self._thread.start()

    def _wait_readable(self) -> bool:
        """True when the descriptor has data or EOF; False when close() was called first."""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], READ_POLL_S)
            except (OSError, ValueError):  # Windows pipes, a closed descriptor: fall back to a blocking read
                return True
            if ready:
                return True
        return False

    def _read(self) -> None:
        carry = b""
        while self._wait_readable():
            try:
                data = os.read(self._fd, READ_BYTES)
            except OSError as e:
                self._call_soon(self.warn, "source_failed", f"reading stdin failed: {e}")
                break
            if not data:
                break
            self._last_data = time.monotonic()
            data = carry + data
            carry = data[len(data) // 2 * 2 :]  # an odd trailing byte waits for its partner
            pcm = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
            self._hand_over(self._gather.push(self._reframer.push(pcm)))
            if self._gather.quiet:  # nobody speaks: let a few writes gather instead of waking for each
                self._stop.wait(self._quiet_read_s)
        if carry and not self._stop.is_set():
            self._call_soon(self.warn, "odd_byte", "stdin ended with an odd number of bytes (s16le PCM comes in "
                                                   "2-byte samples): the last byte was dropped")
        self.ended = True
        self._hand_over(self._gather.push(self._reframer.push(np.zeros(0, np.float32), last=True)))
        self._hand_over(self._gather.flush())
        self._end_threadsafe()

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    @property
    def stalled_seconds(self) -> float:
        idle = time.monotonic() - self._last_data
        return idle if idle >= STALL_GRACE_S and not self.ended else 0.0

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * READ_POLL_S)


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


class PortAudio:
    """The seam between MicSource and sounddevice: find a device, open a stream. Tests pass a fake."""

    def rescan(self) -> None:
        """Make PortAudio enumerate the devices again (it lists them once, when initialized); no stream is open."""
        sd = _sounddevice()
        sd._terminate()
        sd._initialize()

    def resolve(self, device: str | None) -> tuple[int | None, dict[str, Any]]:
        return resolve_device(device)

    def open(self, index: int | None, rate: int, callback: Callable[[npt.NDArray[np.float32]], None],
             finished: Callable[[], None]) -> Any:
        """A started mono float32 input stream; `callback` gets each block, `finished` runs if it stops."""
        sd = _sounddevice()

        def on_block(indata: npt.NDArray[np.float32], n: int, t: Any, status: Any) -> None:
            callback(indata[:, 0].copy())

        try:
            stream = sd.InputStream(device=index, channels=1, samplerate=rate, dtype="float32",
                                    blocksize=rate * FRAME_MS * MIC_BLOCK_FRAMES // 1000, callback=on_block,
                                    finished_callback=finished)
            stream.start()
        except sd.PortAudioError as e:
            raise CaptureError(str(e)) from e
        return stream


class MicSource(Source):
    """The microphone at the device's own rate, resampled to 16 kHz in the PortAudio callback thread.

    A device that vanishes (unplugged, its PulseAudio source unloaded) stops calling back, or PortAudio
    finishes the stream: after LOST_AFTER_S without audio the device counts as lost (`interrupted`; the daemon
    finalizes the open segment from what was captured), a `device_lost` warning goes out, and the stream is
    reopened with backoff (RETRY_S, at most RETRY_MAX_S apart). `device_restored` goes out with the first block
    of the reopened stream, when capture has really resumed; a stream just opened has START_GRACE_S to deliver
    it (PulseAudio through ALSA starts a capture stream up to 1.3 s late), else it is reopened again. Without --device the reopen takes whatever the default input is then, so a change of the
    default device is followed once the old one is gone (PortAudio can only list devices anew with every stream
    closed, so a working device is never dropped for a new default).
    """

    def __init__(self, device: str | None, portaudio: PortAudio | None = None, vad: VadOptions | None = None) -> None:
        super().__init__()
        self._device = device
        self._gather = gatherer(vad)  # in the PortAudio callback thread (one stream at a time)
        self._pa = portaudio or PortAudio()
        self._index, info = self._pa.resolve(device)
        self._set_device(info)
        self._stream: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last_block = self._opened = time.monotonic()
        self._delivering = False  # the open stream has called back at least once
        self._finished = threading.Event()
        self.overflows = 0

    def _set_device(self, info: dict[str, Any]) -> None:
        self._rate = int(info["default_samplerate"])
        self.name = f"microphone {info['name']} ({self._rate} Hz)"
        self._reframer = Reframer(self._rate)

    def start(self) -> None:
        super().start()
        try:
            self._open()
        except CaptureError as e:
            raise CaptureError(f"cannot open {self.name}: {e}") from e
        self._task = asyncio.create_task(self._supervise())

    def _open(self) -> None:
        self._finished.clear()
        self._delivering = False
        self._last_block = self._opened = time.monotonic()
        self._stream = self._pa.open(self._index, self._rate, self._on_block, self._finished.set)

    def _on_block(self, block: npt.NDArray[np.float32]) -> None:  # the PortAudio thread
        self._last_block = time.monotonic()
        self._delivering = True
        self._hand_over(self._gather.push(self._reframer.push(block)))

    def _lost(self) -> bool:
        if self._delivering:
            return self._finished.is_set() or time.monotonic() - self._last_block > LOST_AFTER_S
        return self._finished.is_set() or time.monotonic() - self._opened > START_GRACE_S

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            if self._stream is None:
                continue
            if self.interrupted and self._delivering:  # the reopened stream delivers: capture has resumed
                self.interrupted = False
                self.recover("device_restored", "device_lost", f"capturing again from {self.name}")
            if self._lost():
                await self._reconnect()

    async def _reconnect(self) -> None:
        if not self.interrupted:  # a reopened stream that never delivered is not a new loss
            self.interrupted = True
            self.warn("device_lost", f"{self.name} stopped delivering audio (unplugged?); reopening", lasting=True)
        await asyncio.to_thread(self._close_stream)
        delay = RETRY_S
        while True:
            try:
                await asyncio.to_thread(self._reopen)
                break
            except CaptureError as e:
                log.debug("reopening the microphone failed: %s; next try in %.1f s", e, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    def _reopen(self) -> None:
        self._pa.rescan()
        self._index, info = self._pa.resolve(self._device)
        self._set_device(info)
        self._open()

    @property
    def stalled_seconds(self) -> float:
        idle = time.monotonic() - self._last_block
        return idle if idle >= STALL_GRACE_S else 0.0

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as e:  # a stream on a vanished device may fail to stop: it is gone anyway
                log.debug("closing the lost stream: %s", e)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._close_stream()


class SilenceWatch:
    """Notices a microphone that delivers only exact digital silence (on macOS: no microphone permission)."""

    def __init__(self, seconds: float = SILENT_MIC_S, sample_rate: int = SAMPLE_RATE) -> None:
        self._limit = round(seconds * sample_rate)
        self._seconds = seconds
        self._zero_run = 0
        self._warned = False

    def check(self, samples: npt.NDArray[np.float32]) -> str | None:
        """The next samples (a frame or a block) → the warning to give, once per run of silence that reaches
        the limit; else None."""
        if samples.any():
            self._zero_run, self._warned = len(samples) - 1 - int(np.flatnonzero(samples)[-1]), False
            return None
        self._zero_run += len(samples)
        if self._warned or self._zero_run < self._limit:
            return None
        self._warned = True
        return (f"the microphone has delivered only digital silence for {self._seconds:.0f} s: on macOS, allow "
                "microphone access for the program that started the daemon: the terminal, or under `agent` the "
                "Python interpreter (System Settings → Privacy & Security → Microphone; docs/macos.md)")


    def observe(self, source: Source, samples: npt.NDArray[np.float32]) -> None:
        """Check the next samples and report through `source`: `silent_microphone` is a lasting problem (a
        `status` warning, and in /health's warnings, so `agent status` shows it) until sound returns."""
        if (warning := self.check(samples)) is not None:
            source.warn("silent_microphone", warning, lasting=True)
        elif "silent_microphone" in source.problems and samples.any():
            source.recover("microphone_sound", "silent_microphone", "the microphone delivers sound again")


def open_source(source: str, device: str | None, rate: int, fast: bool, vad: VadOptions | None = None) -> Source:
    """mic | - (stdin) | a file path → a Source (not started); live sources decide speech with `vad`."""
    if source == "mic":
        return MicSource(device, vad=vad)
    if source == "-":
        return StdinSource(rate, vad=vad)
    return FileSource(source, fast)
