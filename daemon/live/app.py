"""`cohere-transcribe serve`: wires source → caption engine → websockets server and transcripts.

Startup checks every option against the bundle before anything listens or loads; the audio source starts
before the slow part of loading (backend, checksums), so its audio is kept and captioned once the model is
ready. The daemon's tasks (model loading, feeder, ticker, worker) run in one anyio task group: a task that dies
takes the daemon down with a logged traceback and exit code 1, so a service manager restarts it, instead of a
daemon that hangs while /health says ok. Failures of delivery (a listener, an emit) are isolated instead:
logged, announced as a `status` warning, listed in /health ("degraded"), and captions go on.

Shutdown (SIGINT, SIGTERM): stop feeding, finalize the open segment, deliver its final, close every client
with 1001, exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from daemon.audio import SAMPLE_RATE
from daemon.errors import BundleError, ConfigError, DaemonError
from daemon.live.access import AccessPolicy, parse_origins
from daemon.live.capture import MicSource, SilenceWatch, open_source
from daemon.live.config import DaemonConfig
from daemon.live.engine import CaptionEngine
from daemon.live.messages import PROTOCOL, Command, Event, Hello, Pong, Settings, Status
from daemon.live.server import CaptionServer
from daemon.model.bundle import Bundle
from daemon.model.decode import resolve_max_new_tokens
from daemon.model.fluidaudio import load_model
from daemon.model.transcriber import Transcriber, load_transcriber
from daemon.output.transcripts import TranscriptWriter

log = logging.getLogger("daemon")

DRAIN_WARN_S = 30.0  # the source ended and finals still wait this long: say so (and keep waiting)
SHUTDOWN_DRAIN_S = 30.0  # at shutdown, the most time given to the finals still queued
STALL_WARN_S = 5.0  # a live source that delivers nothing this long: warn, finalize the open segment
STALL_POLL_S = 0.5


def check_startup(config: DaemonConfig, bundle: Bundle) -> None:
    """Reject options the bundle cannot serve, before anything listens or loads.

    Raises:
        ConfigError: --max-new-tokens outside the decoder cache, VAD values out of range.
        BundleError: a bundle whose sample rate is not the live stream's.
    """
    if bundle.features.sample_rate != SAMPLE_RATE:
        raise BundleError(f"the model {config.model} expects {bundle.features.sample_rate} Hz audio; "
                          f"the live daemon captures at {SAMPLE_RATE} Hz")
    resolve_max_new_tokens(bundle, len(bundle.prompt_template), config.max_new_tokens)
    try:
        config.vad_options(bundle)
    except ValueError as e:
        raise ConfigError(str(e)) from e


class Daemon:
    """One running daemon: its source, model, engine and server."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.bundle = load_model(config.model)  # parse and presence checks: fast; checksums come later
        check_startup(config, self.bundle)
        # live sources decide speech in their capture thread, with the same options as the segmenter
        self.source = open_source(config.source, config.device, config.rate, config.fast,
                                  vad=config.vad_options(self.bundle))
        self.source.on_status = lambda level, code, message: self.emit(Status(level, code, message))
        policy = AccessPolicy(config.host, config.token, parse_origins(config.allowed_origins))
        self.server = CaptionServer(config.host, config.port, self._hello, self._command, self._health, policy)
        self.writer = TranscriptWriter(config.transcripts) if config.transcripts else None
        if self.writer is not None:
            self.server.listeners.append(self.writer)
        self.model_name = str(self.bundle.manifest.get("source", {}).get("checkpoint", config.model))
        self.engine: CaptionEngine | None = None
        self.listening = asyncio.Event()  # set once the server accepts clients (and /health)
        self._stop = asyncio.Event()
        self._feed_scope: anyio.CancelScope | None = None  # made in run(): anyio needs the running loop

    # -- what clients see -------------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        if self.engine is not None:
            return self.engine.transcriber.backend.name
        return self.config.backend or "auto"

    def _settings(self) -> Settings:
        if self.engine is not None:
            return self.engine.settings
        return Settings(self.config.language, self.config.punctuation, paused=False)

    def _hello(self, finals: list[dict[str, Any]]) -> Hello:
        return Hello(PROTOCOL, self.model_name, self.backend_name, self._settings(), finals)

    def warnings(self) -> list[str]:
        engine = [*self.engine.warnings, *self.engine.problems.values()] if self.engine is not None else []
        return self.server.warnings + engine + list(self.source.problems.values())

    def _health(self) -> dict[str, Any]:
        e, warnings = self.engine, self.warnings()
        status = "loading" if e is None else "degraded" if warnings else "ok"
        return {"status": status, "warnings": warnings, "model": self.model_name, "backend": self.backend_name,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "queue_depth": e.queue_depth if e is not None else 0,
                "audio_lag_s": round(self.source.lag_seconds, 3),
                "decode_lag_s": round(e.lag_seconds, 3) if e is not None else 0.0,
                "last_decode_ms": round(1000 * e.last_decode_s, 1) if e is not None else None,
                "clients": self.server.n_clients,
                "source_stalled_s": round(self.source.stalled_seconds, 3),
                "source": self.source.name, "settings": self._settings().__dict__,
                "final_latency_ms": _summary(e.final_latencies) if e is not None else None}

    def _command(self, cmd: Command) -> Event | None:
        if cmd.type == "ping":
            return Pong(cmd.id)
        if self.engine is None:
            raise DaemonError("the model is still loading; try again in a moment")
        if cmd.type == "configure":
            self.engine.configure(cmd.language, cmd.punctuation)
        elif cmd.type == "finalize":
            self.engine.finalize()
        elif cmd.type == "pause":
            self.engine.pause()
        elif cmd.type == "resume":
            self.engine.resume()
        return None

    def emit(self, event: Event) -> None:
        self.server.broadcast(event)

    # -- running ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the shutdown (what SIGINT and SIGTERM do)."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until stop(); a task that fails ends the run with its exception (in an ExceptionGroup)."""
        restore_signals = install_stop_handlers(self.stop)
        self._feed_scope = anyio.CancelScope()
        try:
            self.source.start()  # from here on audio is kept while the model loads
            await self.server.start()  # ConfigError when the port is taken
            log.info("listening on ws://%s:%d (GET /health) — source: %s", self.config.host, self.server.port,
                     self.source.name)
            self.listening.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._load_and_serve, tg)
                await self._stop.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            restore_signals()
            await self.server.close()
            self.source.close()
            if self.writer is not None:
                self.writer.close()

    async def _load_and_serve(self, tg: TaskGroup) -> None:
        engine = self.engine = await self._load_model()
        tg.start_soon(engine.run_worker)
        tg.start_soon(self._tick, engine)
        tg.start_soon(self._feed, engine)
        tg.start_soon(self._watch_source, engine)

    async def _load_model(self) -> CaptionEngine:
        c = self.config
        t0 = time.monotonic()
        tr = await anyio.to_thread.run_sync(self._load_transcriber)
        engine = CaptionEngine(c, tr, self.emit)
        engine.configure(c.language, c.punctuation, announce=False)  # validates the language
        msg = f"model {c.model} loaded and warmed up in {time.monotonic() - t0:.1f} s ({tr.backend.name})"
        log.info(msg)
        self.emit(Status("info", "model_loaded", msg, engine.settings))
        return engine

    def _load_transcriber(self) -> Transcriber:
        """The slow part of loading (in a thread): the backend, the checksums it needs, warm-up."""
        c = self.config
        tr = load_transcriber(self.bundle, c.backend, c.dither, verify=c.verify, compute_units=c.compute_units)
        tr.warm_up()
        return tr

    async def _feed(self, engine: CaptionEngine) -> None:
        watch = SilenceWatch() if isinstance(self.source, MicSource) else None
        paced_by_model = getattr(self.source, "fast", False)
        assert self._feed_scope is not None
        with self._feed_scope:
            async for block in self.source.blocks():
                if self._stop.is_set():  # shutting down: the open segment was finalized, no audio after it
                    return
                engine.push_block(block.samples, block.speech)
                if watch is not None:
                    watch.observe(self.source, block.samples)
                if paced_by_model:  # --fast: as fast as the model keeps up, not faster (else every segment's
                    await engine.jobs.wait_until(lambda: engine.queue_depth <= 1)  # events burst out at once)
                    await asyncio.sleep(0)  # let the server send what this frame produced
            engine.finalize()
            await self._drain_all(engine)  # the source's last final goes out before the news that it ended
            self.emit(Status("info", "source_ended", f"{self.source.name} ended; still serving clients"))
            log.info("source ended; still serving (Ctrl-C to stop)")

    async def _watch_source(self, engine: CaptionEngine) -> None:
        """A live source that stalls (stdin with nothing to send, a lost device): warn once, finalize the open
        segment from what was captured (instead of holding it open for the whole stall), say when audio flows."""
        src, interrupted = self.source, False
        while True:
            await anyio.sleep(STALL_POLL_S)
            if src.interrupted != interrupted:  # a lost device (the source warns itself): finalize at once
                interrupted = src.interrupted
                if interrupted:
                    engine.finalize()
                continue
            stalled = src.stalled_seconds
            if stalled >= STALL_WARN_S and not interrupted and "source_stalled" not in src.problems:
                src.warn("source_stalled", f"{src.name} has delivered no audio for {stalled:.0f} s; the open "
                                           "segment is finalized", lasting=True)
                engine.finalize()
            elif stalled == 0 and "source_stalled" in src.problems:
                src.recover("source_resumed", "source_stalled", f"{src.name} delivers audio again")

    async def _drain_all(self, engine: CaptionEngine) -> None:
        """Wait for every queued final, however long it takes; say so every DRAIN_WARN_S."""
        waited = 0.0
        while True:
            with anyio.move_on_after(DRAIN_WARN_S):
                await engine.drain()
                return
            waited += DRAIN_WARN_S
            log.warning("the source ended %.0f s ago and %d decodes still wait (the model is slower than the "
                        "audio); still decoding", waited, engine.queue_depth + engine.jobs.busy)

    async def _tick(self, engine: CaptionEngine) -> None:
        interval = self.config.partial_interval_ms / 1000
        while True:
            await anyio.sleep(interval)
            engine.tick()

    async def _shutdown(self) -> None:
        log.info("shutting down: finishing the open segment")
        if self._feed_scope is not None:
            self._feed_scope.cancel()
        engine = self.engine
        if engine is not None:
            engine.finalize()
            with anyio.move_on_after(SHUTDOWN_DRAIN_S) as scope:
                await engine.drain()
            if scope.cancelled_caught:
                log.warning("gave up after %.0f s on %d decodes still queued at shutdown", SHUTDOWN_DRAIN_S,
                            engine.queue_depth + engine.jobs.busy)
        await self.server.close()  # the last finals reach the clients, then 1001


def install_stop_handlers(stop: Callable[[], None]) -> Callable[[], None]:
    """Make SIGINT and SIGTERM call stop() on the running loop; returns a function that undoes it.

    loop.add_signal_handler does not exist on Windows (NotImplementedError): there a plain signal.signal
    handler hands the call to the loop with call_soon_threadsafe. Off the main thread nothing is installed.
    """
    loop = asyncio.get_running_loop()
    undo: list[Callable[[], object]] = []

    def threadsafe(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
            undo.append(functools.partial(loop.remove_signal_handler, sig))
        except NotImplementedError:  # Windows
            previous = signal.signal(sig, threadsafe)
            undo.append(functools.partial(signal.signal, sig, previous))
        except (RuntimeError, ValueError):  # not the main thread: only the main thread can handle signals
            log.debug("signal %s is left to the main thread", sig.name)

    def restore() -> None:
        for u in undo:
            u()

    return restore


def _summary(seconds: Any) -> dict[str, float | int | None]:
    """Median and p95 in ms of the recent VAD-close → final latencies; p95 interpolates linearly between
    samples (statistics.quantiles, method "inclusive", numpy's default), so median ≤ p95 ≤ max always."""
    xs = [1000 * x for x in seconds]
    if not xs:
        return {"median": None, "p95": None, "n": 0}
    p95 = statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else xs[0]
    return {"median": round(statistics.median(xs), 1), "p95": round(p95, 1), "n": len(xs)}


def run_daemon(config: DaemonConfig) -> int:
    """Run the daemon until SIGINT/SIGTERM: 0 after a clean shutdown, 1 when one of its tasks failed.

    Raises:
        DaemonError: a startup mistake (bad option, bundle, port in use, no device): one line for the CLI.
    """
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        await Daemon(config).run()

    try:
        asyncio.run(main())
    except DaemonError:
        raise
    except BaseExceptionGroup as group:
        errors = _leaves(group)
        if errors and all(isinstance(e, DaemonError) for e in errors):
            raise errors[0] from None  # e.g. a backend that cannot run here: one line, not a crash
        log.critical("a daemon task failed; stopping", exc_info=group)
        return 1
    except Exception:
        log.critical("the daemon failed; stopping", exc_info=True)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out
