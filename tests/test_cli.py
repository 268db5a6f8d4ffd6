"""`python -m daemon transcribe` as a user runs it: output formats, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from devtools.speech import speech_clip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "transcribe", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("audio") / "clip.wav"
    import soxr

    sf.write(p, soxr.resample(speech_clip(38.0, 5), 16000, 22050), 22050)  # another rate, > one window
    return p


def test_json_has_segments_tokens_logprobs(tiny_bundles, wav: Path) -> None:
    r = run(str(wav), "--model", str(tiny_bundles["a"]), "--format", "json", "--dither", "0", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    segs = doc["segments"]
    assert len(segs) == 2 and segs[0]["start"] == 0.0 and 30.0 <= segs[0]["end"] <= 35.0
    assert segs[1]["start"] == segs[0]["end"] and abs(segs[1]["end"] - 38.0) < 0.01
    for s in segs:
        assert len(s["tokens"]) == len(s["logprobs"]) <= 8 and all(lp <= 0 for lp in s["logprobs"])
        assert s["language"] == "en"


@pytest.mark.parametrize("fmt,head", [("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00:00.000 --> ")])
def test_subtitles(tiny_bundles, wav: Path, fmt: str, head: str) -> None:
    r = run(str(wav), "--model", str(tiny_bundles["b"]), "--format", fmt, "--max-new-tokens", "6",
            "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(head)


def test_ignore_eos_forces_the_token_count(tiny_bundles, wav: Path) -> None:
    r = run(str(wav), "--model", str(tiny_bundles["b"]), "--format", "json", "--max-new-tokens", "12", "--ignore-eos")
    assert [len(s["tokens"]) for s in json.loads(r.stdout)["segments"]] == [12, 12]


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture()
def broken(tiny_bundles, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["a"], dst)
    return dst


def test_missing_manifest(broken: Path, wav: Path) -> None:
    (broken / "manifest.json").unlink()
    one_line_error(run(str(wav), "--model", str(broken)), "no manifest.json")


def test_corrupt_manifest(broken: Path, wav: Path) -> None:
    (broken / "manifest.json").write_text("{ not json")
    one_line_error(run(str(wav), "--model", str(broken)), "not valid JSON")


def test_manifest_missing_field(broken: Path, wav: Path) -> None:
    m = json.loads((broken / "manifest.json").read_text())
    del m["decoder"]["cache_capacity"]
    (broken / "manifest.json").write_text(json.dumps(m))
    one_line_error(run(str(wav), "--model", str(broken)), "missing field", "cache_capacity")


def test_checksum_mismatch(broken: Path, wav: Path) -> None:
    with (broken / "onnx/decoder_step.onnx").open("ab") as f:
        f.write(b"\0")
    one_line_error(run(str(wav), "--model", str(broken)), "checksum mismatch", "decoder_step.onnx")


def test_missing_model_file(broken: Path, wav: Path) -> None:
    (broken / "onnx/encoder.onnx").unlink()
    one_line_error(run(str(wav), "--model", str(broken)), "missing onnx/encoder.onnx")


def test_missing_bundle(tmp_path: Path, wav: Path) -> None:
    one_line_error(run(str(wav), "--model", str(tmp_path / "nope")), "not a folder")


def test_unknown_language(tiny_bundles, wav: Path) -> None:
    one_line_error(run(str(wav), "--model", str(tiny_bundles["a"]), "--language", "xx"), "unknown language 'xx'")


def test_too_many_tokens(tiny_bundles, wav: Path) -> None:
    one_line_error(run(str(wav), "--model", str(tiny_bundles["a"]), "--max-new-tokens", "257"),
                   "exceeds", "266")


def test_coreml_on_linux(tiny_bundles, wav: Path) -> None:
    one_line_error(run(str(wav), "--model", str(tiny_bundles["a"]), "--backend", "coreml"), "only on macOS")


def test_unreadable_and_empty_audio(tiny_bundles, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    one_line_error(run(str(bad), "--model", str(tiny_bundles["a"])), "cannot read audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    one_line_error(run(str(empty), "--model", str(tiny_bundles["a"])), "no audio samples")
    one_line_error(run(str(tmp_path / "missing.wav"), "--model", str(tiny_bundles["a"])), "no such audio file")


@pytest.mark.parametrize("args,words", [
    (["--model", "/nonexistent"], ["not a folder"]),
    (["--source", "/nonexistent.wav"], ["no such audio file"]),
    (["--source", "mic", "--device", "no-such-microphone"], ["input device"]),
    (["--language", "xx"], ["unknown language 'xx'"]),
    (["--end-silence-ms", "0"], ["end_silence_ms must be"]),
])
def test_serve_errors_are_one_line(tiny_bundles, wav: Path, args: list[str], words: list[str]) -> None:
    base = ["--model", str(tiny_bundles["a"]), "--source", str(wav), "--port", "0"]
    r = subprocess.run([sys.executable, "-m", "daemon", "serve", *base, *args], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "HOME": "/nonexistent-home"})
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert all(w in lines[0] for w in words), lines[0]


def serve_before_loading(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`serve` with a model and source that do not exist: an error about them means the options passed."""
    return subprocess.run([sys.executable, "-m", "daemon", "serve", "--model", "/nonexistent-model",
                           "--source", "/nonexistent.wav", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("args,words", [
    (["--min-level-dbfs", "5"], ["min_level_dbfs must be ≤ 0"]),
    (["--pre-roll-ms", "40000"], ["pre_roll_ms=40000"]),
    (["--end-silence-ms", "0"], ["end_silence_ms must be > 0"]),
    (["--partial-interval-ms", "10"], ["partial_interval_ms must be ≥ 50"]),
])
def test_serve_rejects_bad_values_before_loading(args: list[str], words: list[str]) -> None:
    one_line_error(serve_before_loading(*args), *words)


@pytest.mark.parametrize("toml,words", [
    ("transcripts = 5", ["transcripts must be str, not int"]),
    ("device = 3", ["device must be str, not int"]),
    ("backend = 2", ["backend must be str, not int"]),
    ("max_new_tokens = 'many'", ["max_new_tokens must be int, not str"]),
    ("dither = true", ["dither must be float, not bool"]),
    ("min_level_dbfs = 5", ["min_level_dbfs must be ≤ 0"]),
])
def test_serve_rejects_bad_toml_before_loading(tmp_path: Path, toml: str, words: list[str]) -> None:
    (tmp_path / "daemon.toml").write_text(toml + "\n")
    one_line_error(serve_before_loading("--config", "daemon.toml", cwd=tmp_path), *words)


def test_serve_config_that_is_not_a_toml_file(tmp_path: Path) -> None:
    one_line_error(serve_before_loading("--config", str(tmp_path)), "is a folder")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)))
    one_line_error(serve_before_loading("--config", str(binary)), "not UTF-8 text")


def test_version() -> None:
    from importlib.metadata import version

    r = subprocess.run([sys.executable, "-m", "daemon", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["python", "-m", "daemon", version("cohere-transcribe-daemon")]


def test_model_from_the_environment(tmp_path: Path) -> None:
    """$COHERE_TRANSCRIBE_MODEL is the default --model, read when the command runs."""
    env = {**os.environ, "COHERE_TRANSCRIBE_MODEL": str(tmp_path / "my-bundle")}
    r = subprocess.run([sys.executable, "-m", "daemon", "transcribe", str(tmp_path / "x.wav")], capture_output=True,
                       text=True, timeout=60, env=env)
    one_line_error(r, str(tmp_path / "my-bundle"), "not a folder")
