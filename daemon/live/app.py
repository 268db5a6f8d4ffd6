"""`python -m daemon serve`: wires source → caption engine → websockets server and transcripts; shutdown order."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from daemon.live.capture import MicSource, open_source
from daemon.live.config import DaemonConfig
from daemon.live.messages import PROTOCOL, Command, Event, Hello, Pong, Settings, Status
from daemon.live.server import CaptionServer
from daemon.output.transcripts import TranscriptWriter

log = logging.getLogger("daemon")


class Daemon:
    """One running daemon: its source, model, engine and server."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.engine: Any = None
        self.started = time.monotonic()
        from daemon.model.bundle import load_bundle

        self.bundle = load_bundle(config.model)  # fail fast, before listening, on a bad bundle
        self.source = open_source(config.source, config.device, config.rate, config.fast)
        self.server = CaptionServer(config.host, config.port, self._hello, self._command, self._health)
        self.writer = TranscriptWriter(config.transcripts) if config.transcripts else None
        if self.writer is not None:
            self.server.listeners.append(self.writer)
        self.model_name = config.model
        self.backend_name = config.backend or "auto"
        self._stop = asyncio.Event()

    def _settings(self) -> Settings:
        if self.engine is not None:
            return self.engine.settings
        return Settings(self.config.language, self.config.punctuation, paused=False)

    def _hello(self) -> Hello:
        return Hello(PROTOCOL, self.model_name, self.backend_name, self._settings(), [])

    def _health(self) -> dict[str, Any]:
        e = self.engine
        return {"status": "ok" if e is not None else "loading", "model": self.model_name,
                "backend": self.backend_name, "uptime_s": round(time.monotonic() - self.started, 3),
                "queue_depth": e.queue_depth if e is not None else 0,
                "audio_lag_s": round(self.source.lag_seconds, 3), "clients": self.server.n_clients,
                "source": self.source.name, "settings": self._settings().__dict__,
                "final_latency_ms": _summary(e.final_latencies) if e is not None else None}

    def _command(self, cmd: Command) -> Event | None:
        if cmd.type == "ping":
            return Pong(cmd.id)
        from daemon.errors import DaemonError

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

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        self.source.start()  # audio is buffered from here on, while the model loads
        await self.server.start()
        log.info("listening on ws://%s:%d (GET /health) — source: %s", self.config.host, self.server.port,
                 self.source.name)
        await self._load_model()
        worker = asyncio.create_task(self.engine.run_worker())
        ticker = asyncio.create_task(self._tick())
        feeder = asyncio.create_task(self._feed())
        await self._stop.wait()
        log.info("shutting down: finishing the open segment")
        feeder.cancel()
        self.engine.finalize()
        await self.engine.drain()
        for t in (worker, ticker):
            t.cancel()
        await self.server.close()
        self.source.close()
        self.engine.close()
        if self.writer is not None:
            self.writer.close()

    async def _load_model(self) -> None:
        from daemon.live.engine import CaptionEngine
        from daemon.model.transcriber import load_transcriber

        c = self.config
        t0 = time.monotonic()
        tr = await asyncio.to_thread(load_transcriber, self.bundle, c.backend, c.dither)
        await asyncio.to_thread(tr.warm_up)
        self.backend_name = tr.backend.name
        self.model_name = str(tr.bundle.manifest.get("source", {}).get("checkpoint", c.model))
        self.engine = CaptionEngine(c, tr, self.emit)
        self.engine.configure(c.language, c.punctuation, announce=False)  # validates the language
        msg = f"model {c.model} loaded and warmed up in {time.monotonic() - t0:.1f} s ({self.backend_name})"
        log.info(msg)
        self.emit(Status("info", "model_loaded", msg, self.engine.settings))

    async def _feed(self) -> None:
        check = isinstance(self.source, MicSource)
        paced_by_model = getattr(self.source, "fast", False)
        async for frame in self.source.frames():
            self.engine.push(frame, check_silent_mic=check)
            if paced_by_model:  # --fast: as fast as the model keeps up, not faster (else every segment's
                while self.engine.queue_depth > 1:  # events burst out at once and memory holds the backlog)
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)  # let the server send what this frame produced
        self.engine.finalize()
        await self.engine.drain()  # the source's last final goes out before the news that it ended
        self.emit(Status("info", "source_ended", f"{self.source.name} ended; still serving clients"))
        log.info("source ended; still serving (Ctrl-C to stop)")

    async def _tick(self) -> None:
        interval = self.config.partial_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.engine.tick()


def _summary(seconds: Any) -> dict[str, float | int | None]:
    """Median and p95 in ms of the recent VAD-close → final latencies."""
    xs = sorted(seconds)
    if not xs:
        return {"median": None, "p95": None, "n": 0}
    return {"median": round(1000 * xs[len(xs) // 2], 1), "p95": round(1000 * xs[int(0.95 * (len(xs) - 1))], 1),
            "n": len(xs)}


def run_daemon(config: DaemonConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        await Daemon(config).run()

    asyncio.run(main())
    return 0
