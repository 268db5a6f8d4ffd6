"""Audio from a capture thread to the event loop in blocks: decided where it arrives, handed over for speech.

A live source's producer thread (the PortAudio callback, the stdin reader) gets audio every few tens of ms.
Waking the event loop for each 30 ms frame costs more than everything else the daemon does while nobody speaks
(issue 17: 3 % of a core on silence, all of it per-frame wake-ups and per-frame Python). So the thread runs
the speech decision itself (daemon.audio.vad.SpeechDetector: the energy gate, then webrtcvad), one block at
a time, and a Gatherer decides when the loop needs the frames:

- a speech frame, or any frame within `hold_frames` after one: at once, with every frame gathered before it,
  in order (the segmenter's pre-roll and stream clock stay exact; a segment's end is seen on time);
- otherwise (silence, room noise): once `quiet_frames` have gathered, about twice a second.

Without a detector every push is handed over at once, undecided (the segmenter decides, as before).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.audio import FRAME_MS, FRAME_SAMPLES, exact_div
from daemon.audio.vad import SpeechDetector

QUIET_HANDOVER_MS = 480  # non-speech waits in the producer thread until this much has gathered
QUIET_FRAMES = exact_div(QUIET_HANDOVER_MS, FRAME_MS)  # 16


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive frames of one source, in stream order.

    samples: float32 (n_frames * FRAME_SAMPLES,) mono at 16 kHz.
    speech: bool (n_frames,), the detector's decision per frame; None when not decided yet.
    """

    samples: npt.NDArray[np.float32]
    speech: npt.NDArray[np.bool_] | None = None

    @property
    def n_frames(self) -> int:
        return exact_div(len(self.samples), FRAME_SAMPLES)

    def frames(self) -> list[npt.NDArray[np.float32]]:
        """The block as FRAME_SAMPLES frames (views)."""
        return list(self.samples.reshape(-1, FRAME_SAMPLES))


class Gatherer:
    """Producer side: decide frames as they come and say when the event loop needs them (module docstring).

    Args:
        detect: the stream's speech detector; None hands every push over at once, undecided.
        hold_frames: frames after a speech frame that still go over at once (the VAD's end_silence_frames:
            until then a segment may be open, and the frame that closes it must not wait).
        quiet_frames: otherwise, how many frames gather before they go over.
    """

    def __init__(self, detect: SpeechDetector | None, hold_frames: int, quiet_frames: int = QUIET_FRAMES) -> None:
        if hold_frames < 0 or quiet_frames < 1:
            raise ValueError(f"hold_frames must be ≥ 0 and quiet_frames ≥ 1, not {hold_frames}, {quiet_frames}")
        self._detect = detect
        self._hold = hold_frames
        self._quiet = quiet_frames
        self._frames: list[npt.NDArray[np.float32]] = []
        self._speech: list[npt.NDArray[np.bool_]] = []
        self._since_speech = hold_frames + 1  # frames since the last speech frame (0: it was speech)

    @property
    def quiet(self) -> bool:
        """The next frame is not urgent unless it is speech (always False without a detector)."""
        return self._detect is not None and self._since_speech >= self._hold

    @property
    def n_pending(self) -> int:
        return sum(len(f) for f in self._frames)

    def push(self, frames: list[npt.NDArray[np.float32]]) -> Block | None:
        """Take the next frames (each FRAME_SAMPLES float32); a Block when the loop needs them now."""
        if not frames:
            return None
        x = np.stack(frames)  # (n, FRAME_SAMPLES)
        self._frames.append(x)
        if self._detect is None:
            return self.flush()
        speech = self._detect(x)
        self._speech.append(speech)
        urgent = self._since_speech + 1 <= self._hold  # the first of these frames still follows speech closely
        hits = np.flatnonzero(speech)
        if len(hits):
            urgent = True
            self._since_speech = len(speech) - 1 - int(hits[-1])
        else:
            self._since_speech += len(speech)
        if urgent or self.n_pending >= self._quiet:
            return self.flush()
        return None

    def flush(self) -> Block | None:
        """Everything gathered, as one Block (None when nothing is)."""
        if not self._frames:
            return None
        samples = np.concatenate(self._frames).reshape(-1)
        speech = np.concatenate(self._speech) if self._detect is not None else None
        self._frames, self._speech = [], []
        return Block(samples, speech)
