"""Bundle validation (load_bundle) and checksum verification (verify_files), on copies of the demo bundle.

load_bundle parses and checks that files exist, and hashes nothing; verify_files hashes only the files of the
selected backend plus the shared ones, and remembers verified files by (path, size, mtime_ns).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import BundleError
from daemon.model import checksums
from daemon.model.bundle import encoder_frames, load_bundle
from daemon.model.checksums import backend_files, sha256_of, verify_files
from daemon.model.transcriber import load_transcriber

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
SHARED = {"tokenizer.model", "mel_filters.npy", "window.npy"}


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh verification cache per test (never the user's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(DEMO, out)
    return out


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file whose bytes verify_files reads, in order."""
    seen: list[Path] = []
    real = checksums._file_digest

    def counting(path: Path) -> bytes:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(checksums, "_file_digest", counting)
    return seen


def edit_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def corrupt(path: Path) -> None:
    """Flip one byte of a file, or of the largest file inside a folder (.mlpackage)."""
    if path.is_dir():
        path = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def one_line(e: pytest.ExceptionInfo[BundleError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- validation (defect #6 and friends)

def test_demo_bundle_is_valid_and_exposes_the_window() -> None:
    b = load_bundle(DEMO)
    assert b.buckets[-1] == b.window_frames == 3500
    assert b.cross_frames == encoder_frames(3500, b.subsampling_stages) == 438
    assert (b.max_window_seconds, b.split_search_seconds, b.split_window_samples) == (35.0, 5.0, 1600)
    assert b.window_samples == 35 * 16000


def test_largest_bucket_shorter_than_the_window_is_rejected(bundle_copy: Path) -> None:
    """Review §6 #6: a bundle trimmed to buckets 500/1000 loaded, then failed on every window over 10 s."""
    def trim(m: dict[str, Any]) -> None:
        m["encoder"]["buckets"] = [500, 1000]
        for backend in m["backends"].values():
            if len(backend["encoders"]) == 1:  # ONNX: one dynamic encoder, declared for the full window
                backend["encoders"] = {"1000": next(iter(backend["encoders"].values()))}
            else:
                backend["encoders"] = {k: v for k, v in backend["encoders"].items() if int(k) <= 1000}
        m["decoder"]["cross_frames"] = encoder_frames(1000, 3)  # consistent with the largest bucket left

    edit_manifest(bundle_copy, trim)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    msg = one_line(e)
    assert "1000 frames" in msg and "3500 frames" in msg and "35 s" in msg


def test_a_bucket_longer_than_the_window_is_fine(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m["audio"].update(max_window_seconds=20.0))
    assert load_bundle(bundle_copy).window_samples == 20 * 16000


def test_cross_frames_must_match_the_largest_bucket(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m["decoder"].update(cross_frames=437))
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    msg = one_line(e)
    assert "cross_frames is 437" in msg and "438" in msg


def test_manifest_without_tokenizer_is_a_bundle_error(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m.pop("tokenizer"))
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    assert "missing field 'tokenizer'" in one_line(e)


@pytest.mark.parametrize("rel", ["onnx/weights.bin", "tokenizer.model", "coreml/encoder.mlpackage"])
def test_missing_file_is_named(bundle_copy: Path, rel: str) -> None:
    p = bundle_copy / rel
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    assert one_line(e).endswith(f"is missing {rel}")


def _point_tokenizer_at(target: str) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        m["tokenizer"] = target
    return change


def _point_decoder_at(target: str) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        m["backends"]["onnx"]["decoder"]["file"] = target
    return change


@pytest.mark.parametrize(("change", "says"), [
    (_point_tokenizer_at("/etc/passwd"), "is not a path inside the bundle"),
    (_point_tokenizer_at("../outside.model"), "leads out of the bundle"),
    (_point_decoder_at("onnx/../../outside.onnx"), "leads out of the bundle"),
])
def test_paths_that_leave_the_bundle_are_refused(bundle_copy: Path, change: Callable[[dict[str, Any]], None],
                                                  says: str) -> None:
    (bundle_copy.parent / "outside.model").write_bytes(b"x")  # the target exists: only its place is wrong
    (bundle_copy.parent / "outside.onnx").write_bytes(b"x")
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    assert says in one_line(e)


def test_a_link_out_of_the_bundle_is_refused(bundle_copy: Path) -> None:
    (bundle_copy.parent / "elsewhere.model").write_bytes((bundle_copy / "tokenizer.model").read_bytes())
    (bundle_copy / "tokenizer.model").unlink()
    (bundle_copy / "tokenizer.model").symlink_to(bundle_copy.parent / "elsewhere.model")
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_copy)
    assert "'tokenizer.model' leads out of the bundle" in one_line(e)


# ---------------------------------------------------------------- checksums (defect #7)

def test_load_bundle_hashes_nothing(bundle_copy: Path, hashed: list[Path]) -> None:
    corrupt(bundle_copy / "onnx" / "weights.bin")
    load_bundle(bundle_copy)  # parse + presence only: the damage is found by verify_files
    assert hashed == []


def test_directory_hash_streams_and_keeps_the_manifest_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders (.mlpackage) are hashed block by block, never read whole; digests match the exporter's."""
    def no_whole_reads(self: Path) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(Path, "read_bytes", no_whole_reads)
    files = json.loads((DEMO / "manifest.json").read_text())["files"]
    rel = "coreml/decoder_step.mlpackage"
    assert sha256_of(DEMO / rel) == files[rel]


def test_backend_files_are_its_own_and_the_shared_ones() -> None:
    b = load_bundle(DEMO)
    onnx, coreml = set(backend_files(b, "onnx")), set(backend_files(b, "coreml"))
    assert onnx & coreml == SHARED
    assert {f for f in onnx - SHARED if not f.startswith("onnx/")} == set()
    assert "onnx/weights.bin" in onnx  # external weights beside the graphs
    assert onnx | coreml == set(b.manifest["files"])


def test_corrupted_file_of_the_selected_backend_is_caught(bundle_copy: Path) -> None:
    corrupt(bundle_copy / "onnx" / "weights.bin")
    with pytest.raises(BundleError) as e:
        load_transcriber(bundle_copy, "onnx")
    msg = one_line(e)
    assert "checksum mismatch" in msg and "weights.bin" in msg


def test_corrupted_shared_file_is_caught_for_every_backend(bundle_copy: Path) -> None:
    corrupt(bundle_copy / "tokenizer.model")
    b = load_bundle(bundle_copy)
    for name in ("onnx", "coreml"):
        with pytest.raises(BundleError, match=r"checksum mismatch .*tokenizer\.model"):
            verify_files(b, name)


def test_other_backends_files_are_not_read(bundle_copy: Path, hashed: list[Path]) -> None:
    """A damaged Core ML file neither fails nor slows loading the ONNX backend: it is never read."""
    corrupt(bundle_copy / "coreml" / "encoder.mlpackage")
    load_transcriber(bundle_copy, "onnx")
    assert hashed and not any("coreml" in p.parts for p in hashed)
    with pytest.raises(BundleError, match=r"encoder\.mlpackage"):
        verify_files(load_bundle(bundle_copy), "coreml")


def test_second_start_hashes_nothing(bundle_copy: Path, hashed: list[Path], cache_home: Path) -> None:
    b = load_bundle(bundle_copy)
    first = verify_files(b, "onnx")
    assert sorted(first) == backend_files(b, "onnx") and len(hashed) == len(first)
    assert (cache_home / "cohere-transcribe" / "verified.json").is_file()
    hashed.clear()
    load_transcriber(bundle_copy, "onnx")  # a second start, through the public entry point
    assert hashed == []


def test_a_touched_file_is_hashed_again(bundle_copy: Path, hashed: list[Path]) -> None:
    b = load_bundle(bundle_copy)
    verify_files(b, "onnx")
    target = bundle_copy / "onnx" / "decoder_step.onnx"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    hashed.clear()
    assert verify_files(b, "onnx") == ["onnx/decoder_step.onnx"]
    assert hashed == [target.resolve()]


def test_damage_after_a_cached_verify_is_caught_when_the_file_changes(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    verify_files(b, "onnx")
    corrupt(bundle_copy / "onnx" / "weights.bin")  # a write: new mtime
    with pytest.raises(BundleError, match=r"weights\.bin"):
        verify_files(b, "onnx")


def test_force_hashes_everything_again(bundle_copy: Path, hashed: list[Path]) -> None:
    b = load_bundle(bundle_copy)
    verify_files(b, "onnx")
    hashed.clear()
    load_transcriber(bundle_copy, "onnx", verify=True)
    assert len(hashed) == len(backend_files(b, "onnx"))


def test_unwritable_cache_still_verifies(bundle_copy: Path, hashed: list[Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be created under a file
    b = load_bundle(bundle_copy)
    assert verify_files(b, "onnx") and verify_files(b, "onnx")  # hashed both times, no error
    corrupt(bundle_copy / "window.npy")
    with pytest.raises(BundleError, match=r"window\.npy"):
        verify_files(b, "onnx")


def test_malformed_cache_is_ignored(bundle_copy: Path, cache_home: Path) -> None:
    (cache_home / "cohere-transcribe").mkdir(parents=True)
    (cache_home / "cohere-transcribe" / "verified.json").write_text("{not json")
    b = load_bundle(bundle_copy)
    assert verify_files(b, "onnx")
    assert verify_files(b, "onnx") == []


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert checksums.cache_file() == tmp_path / "cohere-transcribe" / "verified.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(checksums.platform, "system", lambda: "Darwin")
    assert checksums.cache_file() == tmp_path / "Library" / "Caches" / "cohere-transcribe" / "verified.json"
    monkeypatch.setattr(checksums.platform, "system", lambda: "Linux")
    assert checksums.cache_file() == tmp_path / ".cache" / "cohere-transcribe" / "verified.json"
