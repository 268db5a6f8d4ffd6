"""bench/: the normalizer and WER/CER against hand-computed values, the manifest readers, and a smoke run of
bench/accuracy.py on a few synthesized clips with the demo model (correctness of the harness, not timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.make_synthetic_set import make_set
from bench.manifest import ManifestError, layout_of, read_manifest
from bench.normalize import normalize, score
from daemon.model.locate import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent

# The demo bundle the smoke test runs; TEST_DEMO_MODEL points it elsewhere (e.g. an interim bundle).
DEMO_MODEL = Path(os.environ.get("TEST_DEMO_MODEL", DEFAULT_MODEL))


# ---------------------------------------------------------------- normalizer and scores (by hand)
@pytest.mark.parametrize(("text", "language", "expected"), [
    ("Turn on the Kitchen lights, please.", "en", "turn on the kitchen lights please"),
    ("It's twenty-three degrees — isn’t it?", "en", "its twenty three degrees isnt it"),
    ("ＯＫ  Google:\tset a timer", "en", "ok google set a timer"),  # NFKC: full-width letters and colon
    ("¿Qué hora es? ¡La canción!", "es", "qué hora es la canción"),  # accents stay
    ("El e-mail «llegó».", "es", "el email llegó"),  # outside English a hyphen joins
    ("今日は、いい天気です。", "ja", "今日はいい天気です"),
    ("我 爱 北京，天安门。", "zh", "我爱北京天安门"),
    ("오늘 날씨가 좋네요.", "ko", "오늘날씨가좋네요"),
])
def test_normalize(text: str, language: str, expected: str) -> None:
    assert normalize(text, language) == expected


def test_wer_one_deletion() -> None:
    s = score(["the cat sat on the mat"], ["the cat sat on mat"], "en")
    assert s["wer"] == pytest.approx(1 / 6)  # 1 deleted word of 6
    assert s["cer"] == pytest.approx(4 / 22)  # "the " deleted: 4 of 22 characters
    assert (s["substitutions"], s["deletions"], s["insertions"], s["ref_words"], s["ref_chars"]) == (0, 1, 0, 6, 22)
    assert s["metric"] == "wer"


def test_cer_kitten_sitting() -> None:
    s = score(["kitten"], ["sitting"], "en")  # k→s, e→i, +g
    assert s["cer"] == pytest.approx(3 / 6)
    assert s["wer"] == pytest.approx(1.0)


def test_punctuation_and_case_do_not_count() -> None:
    refs = ["Turn on the kitchen lights, please.", "It's twenty-three degrees."]
    hyps = ["turn on the Kitchen lights please", "its twenty three degrees"]
    s = score(refs, hyps, "en")
    assert s["wer"] == 0.0 and s["cer"] == 0.0


def test_wer_is_corpus_level() -> None:
    # 1 substitution + 1 deletion over 6 reference words; the mean of per-sentence WERs would be 0.5.
    s = score(["a b c d", "e f"], ["a b c d", "x"], "en")
    assert s["wer"] == pytest.approx(2 / 6)


def test_spanish_accents_are_scored() -> None:
    s = score(["La canción."], ["la cancion"], "es")
    assert s["wer"] == pytest.approx(1 / 2)  # "canción" ≠ "cancion"
    assert s["cer"] == pytest.approx(1 / 10)  # ó → o in "la canción" (10 characters)


def test_japanese_cer_without_spaces() -> None:
    # 今日はいい天気です (9) → 今日はいい天気でした: す→し, +た.
    s = score(["今日は、いい天気です。"], ["今日は いい 天気でした"], "ja")
    assert s["cer"] == pytest.approx(2 / 9)
    assert s["wer"] is None and s["ref_words"] is None and s["metric"] == "cer"
    assert (s["substitutions"], s["insertions"], s["ref_chars"]) == (1, 1, 9)


def test_chinese_cer() -> None:
    s = score(["我爱北京天安门"], ["我爱北京天安"], "zh")
    assert s["cer"] == pytest.approx(1 / 7)


def test_score_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"], "en")


# ---------------------------------------------------------------- manifest readers
def _audio(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * rate), np.float32), rate)  # format from the suffix: .wav, .flac
    return path


def _one_line_error(path: Path, *match: str, language: str | None = None) -> str:
    with pytest.raises(ManifestError) as e:
        read_manifest(path, language)
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg
    return msg


def test_jsonl(tmp_path: Path) -> None:
    a = _audio(tmp_path / "clips" / "a.wav")
    b = _audio(tmp_path / "b.flac")
    m = tmp_path / "set.jsonl"
    m.write_text(json.dumps({"audio": "clips/a.wav", "text": "hola", "language": "es"}) + "\n\n"
                 + json.dumps({"id": "x", "audio": str(b), "text": "hi", "language": "en"}) + "\n")
    assert layout_of(m) == "jsonl"
    items = read_manifest(m)
    assert [(i.id, i.audio, i.text, i.language) for i in items] == [("a", a, "hola", "es"), ("x", b, "hi", "en")]
    assert {i.language for i in read_manifest(m, "fr")} == {"fr"}  # --language overrides


def test_jsonl_errors(tmp_path: Path) -> None:
    _audio(tmp_path / "a.wav")
    m = tmp_path / "bad.jsonl"
    m.write_text(json.dumps({"audio": "a.wav", "text": "ok", "language": "en"}) + "\n{not json\n")
    _one_line_error(m, "bad.jsonl:2:", "not valid JSON")
    m.write_text(json.dumps({"audio": "a.wav", "text": "no language"}) + "\n")
    _one_line_error(m, ":1:", "--language")
    assert read_manifest(m, "en")[0].language == "en"
    m.write_text(json.dumps({"audio": "missing.wav", "text": "x", "language": "en"}) + "\n")
    _one_line_error(m, ":1:", "missing.wav", "does not exist")
    m.write_text(json.dumps(["a.wav", "x"]) + "\n")
    _one_line_error(m, ":1:", "audio and text")
    m.write_text("\n")
    _one_line_error(m, "no items")


def test_librispeech(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech" / "test-clean"
    for spk, chap, utts in [("61", "70968", ["0000", "0001"]), ("1089", "134686", ["0000"])]:
        d = root / spk / chap
        for u in utts:
            _audio(d / f"{spk}-{chap}-{u}.flac")
        (d / f"{spk}-{chap}.trans.txt").write_text(
            "".join(f"{spk}-{chap}-{u} HE HOPED THERE WOULD BE STEW {u}\n" for u in utts))
    assert layout_of(root) == "librispeech"
    items = read_manifest(root)
    assert [i.id for i in items] == ["1089-134686-0000", "61-70968-0000", "61-70968-0001"]  # sorted files
    assert items[1].text == "HE HOPED THERE WOULD BE STEW 0000"
    assert items[1].audio == root / "61" / "70968" / "61-70968-0000.flac"
    assert {i.language for i in items} == {"en"}
    assert read_manifest(tmp_path / "LibriSpeech")[0].id == "1089-134686-0000"  # any folder above works


def test_librispeech_errors(tmp_path: Path) -> None:
    d = tmp_path / "test-other" / "1" / "2"
    d.mkdir(parents=True)
    _one_line_error(tmp_path / "test-other", "no LibriSpeech")
    (d / "1-2.trans.txt").write_text("1-2-0000\n")
    _one_line_error(tmp_path / "test-other", "1-2.trans.txt:1:", "ID TEXT")
    (d / "1-2.trans.txt").write_text("1-2-0000 SOME TEXT\n")
    _one_line_error(tmp_path / "test-other", "1-2-0000.flac", "does not exist")


def _fleurs_row(uid: str, name: str, raw: str) -> str:
    return "\t".join([uid, name, raw, raw.lower(), "| ".join(raw.split()), "32000", "FEMALE"]) + "\n"


def test_fleurs(tmp_path: Path) -> None:
    cfg = tmp_path / "fleurs" / "en_us"
    for name in ("111.wav", "222.wav"):
        _audio(cfg / "audio" / "test" / name)
    tsv = cfg / "test.tsv"
    tsv.write_text(_fleurs_row("1906", "111.wav", 'He said "yes", twice.') + _fleurs_row("1907", "222.wav", "Ok."))
    assert layout_of(tsv) == "fleurs"
    items = read_manifest(tsv)
    assert [(i.id, i.text, i.language) for i in items] == [("111", 'He said "yes", twice.', "en"), ("222", "Ok.", "en")]
    assert items[0].audio == cfg / "audio" / "test" / "111.wav"
    assert read_manifest(tsv, "es")[0].language == "es"


def test_fleurs_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "cmn_hans_cn"
    _audio(cfg / "audio" / "dev" / "1.wav")
    tsv = cfg / "dev.tsv"
    tsv.write_text(_fleurs_row("5", "1.wav", "我爱北京"))
    _one_line_error(tsv, "cmn_hans_cn", "--language")
    assert read_manifest(tsv, "zh")[0].language == "zh"
    tsv.write_text("5\t1.wav\tonly three columns\n")
    _one_line_error(tsv, "dev.tsv:1:", "7 tab-separated columns, found 3", language="zh")
    tsv.write_text(_fleurs_row("6", "2.wav", "x"))
    _one_line_error(tsv, "2.wav", "does not exist", language="zh")


def test_not_a_manifest(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope.jsonl", "no such manifest")
    (tmp_path / "list.csv").write_text("a,b\n")
    _one_line_error(tmp_path / "list.csv", "not a manifest")


# ---------------------------------------------------------------- synthetic set and harness smoke test
def test_synthetic_set_is_reproducible(tmp_path: Path) -> None:
    a = make_set(tmp_path / "a", 1, ["en"], workers=1)
    b = make_set(tmp_path / "b", 1, ["en"], workers=1)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a" / "en-000.wav").read_bytes() == (tmp_path / "b" / "en-000.wav").read_bytes()


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.accuracy", *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_harness_error_is_one_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": "gone.wav", "text": "x", "language": "en"}) + "\n")
    p = _harness(str(m), "--out", str(tmp_path / "out.json"))
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "gone.wav" in p.stderr
    assert not (tmp_path / "out.json").exists()


def test_harness_smoke(tmp_path: Path) -> None:
    manifest = make_set(tmp_path / "set", 2, ["en", "es"], workers=1)
    out = tmp_path / "accuracy.json"
    p = _harness(str(manifest), "--model", str(DEMO_MODEL), "--backend", "onnx", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "language" in p.stdout and "decoder" in p.stdout  # the printed table
    doc = json.loads(out.read_text())

    assert doc["command"].startswith("python -m bench.accuracy ")
    assert {"platform", "cpu", "cores"} <= set(doc["machine"])
    assert Path(doc["model"]["bundle"]) == DEMO_MODEL and "source" in doc["model"]
    assert doc["backend"]["name"] == "onnx" and doc["backend"]["runtime"].startswith("onnxruntime")
    assert doc["manifest"]["layout"] == "jsonl"

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert doc["n_items"] == len(doc["items"]) == 4
    assert [i["ref"] for i in doc["items"]] == [r["text"] for r in rows]
    audio = sum(sf.info(str(manifest.parent / r["audio"])).duration for r in rows)
    assert doc["audio_seconds"] == pytest.approx(audio, abs=1e-3)
    assert doc["compute_seconds"] > 0 and doc["rtfx"] > 0
    assert doc["rtfx"] == pytest.approx(doc["audio_seconds"] / doc["compute_seconds"], rel=1e-3)

    stages = doc["stages"]
    assert list(stages) == ["features", "encoder", "decoder", "detokenize", "other"]
    assert sum(s["share"] for s in stages.values()) == pytest.approx(1.0, abs=1e-3)
    assert all(s["seconds"] >= 0 for s in stages.values()) and stages["encoder"]["seconds"] > 0
    assert stages["decoder"]["steps"] >= 4 * 2  # at least a few prompt steps per clip

    assert set(doc["languages"]) == {"en", "es"}
    for lang, s in doc["languages"].items():
        items = [i for i in doc["items"] if i["language"] == lang]
        assert s["n"] == len(items) == 2
        assert 0.0 <= s["wer"] <= 1.0 and 0.0 <= s["cer"] <= 1.0
        again = score([i["ref"] for i in items], [i["hyp"] for i in items], lang)  # the JSON agrees with itself
        assert s["wer"] == pytest.approx(again["wer"], abs=1e-6)
