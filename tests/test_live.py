"""End to end: `python -m daemon serve` on the demo model, fed by a file, stdin and a virtual microphone."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from devtools.daemon_process import DEMO, ROOT, Daemon, collect, wer
from devtools.speech import heldout_sentences as sentences
from devtools.speech import program

SR = 16000


def n_finals(k: int):
    return lambda msgs: sum(m["type"] == "final" for m in msgs) >= k


def check_captions(msgs: list[dict], texts: list[str], durations: list[float]) -> float:
    """Protocol order per segment, growing partials, one final per sentence; returns the WER."""
    finals = [m for m in msgs if m["type"] == "final"]
    assert len(finals) == len(texts), [m for m in msgs if m["type"] in ("final", "speech_started")]
    assert sum(m["type"] == "speech_started" for m in msgs) == len(texts)
    seqs = [m["seq"] for m in msgs if m["type"] != "hello"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for f, dur in zip(finals, durations, strict=True):
        parts = [m for m in msgs if m["type"] == "partial" and m["segment"] == f["segment"]]
        assert all(m["seq"] < f["seq"] for m in parts)  # the final replaces them
        if dur >= 2.0:
            lengths = [len((p["stable"] + " " + p["unstable"]).split()) for p in parts]
            assert len(parts) >= 2 and max(lengths[1:]) > lengths[0], lengths  # at least two, growing
    assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
    return wer(texts, [f["text"] for f in finals])


def test_file_source(tmp_path: Path) -> None:
    texts = sentences(3)
    audio, durations = program(texts)
    wav = tmp_path / "program.wav"
    sf.write(wav, audio, SR)
    with Daemon("--model", str(DEMO), "--source", str(wav), "--transcripts", str(tmp_path / "tr")) as d:
        msgs = asyncio.run(collect(d.url, n_finals(len(texts)), timeout=len(audio) / SR + 30))
    err = check_captions(msgs, texts, durations)
    print(f"file source WER {err:.3f}")
    assert err <= 0.10
    lines = next((tmp_path / "tr").glob("*.jsonl")).read_text().splitlines()
    assert len(lines) == len(texts)
    srt = subprocess.run([os.sys.executable, "-m", "daemon", "export-transcript", str(next((tmp_path / "tr").glob(
        "*.jsonl"))), "--format", "srt"], capture_output=True, text=True, check=True).stdout
    assert srt.startswith("1\n00:00:0") and srt.count(" --> ") == len(texts)


def test_cli_until_source_ends_prints_every_final_then_exits(tmp_path: Path) -> None:
    """What the quick start does: serve a file, `clients/cli.py --until-source-ends` shows its captions."""
    texts = sentences(6)[3:6]
    audio, _ = program(texts)
    wav = tmp_path / "program.wav"
    sf.write(wav, audio, SR)
    with Daemon("--source", str(wav)) as d:  # the default model: the demo model
        proc = subprocess.run([os.sys.executable, "clients/cli.py", "--url", d.url, "--until-source-ends"],
                              cwd=ROOT, capture_output=True, text=True, timeout=len(audio) / SR + 60)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(texts), proc.stdout
    hyps = [ln.split(" ", 1)[1] for ln in lines]  # "mm:ss text"
    assert wer(texts, hyps) <= 0.10, (texts, lines)
    assert "ended" in proc.stderr


def test_stdin_source_at_another_rate() -> None:
    texts = sentences(5)[3:5]
    audio, durations = program(texts)
    pcm = (soxr.resample(audio, SR, 22050) * 32767).astype("<i2").tobytes()
    with Daemon("--model", str(DEMO), "--source", "-", "--rate", "22050", stdin=subprocess.PIPE) as d:
        async def feed_and_collect() -> list[dict]:
            task = asyncio.create_task(collect(d.url, n_finals(len(texts)), timeout=60))
            await asyncio.sleep(0.3)
            step = 22050 * 2 // 10  # 100 ms of PCM per write, in real time
            for i in range(0, len(pcm), step):
                d.proc.stdin.write(pcm[i : i + step])
                d.proc.stdin.flush()
                await asyncio.sleep(0.1)
            d.proc.stdin.close()
            return await task

        msgs = asyncio.run(feed_and_collect())
    err = check_captions(msgs, texts, durations)
    print(f"stdin source WER {err:.3f}")
    assert err <= 0.10


def test_silence_and_noise_give_no_text_then_speech_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 10 ** (-50 / 20), 60 * SR).astype(np.float32)
    texts = sentences(6)[5:6]
    speech, _ = program(texts)
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.concatenate([np.zeros(60 * SR, np.float32), noise, speech]), SR, subtype="FLOAT")
    with Daemon("--model", str(DEMO), "--source", str(wav), "--fast") as d:
        msgs = asyncio.run(collect(d.url, n_finals(1), timeout=60))
    finals = [m for m in msgs if m["type"] == "final"]
    assert len(finals) == 1 and finals[0]["start"] >= 120.0 - 0.5  # nothing before the speech
    assert all(m["start"] >= 119.5 for m in msgs if m["type"] in ("partial", "speech_started"))
    assert wer(texts, [finals[0]["text"]]) <= 0.10


@pytest.fixture()
def virtual_mic(tmp_path: Path):
    """A PulseAudio null sink whose monitor is the default input (real-time, sample-exact)."""
    for tool in ("pulseaudio", "pactl", "paplay", "pacat"):
        assert shutil.which(tool), f"{tool} missing: .ci/run installs pulseaudio and pulseaudio-utils"
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for v in env.values():
        Path(v).mkdir(mode=0o700)
    conf = tmp_path / "pa.conf"
    conf.write_text("load-module module-native-protocol-unix auth-anonymous=1\n"
                    "load-module module-null-sink sink_name=vsink rate=16000 channels=1 format=s16le\n"
                    "set-default-sink vsink\nset-default-source vsink.monitor\n")
    penv = {**os.environ, **env}
    pulse = subprocess.Popen(["pulseaudio", "-n", "-F", str(conf), "--daemonize=no", "--exit-idle-time=-1",
                              "--disallow-exit", f"--log-target=file:{tmp_path / 'pulse.log'}"], env=penv)
    deadline = time.monotonic() + 20
    while subprocess.run(["pactl", "info"], env=penv, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and pulse.poll() is None, "pulseaudio did not start"
        time.sleep(0.1)
    # Keep the sink awake: an idle null sink sleeps in 2 s blocks and the first words would be lost.
    keep = subprocess.Popen(["pacat", "--playback", "--device=vsink", "--raw", "--format=s16le", "--rate=16000",
                             "--channels=1", "--latency-msec=20"], stdin=subprocess.PIPE, env=penv)

    def zeros() -> None:
        try:
            while keep.poll() is None:
                keep.stdin.write(bytes(3200))
                keep.stdin.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ValueError):
            pass

    import threading

    threading.Thread(target=zeros, daemon=True).start()
    yield env
    keep.kill()
    keep.communicate()  # reaps it and closes its stdin pipe
    pulse.terminate()
    pulse.wait(10)


def test_microphone_via_virtual_source(virtual_mic: dict[str, str], tmp_path: Path) -> None:
    texts = sentences(3)
    audio, durations = program(texts)
    wav = tmp_path / "say.wav"
    sf.write(wav, audio, SR, subtype="PCM_16")
    with Daemon("--model", str(DEMO), "--source", "mic", env=virtual_mic) as d:
        async def play_and_collect() -> list[dict]:
            task = asyncio.create_task(collect(d.url, n_finals(len(texts)), timeout=len(audio) / SR + 40))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(subprocess.run, ["paplay", "--device=vsink", str(wav)], env={**os.environ,
                                                                                              **virtual_mic})
            return await task

        msgs = asyncio.run(play_and_collect())
    err = check_captions(msgs, texts, durations)
    print(f"microphone WER {err:.3f}")
    assert err <= 0.10
