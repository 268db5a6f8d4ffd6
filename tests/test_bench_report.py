"""bench.report on small hand-written JSON: the tables carry the numbers, commands and machines, the figures
are written and referenced, absent files are skipped, and the same JSON gives the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report

ROOT = Path(__file__).resolve().parent.parent

MACHINE = {"platform": "Linux-6.1-x86_64", "cpu": "Test CPU 9000", "cores": 2, "python": "3.11.7"}

ACCURACY = {
    "command": "python -m bench.accuracy sets/tiny/manifest.jsonl --limit 4", "machine": MACHINE,
    "model": {"bundle": "models/demo", "source": {}},
    "backend": {"name": "onnx", "precision": "fp32", "runtime": "onnxruntime 1.32.0"},
    "manifest": {"path": "sets/tiny/manifest.jsonl", "layout": "jsonl"},
    "n_items": 4, "audio_seconds": 12.5, "compute_seconds": 0.5, "rtfx": 25.0,
    "languages": {"en": {"n": 2, "wer": 0.0625, "cer": 0.03125, "audio_seconds": 6.0, "compute_seconds": 0.25,
                         "rtfx": 24.0},
                  "es": {"n": 2, "wer": 0.125, "cer": 0.0625, "audio_seconds": 6.5, "compute_seconds": 0.25,
                         "rtfx": 26.0}},
    "stages": {"features": {"seconds": 0.05, "share": 0.1}, "encoder": {"seconds": 0.3, "share": 0.6},
               "decoder": {"seconds": 0.125, "share": 0.25, "steps": 50, "ms_per_step": 2.5},
               "detokenize": {"seconds": 0.0, "share": 0.0}, "other": {"seconds": 0.025, "share": 0.05}},
    "items": [],
}
DECODER_STEP = {
    "command": "python -m bench.decoder_step --steps 7", "machine": "x86_64, 2 cores, onnxruntime 1.32.0 CPU",
    "shape": {"layers": 8, "d_model": 1024}, "median_step_ms": {"ours": 50.5, "recompute_cross_kv": 101.0},
    "p90_step_ms": {"ours": 52.25, "recompute_cross_kv": 104.75}, "ratio": 2.0,
    "cross_kv_macs_per_step_avoided": 7348420608,
}
LIVE_LATENCY = {
    "command": "python -m bench.live_latency --sentences 3", "machine": "x86_64, cpu, 2 cores",
    "model": "models/demo", "sentences": 3, "finals": 3, "wer": 0.05,
    "vad_close_to_final_ms": {"median": 181.5, "p95": 243.5},
    "end_of_speech_to_final_ms": {"median": 781.5, "p95": 843.5},
    "daemon_vad_close_to_final_ms": {"median": 175.25, "p95": 240.75, "n": 3},
    "partial_interval_ms": {"median": 498.5, "p95": 541.5, "n": 4},
    "samples": {"vad_close_to_final_ms": [150.0, 181.5, 243.5], "end_of_speech_to_final_ms": [750.0, 781.5, 843.5],
                "partial_interval_ms": [450.0, 498.5, 500.0, 541.5]},
}
SOAK = {
    "command": "python -m bench.soak --hours 0.01 --idle-seconds 3", "machine": MACHINE, "load_average": [1.5, 1.25, 1.0],
    "model": "models/demo",
    "idle": {"source": "stdin zeros", "wall_seconds": 3.0, "cpu_seconds": 0.03, "cpu_percent_of_core": 1.17,
             "goal_percent": 2.0, "meets_goal": True, "rss_mb": 166.5, "threads": 8, "clients": 1},
    "soak": {"source": "file (int16 WAV), --fast", "audio_seconds": 36.0, "sentences": 9, "distinct_sentences": 9,
             "completed": True, "wall_seconds": 8.0, "finals": 9, "wer": 0.25,
             "rss_mb": {"loaded": 268.5, "peak": 281.25, "end": 275.75, "peak_vmhwm": 283.5},
             "slope_mb_per_audio_hour_second_half": 12.75, "health_timeouts": 0, "client": {"close_code": 1001},
             "sample_seconds": 2.0,
             "samples": [{"t_s": 2.0 * i, "rss_mb": 268.5 + i, "audio_s": 9.0 * i, "finals": 2 * i, "loaded": True}
                         for i in range(5)]},
}
FULL_SHAPE = {  # the shape of bench/full_shape.py's JSON, abridged
    "command": "python -m bench.full_shape --encoder-layers 4", "machine": {**MACHINE, "load_average_at_end": [2.5, 2.0]},
    "shape": {"encoder_layers": 4, "buckets": [500, 3500]},
    "comparisons": [{"name": "P2a: 35 s window", "ours": 8.125, "reference": 16.5, "unit": "s", "ratio": 2.031,
                     "goal": 1.5, "met": True},
                    {"name": "P2b (encoder stage only)", "ours": 1.25, "reference": 5.5, "unit": "s", "ratio": 4.4,
                     "goal": None, "met": None}],
    "memory": [{"name": "export", "peak_rss_mb": 2410.5}],
    "steps": {"export": {"rc": 0, "log_tail": ["a very long log line"]}},
    "notes": ["ran with 4 encoder layers"],
    "total_seconds": 321.5,
}
LONG_RUN = {  # bench/long_run.py's JSON, abridged
    "command": "python -m bench.long_run --hours 0.01", "machine": MACHINE, "model": "models/demo",
    "source": "stdin (s16le) at 6x real time", "partial_interval_ms": 100, "audio_seconds": 36.0, "sentences": 8,
    "finals": 8, "wer": 0.025, "client": {"messages": {"final": 8, "partial": 20}}, "sample_seconds": 1.0,
    "figures": {"rss_mb_at_10_percent": 250.0, "rss_mb_at_end": 255.0, "rss_growth_percent": 2.0,
                "fds_at_10_percent": 13, "fd_growth": 0, "threads_at_10_percent": 10, "thread_growth": 1,
                "latency_median_ms_second_quarter": 200.0, "latency_median_ms_last_quarter": 210.0,
                "latency_ratio": 1.05},
    "goals": {"rss_growth_percent": 5.0, "fd_growth": 0, "thread_growth": 0, "latency_ratio": 1.5},
    "meets": {"rss_growth_percent": True, "fd_growth": True, "thread_growth": False, "latency_ratio": True},
    "samples": [{"t_s": float(t), "rss_mb": 250.0 + t, "fds": 13, "threads": 10, "latency_median_ms": 200.0,
                 "latency_p95_ms": 240.0} for t in range(5)],
}

COREML_DRIFT = {  # bench/coreml_drift.py's JSON, abridged
    "command": "python -m bench.coreml_drift --clips 4", "machine": MACHINE,
    "results": {"a/fp16": {"all": {"clips": 4, "identical": 3, "tokens_before_first_difference": 0.875,
                                   "max_logprob_drift": 0.33},
                           "up_to_20.48s": {"clips": 3, "max_logprob_drift": 0.05},
                           "over_20.48s": {"clips": 1, "max_logprob_drift": 0.33}}},
}
COREML_SPEED = {  # bench/coreml_speed.py's JSON
    "command": "python -m bench.coreml_speed", "machine": MACHINE,
    "results": {"coreml-reference": {"5s": {"window_s": 2.5, "encoder_s": 1.0, "decoder_s": 1.5, "decoder_steps": 54,
                                            "ms_per_step": 27.6}}},
}

ALL = {"accuracy-tiny.json": ACCURACY, "decoder_step.json": DECODER_STEP, "live_latency.json": LIVE_LATENCY,
       "soak.json": SOAK, "full_shape.json": FULL_SHAPE, "long_run.json": LONG_RUN,
       "coreml_drift.json": COREML_DRIFT, "coreml_speed.json": COREML_SPEED}


def write_results(folder: Path, docs: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc), encoding="utf-8")
    return folder


def run(results: Path, out: Path) -> str:
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report of every kind of result file: (docs folder, markdown)."""
    tmp = tmp_path_factory.mktemp("report")
    docs = tmp / "docs"
    return docs, run(write_results(tmp / "results", ALL), docs / "benchmarks.md")


def test_starts_with_the_generated_note(full: tuple[Path, str]) -> None:
    md = full[1]
    assert md.splitlines()[0].startswith("<!-- Generated by `python -m bench.report`")
    assert "do not edit this file by hand" in md


@pytest.mark.parametrize("doc", ALL.values(), ids=ALL.keys())
def test_every_table_names_its_command_and_machine(full: tuple[Path, str], doc: dict[str, Any]) -> None:
    md = full[1]
    line = report.provenance(doc)
    assert f"Command: `{doc['command']}`" in line
    assert line in md


def test_each_table_is_followed_by_its_provenance(full: tuple[Path, str]) -> None:
    blocks = full[1].split("\n\n")
    tables = [i for i, block in enumerate(blocks) if block.startswith("| ")]
    assert len(tables) == 12  # accuracy 2, decoder step 1, full shape 3, live latency 1, soak 2, long run 1,
    # Core ML drift 1 and speed 1
    for i in tables:
        assert blocks[i + 1].startswith("Command: `") and " · Machine: " in blocks[i + 1], blocks[i]


def test_tables_hold_the_numbers(full: tuple[Path, str]) -> None:
    md = full[1]
    assert "Test CPU 9000, 2 cores, Linux-6.1-x86_64, Python 3.11.7" in md
    # accuracy: per language and per stage
    assert "| en | 2 | 6 | 6.25 | 3.12 | 24 |" in md
    assert "| es | 2 | 6.5 | 12.50 | 6.25 | 26 |" in md
    assert "| encoder | 0.300 | 60.00 |" in md
    assert "50 steps, 2.5 ms per step" in md
    # decoder step, side by side
    assert "| 50.5 | 52.25 | 1× |" in md and "| 101 | 104.75 | 2× |" in md and "**2×**" in md
    # live latency against the goal
    assert "| VAD close → final (client) | 181.5 | 243.5 | 3 | p95 ≤ 250 | yes |" in md
    assert "| VAD close → final (inside the daemon) | 175.25 | 240.75 | 3 | p95 ≤ 250 | yes |" in md
    # long run: growth against its goals (a thread more than at 10 % fails its goal)
    assert "| RSS growth (%) | 2 | ≤ 5 | yes |" in md and "| threads at 10 % / growth | 10 / 1 | growth 0 | no |" in md
    assert "| interval between partials | 498.5 | 541.5 | 4 | – | – |" in md
    # soak: idle CPU and memory
    assert "| CPU share of one core (%) | 1.17 | ≤ 2 |" in md
    assert "| RSS peak, kernel VmHWM (MB) | 283.5 |" in md
    assert "| RSS slope, second half (MB per audio hour) | 12.75 |" in md
    assert "| finals / sentences | 9 / 9 |" in md
    # full_shape, generic: row lists and flat objects as tables, text lists as bullets, nested objects named
    assert "| name | ours | reference | unit | ratio | goal | met |" in md
    assert "| P2a: 35 s window | 8.12 | 16.5 | s | 2.03 | 1.5 | yes |" in md
    assert "| P2b (encoder stage only) | 1.25 | 5.5 | s | 4.4 | – | – |" in md
    assert "| export | 2410.5 |" in md
    assert "| buckets | 500, 3500 |" in md
    assert "- ran with 4 encoder layers" in md and "- Total seconds: 321.5" in md
    assert "More in the JSON: `steps`." in md and "a very long log line" not in md
    assert "load average at end 2.5, 2" in md
    # Core ML reference evaluator: drift per config/precision, speed per backend and clip
    assert "| a/fp16 | 3/4 | 87.5 % | 0.05 | 0.33 |" in md and "| coreml-reference | 5s | 2.5 | 1 | 27.6 |" in md
    assert "Not measured yet" not in md


def test_figures_are_written_and_referenced(full: tuple[Path, str]) -> None:
    docs, md = full
    for name in ("stages.png", "latency.png", "rss.png"):
        png = docs / "img" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](img/{name})" in md


def test_absent_files_are_skipped(tmp_path: Path) -> None:
    md = run(write_results(tmp_path / "results", {"decoder_step.json": DECODER_STEP}), tmp_path / "d" / "b.md")
    assert "## Decoder step" in md
    for heading in ("## Accuracy", "## Live caption latency", "## Daemon soak", "## Full-shape"):
        assert heading not in md
    assert "![" not in md and not (tmp_path / "d" / "img").exists()
    assert "- `live_latency.json` (`python -m bench.live_latency`)" in md
    assert "- `accuracy-*.json`" in md


def test_same_json_same_files(tmp_path: Path) -> None:
    results = write_results(tmp_path / "results", ALL)
    first = run(results, tmp_path / "a" / "benchmarks.md")
    pngs = {p.name: p.read_bytes() for p in (tmp_path / "a" / "img").iterdir()}
    assert run(results, tmp_path / "a" / "benchmarks.md") == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "a" / "img").iterdir()} == pngs
    assert str(tmp_path) not in first  # no paths of this machine


def test_the_idle_table_has_a_column_per_source_and_sound() -> None:
    """bench/soak: silence and room noise on stdin, and on the microphone with --mic; thread ids differ per run,
    so the other threads are summed and the busiest one named by its share."""
    doc = {**SOAK, "idle_noise": {**SOAK["idle"], "source": "stdin noise", "noise_dbfs": -50.0, "cpu_percent_of_core": 0.35,
                                  "cpu_percent_by_thread": {"main": 0.1, "python/9": 0.25}},
           "idle_mic": {**SOAK["idle"], "source": "mic zeros", "cpu_percent_of_core": 1.18, "meets_goal": False,
                        "cpu_percent_by_thread": {"main": 0.2, "python/7": 0.6, "threaded-ml/6": 0.3}}}
    md = "\n".join(report.idle_table(doc))
    assert "| measure | stdin, digital silence | stdin, noise -50 dBFS | microphone, digital silence | goal |" in md
    assert "| CPU share of one core (%) | 1.17 | 0.35 | 1.18 | ≤ 2 |" in md
    assert "| meets the goal | yes | yes | no |  |" in md
    assert "| CPU share (%) of the busiest other thread | – | 0.25 | 0.6 |  |" in md
    assert "| CPU share (%) of all other threads | 0 | 0.25 | 0.9 |  |" in md
    assert "- microphone, digital silence: mic zeros" in md
