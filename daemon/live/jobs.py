"""The caption engine's job queue: two lanes for one worker, and events instead of polling.

Finals wait in order and are never dropped; they are served first. Partials have one slot: a newer request
replaces a pending older one (partials coalesce when the worker falls behind), and a pending partial is dropped
when its segment closes (the final replaces it). Waiters (the worker, `drain`, the --fast feeder) wake on every
change of the queue, never on a timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from daemon.model.decode import DecodeOptions


@dataclass(frozen=True)
class Job:
    """Decode `audio` of `segment`, which begins at sample `start` of the stream."""

    kind: Literal["partial", "final"]
    segment: int
    start: int
    audio: npt.NDArray[np.float32]
    options: DecodeOptions

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


class JobQueue:
    """Finals in order plus at most one pending partial; `busy` while the worker holds a job."""

    def __init__(self) -> None:
        self._finals: deque[Job] = deque()
        self._partial: Job | None = None
        self.busy = False
        self._changed = asyncio.Event()
        self.partials_requested = 0
        self.partials_replaced = 0  # overwritten by a newer request before the worker took them
        self.partials_dropped = 0  # their segment closed before the worker took them

    @property
    def depth(self) -> int:
        """Jobs waiting (the one being decoded not counted)."""
        return len(self._finals) + (self._partial is not None)

    @property
    def partial_pending(self) -> bool:
        return self._partial is not None

    @property
    def finals_waiting(self) -> int:
        """Finals queued (the one being decoded not counted)."""
        return len(self._finals)

    def put_final(self, job: Job) -> None:
        self._finals.append(job)
        self._notify()

    def offer_partial(self, job: Job) -> None:
        """Queue a partial, replacing any pending one."""
        self.partials_requested += 1
        if self._partial is not None:
            self.partials_replaced += 1
        self._partial = job
        self._notify()

    def drop_partial(self, segment: int) -> None:
        """Forget a pending partial of `segment` (it closed: its final replaces the partial)."""
        if self._partial is not None and self._partial.segment == segment:
            self._partial = None
            self.partials_dropped += 1
            self._notify()

    async def get(self) -> Job:
        """The next job (finals first); the queue is busy until `done()`."""
        await self.wait_until(lambda: bool(self._finals) or self._partial is not None)
        if self._finals:
            job = self._finals.popleft()
        else:
            assert self._partial is not None
            job, self._partial = self._partial, None
        self.busy = True
        self._notify()
        return job

    def poke(self) -> None:
        """Wake the waiters: something their conditions read outside the queue changed."""
        self._notify()

    def done(self) -> None:
        """The job from `get()` is decoded and delivered."""
        self.busy = False
        self._notify()

    async def join(self) -> None:
        """Wait until every final queued so far is delivered and the worker is idle."""
        await self.wait_until(lambda: not self._finals and not self.busy)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until condition() holds; it is re-checked after every change of the queue."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
