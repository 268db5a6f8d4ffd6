"""Bad input everywhere: damaged audio files, absurd rates, NaN samples, odd options and malformed transcripts
give one clear line and exit 2 from a command; the running daemon warns and keeps serving (issue 16)."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.audio.files import load_audio, open_audio
from daemon.cli import main
from daemon.errors import AudioError, ConfigError
from daemon.live.capture import FRAME_SAMPLES, FileSource
from daemon.live.config import DaemonConfig
from daemon.output.formats import render
from daemon.output.transcripts import read_finals
from devtools.daemon_process import DEMO, ROOT

SR = 16000


def noise_wav(path: Path, seconds: float = 1.0, subtype: str = "FLOAT", rate: int = SR) -> Path:
    x = np.random.default_rng(0).normal(0, 0.1, round(seconds * rate)).astype(np.float32)
    sf.write(path, x, rate, subtype=subtype)
    return path


def with_header_rate(src: Path, dst: Path, rate: int) -> Path:
    """A copy of a WAV whose fmt chunk claims another sample rate (and the byte rate to match)."""
    b = bytearray(src.read_bytes())
    i = b.index(b"fmt ")
    block_align = struct.unpack_from("<H", b, i + 20)[0]
    struct.pack_into("<II", b, i + 12, rate, min(rate * block_align, 2**32 - 1))
    dst.write_bytes(bytes(b))
    return dst


def one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


# -- audio files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [1, 7999, 400_000, 2**31 - 1])
def test_an_absurd_header_rate_is_refused_before_decoding(tmp_path: Path, rate: int) -> None:
    """A 1 Hz header made soxr allocate 11 GB and crash; every rate outside 8..384 kHz is one line now."""
    bad = with_header_rate(noise_wav(tmp_path / "ok.wav"), tmp_path / "bad.wav", rate)
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside 8000..384000 Hz"):
        load_audio(bad, SR)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_samples_are_an_error_for_transcribe(tmp_path: Path, value: float) -> None:
    x = np.random.default_rng(0).normal(0, 0.1, 3 * SR).astype(np.float32)
    x[2 * SR + 5] = value
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"NaN or infinite samples from 2\.00 s"):
        load_audio(tmp_path / "nan.wav", SR)


def test_a_truncated_wav_is_named_but_a_streamed_one_is_read(tmp_path: Path) -> None:
    whole = noise_wav(tmp_path / "whole.wav", 2.0, "PCM_16").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=f"truncated: its header promises 64000 bytes of audio, it holds {len(whole) // 2 - 44}"):
        open_audio(tmp_path / "cut.wav")
    streamed = bytearray(whole)  # a writer on a pipe cannot seek back: RIFF and data sizes stay 0xFFFFFFFF
    struct.pack_into("<I", streamed, 4, 0xFFFFFFFF)
    struct.pack_into("<I", streamed, streamed.index(b"data") + 4, 0xFFFFFFFF)
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    assert len(load_audio(tmp_path / "streamed.wav", SR)) == 2 * SR


def test_a_long_file_is_streamed_not_loaded(tmp_path: Path) -> None:
    """The live file source holds a few seconds of a long file, not all of it (here 20 min: 77 MB at 16 kHz)."""
    minutes = 20
    sf.write(tmp_path / "long.wav", np.zeros(minutes * 60 * 8000, np.int16), 8000, subtype="PCM_16")

    async def drain() -> int:
        src = FileSource(str(tmp_path / "long.wav"), fast=True)
        src.start()
        return sum([1 async for _ in src.frames()])

    tracemalloc.start()
    try:
        n = asyncio.run(drain())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == minutes * 60 * SR // FRAME_SAMPLES
    assert peak < 16e6, f"peak {peak / 1e6:.0f} MB"  # 10 s blocks at 8 and 16 kHz, 3 s of frames queued


def test_the_file_source_cleans_nan_and_warns_once(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(0, 0.1, 3 * SR).astype(np.float32)
    x[100:200] = np.nan
    x[SR : SR + 10] = np.inf
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    statuses: list[tuple[str, str, str]] = []

    async def drain() -> np.ndarray:
        src = FileSource(str(tmp_path / "nan.wav"), fast=True)
        src.on_status = lambda *s: statuses.append(s)
        src.start()
        return np.concatenate([f async for f in src.frames()])

    y = asyncio.run(drain())
    assert np.isfinite(y).all() and len(y) == 3 * SR and not y[100:200].any()
    assert [(lvl, code) for lvl, code, _ in statuses] == [("warning", "bad_samples")]
    assert "110 NaN or infinite samples replaced by silence" in statuses[0][2]


@pytest.mark.parametrize("kind", ["onehz", "nan", "text", "empty", "missing"])
def test_transcribe_bad_files_is_one_line_and_exit_2(tmp_path: Path, kind: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / f"{kind}.wav"
    if kind == "onehz":
        with_header_rate(noise_wav(tmp_path / "ok.wav"), p, 1)
    elif kind == "nan":
        x = np.zeros(SR, np.float32)
        x[5] = np.nan
        sf.write(p, x, SR, subtype="FLOAT")
    elif kind == "text":
        p.write_text("this is not audio\n")
    elif kind == "empty":
        sf.write(p, np.zeros(0, np.float32), SR)
    assert main(["transcribe", "--model", str(DEMO), "--backend", "onnx", str(p)]) == 2
    one_error_line(capsys, str(p))


# -- options -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [7999, 384_001, 10**9])
def test_a_stdin_rate_out_of_range_is_a_config_error(rate: int) -> None:
    with pytest.raises(ConfigError, match=f"rate must be 8000..384000 Hz, not {rate}"):
        DaemonConfig(model=str(DEMO), source="-", rate=rate)


@pytest.mark.parametrize(("args", "words"), [
    (["--pre-roll-ms", "35000"], ["pre_roll_ms=35000"]),
    (["--host", "no-such-host.invalid"], ["no-such-host.invalid"]),
    (["--config", "{tmp}"], ["is a folder"]),
    (["--config", sys.executable], ["not UTF-8 text"]),
    (["--source", "{onehz}"], ["sample rate 1 Hz"]),
])
def test_serve_refuses_bad_options_in_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    onehz = with_header_rate(noise_wav(tmp_path / "ok.wav"), tmp_path / "onehz.wav", 1)
    args = [a.format(tmp=tmp_path, onehz=onehz) for a in args]
    proc = subprocess.run([sys.executable, "-m", "daemon", "serve", "--model", str(DEMO), "--source",
                           str(tmp_path / "ok.wav"), "--port", "0", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


# -- transcripts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "words"), [
    (bytes(range(256)), ["not UTF-8 text"]),
    (b"[1, 2]\n", [":1:", "a JSON object"]),
    (b'{"type": "final", "start": 1}\n', [":1:", "no 'end' field"]),
    (b'{"type": "final", "start": NaN, "end": 2, "text": "hi"}\n', [":1:", "finite"]),
    (b'{"type": "final", "start": 0, "end": Infinity, "text": "hi"}\n', [":1:", "finite"]),
    (b'{"type": "final", "start": 0, "end": 1, "text": "ok"}\n{"type": "final", "start": -1.5, "end": 2, '
     b'"text": "hi"}\n', [":2:", "start=-1.5"]),
    (b'{"type": "final", "start": 3, "end": 2, "text": "hi"}\n', [":1:", "start ≤ end"]),
    (b'{"type": "final", "start": "x", "end": 2, "text": "hi"}\n', [":1:"]),
    (b"{not json\n", [":1:", "not a transcript line"]),
])
def test_export_transcript_of_a_malformed_file_is_one_line(tmp_path: Path, content: bytes, words: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(content)
    assert main(["export-transcript", str(p), "--format", "srt"]) == 2
    one_error_line(capsys, *words)


def test_srt_times_are_never_negative_or_nan() -> None:
    from daemon.model.segment import Segment

    for bad in (-0.001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and ≥ 0"):
            render([Segment(bad, 1.0, "hi", "en", (), (), "")], "srt")
    assert "00:00:00,000 --> 00:00:01,500" in render([Segment(0.0, 1.5, "hi", "en", (), (), "")], "srt")


def test_read_finals_keeps_other_types_out(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"type": "status", "level": "info"}\n\n{"type": "final", "start": 0, "end": 1, "text": "a"}\n')
    assert [s.text for s in read_finals(p)] == ["a"]


# -- a stdin that stalls or ends with an odd byte ----------------------------------------------------------------


def test_a_stalled_stdin_is_warned_finalized_and_shown_as_lag() -> None:
    """stdin stops mid-sentence: after STALL_WARN_S a `source_stalled` warning, the sentence heard so far as a
    final (not held open for the whole stall), /health degraded with the stall as lag; audio again: a
    `source_resumed`, the next sentence captioned; an odd last byte: one `odd_byte` warning, still serving."""
    from daemon.live.app import STALL_WARN_S
    from devtools.daemon_process import Daemon, wer
    from devtools.speech import GAP_S, heldout_sentences, program

    texts = heldout_sentences(2)
    audio, durations = program(texts)
    pcm = (audio * 32767).astype("<i2").tobytes()
    cut = 2 * int((GAP_S + 0.6 * durations[0]) * SR)  # bytes: into the first sentence
    msgs: list[dict] = []
    with Daemon("--model", str(DEMO), "--source", "-", stdin=subprocess.PIPE) as d:
        assert d.proc.stdin is not None
        stdin = d.proc.stdin

        def send(data: bytes, close: bool = False) -> None:
            stdin.write(data)
            stdin.flush()
            if close:
                stdin.close()

        async def scenario() -> tuple[dict, dict]:
            from websockets.asyncio.client import connect

            async with connect(d.url) as ws:
                async def until(code: str) -> None:
                    async with asyncio.timeout(60):
                        while not any(m["type"] == "status" and m["code"] == code for m in msgs):
                            msgs.append(json.loads(await ws.recv()))

                await asyncio.to_thread(send, pcm[:cut])
                await until("source_stalled")
                stalled = await asyncio.to_thread(health, d.port)
                await asyncio.to_thread(send, pcm[cut:] + b"\x01", True)
                await until("source_resumed")
                await until("source_ended")
                return stalled, await asyncio.to_thread(health, d.port)

        stalled, after = asyncio.run(scenario())
        assert d.proc.poll() is None  # still serving
    finals = [m for m in msgs if m["type"] == "final"]
    codes = [m["code"] for m in msgs if m["type"] == "status" and m["level"] == "warning"]
    assert codes == ["source_stalled", "odd_byte"], msgs
    order = [m.get("code", m["type"]) for m in msgs if m["type"] in ("final", "status")]
    assert order.index("final") < order.index("source_resumed")  # finalized during the stall
    assert finals[0]["end"] <= (cut / 2) / SR + 0.05  # from what was captured before the stall
    # the rest of the first sentence is a segment of its own once audio flows again
    assert len(finals) == 3 and wer(texts[1:], [finals[2]["text"]]) <= 0.15, finals
    assert stalled["status"] == "degraded" and stalled["source_stalled_s"] >= STALL_WARN_S - 0.5
    assert stalled["audio_lag_s"] >= STALL_WARN_S - 0.5 and any("no audio" in w for w in stalled["warnings"])
    assert after["source_stalled_s"] == 0


def health(port: int) -> dict:
    import urllib.request

    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
