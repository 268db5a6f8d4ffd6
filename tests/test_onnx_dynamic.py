"""The ONNX bundle without buckets: one encoder with a dynamic frame axis, the decoder's cross axis following
the window, checksums over the external weights, and bundles with per-bucket encoders still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from daemon.model.bundle import FORMAT_VERSION, encoder_frames, load_bundle
from daemon.model.decode import DecodeOptions
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip

TOL = 1e-4  # log-probabilities: padded and masked frames vs none (the parity tests' tolerance)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return speech_clip(5.0, 7)  # 5 s: 500 feature frames, 63 encoder frames


class Spy:
    """Wraps a session: the shapes of every call's inputs."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def run(self, feeds: dict) -> dict:
        self.calls.append({k: tuple(v.shape) for k, v in feeds.items()})
        return self.inner.run(feeds)  # type: ignore[attr-defined]


def cross_length(call: dict[str, tuple[int, ...]]) -> int:
    """The cross length of one decoder call: every cross K/V input (stacked or per layer) has the mask's."""
    lengths = {shape[-2] for name, shape in call.items() if name.startswith(("cross_k", "cross_v"))}
    assert lengths == {call["cross_mask"][3]}
    return call["cross_mask"][3]


def spied(tr):  # -> (encoder spy, decoder spy) on tr's backend
    enc = Spy(tr.backend.encoder_session(tr.bundle.window_frames))
    tr.backend._encoders = {tr.bundle.window_frames: enc}
    dec = Spy(tr.backend.decoder_session)
    tr.backend.decoder_session = dec
    tr.backend._prefill_session = None  # a prefill call goes through the spied step session too
    return enc, dec


def test_the_onnx_files_are_one_encoder_one_decoder_and_their_weights(tiny_bundles) -> None:
    root = tiny_bundles["a"]
    m = json.loads((root / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION == 3
    onnx_be = m["backends"]["onnx"]
    assert list(onnx_be["encoders"]) == ["3500"]  # keyed by the full window: any length up to it
    enc = onnx_be["encoders"]["3500"]
    assert enc["file"] == "onnx/encoder.onnx"
    shapes = {t["name"]: t["shape"] for t in (*enc["inputs"], *enc["outputs"])}
    assert shapes["input_features"][-1] == -1 and shapes["encoder_hidden"][1] == -1
    assert shapes["cross_k"][3] == shapes["cross_v"][3] == -1
    dec = {t["name"]: t["shape"] for t in onnx_be["decoder"]["inputs"]}
    cross = [shape for name, shape in dec.items() if name.startswith(("cross_k", "cross_v"))]
    assert cross and all(shape[-2] == -1 for shape in cross) and dec["cross_mask"][3] == -1
    cache = [shape for name, shape in dec.items() if name.startswith(("self_k", "self_v"))]
    assert cache and all(shape[-2] == m["decoder"]["cache_capacity"] for shape in cache)  # the cache stays fixed
    assert sorted(m["backends"]["coreml"]["encoders"]) == ["1000", "3500"]  # Core ML keeps its buckets
    assert sorted(p.name for p in (root / "onnx").iterdir()) == ["decoder_step.onnx", "encoder.onnx", "weights.bin"]


def test_the_checksums_cover_every_external_data_file(tiny_bundles) -> None:
    """Each ONNX graph's initializers live in weights.bin (beside it, listed with its SHA-256 in the manifest);
    nothing a graph reads is left out of the checksums."""
    root = tiny_bundles["a"]
    listed = json.loads((root / "manifest.json").read_text())["files"]
    external = 0
    for graph in (root / "onnx").glob("*.onnx"):
        model = onnx.load(str(graph), load_external_data=False)
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                loc = next(e.value for e in init.external_data if e.key == "location")
                assert f"onnx/{loc}" in listed
                external += 1
    assert external > 20  # the weights are external (not inline, where the graph's checksum covers them)
    assert "onnx/weights.bin" in listed and len(listed["onnx/weights.bin"]) == 64


def test_a_window_runs_at_its_own_length(tiny_bundles, clip) -> None:
    """A 5 s window: the encoder gets its 500 frames (no padding) and the decoder attends over its 63 encoder
    frames, not the full window's 438."""
    tr = load_transcriber(str(tiny_bundles["a"]), "onnx", dither=0.0)
    enc, dec = spied(tr)
    tr.transcribe_window(clip, DecodeOptions(max_new_tokens=4, ignore_eos=True))
    assert [c["input_features"] for c in enc.calls] == [(1, 128, 500)]
    assert {cross_length(c) for c in dec.calls} == {encoder_frames(500, 3)} == {63}
    assert set(tr.backend._encoders) == {3500}  # one session for every length


@pytest.mark.parametrize("preset", ["a", "b"])
def test_own_length_and_padded_to_the_full_window_agree(preset, tiny_bundles) -> None:
    """The same clips at their own length (cross 63…) and padded to 3500 frames with the cross K/V padded to
    438 and masked (the daemon before dynamic axes): identical tokens, log-probabilities within 1e-4."""
    tr = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    b = tr.bundle
    padded = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    padded.backend.input_frames = lambda n: b.window_frames  # type: ignore[method-assign]
    padded.backend.cross_length = lambda t: b.cross_frames  # type: ignore[method-assign]
    enc, dec = spied(padded)
    opts = DecodeOptions(max_new_tokens=12, ignore_eos=True)
    for seconds, seed in ((1.3, 1), (5.0, 2), (12.7, 3)):
        x = speech_clip(seconds, seed)
        a, p = tr.transcribe_window(x, opts)[1], padded.transcribe_window(x, opts)[1]
        assert a.tokens == p.tokens
        assert np.abs(np.subtract(a.logprobs, p.logprobs)).max() <= TOL
    assert {c["input_features"][-1] for c in enc.calls} == {3500}  # the padded view really padded
    assert {cross_length(c) for c in dec.calls} == {438}


def static_manifest(root: Path, dst: Path) -> Path:
    """A copy of the bundle whose manifest is format 2: an ONNX encoder entry per bucket with fixed shapes and
    a fixed cross length, as bundles exported before dynamic axes declare them (the graph file itself takes
    any length, so the copy runs)."""
    shutil.copytree(root, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["format_version"] = 2
    be = m["backends"]["onnx"]
    (graph,) = be["encoders"].values()
    stages = m["model"]["subsampling_stages"]

    def fixed(tensors: list[dict], frames: int, cross: int) -> list[dict]:
        def size(name: str) -> int:  # the frame axis of the features, else the encoder frames (cross_k_3 ...)
            return frames if name == "input_features" else cross

        return [{**t, "shape": [size(t["name"]) if d == -1 else d for d in t["shape"]]} for t in tensors]

    be["encoders"] = {str(f): {**graph, "inputs": fixed(graph["inputs"], f, encoder_frames(f, stages)),
                               "outputs": fixed(graph["outputs"], f, encoder_frames(f, stages))}
                      for f in m["encoder"]["buckets"]}
    cross = m["decoder"]["cross_frames"]
    be["decoder"] = {**be["decoder"], "inputs": fixed(be["decoder"]["inputs"], 0, cross)}
    be.pop("prefill", None)  # bundles from before the prefill have none
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_a_bundle_with_an_encoder_per_bucket_is_still_read(tiny_bundles, clip, tmp_path) -> None:
    """Format 2 (fixed shapes, an encoder per bucket, fixed cross length): the window is padded to its bucket
    and the cross K/V to the full window, and the result is the dynamic bundle's."""
    old = load_bundle(static_manifest(tiny_bundles["a"], tmp_path / "v2"))
    assert old.backends["onnx"].dynamic_encoder is None and sorted(old.backends["onnx"].encoders) == [1000, 3500]
    tr = load_transcriber(old, "onnx", dither=0.0)
    spy = Spy(tr.backend.encoder_session(1000))
    tr.backend._encoders = {1000: spy}
    dec = Spy(tr.backend.decoder_session)
    tr.backend.decoder_session = dec
    opts = DecodeOptions(max_new_tokens=12, ignore_eos=True)
    got = tr.transcribe_window(clip, opts)[1]
    assert [c["input_features"] for c in spy.calls] == [(1, 128, 1000)]  # the 1000-frame bucket
    assert {cross_length(c) for c in dec.calls} == {438}
    want = load_transcriber(str(tiny_bundles["a"]), "onnx", dither=0.0).transcribe_window(clip, opts)[1]
    assert got.tokens == want.tokens
    assert np.abs(np.subtract(got.logprobs, want.logprobs)).max() <= TOL


def test_a_window_longer_than_the_model_is_one_clear_error(tiny_bundles) -> None:
    from daemon.errors import AudioError, BackendError

    tr = load_transcriber(str(tiny_bundles["a"]), "onnx", dither=0.0)
    with pytest.raises(AudioError, match="longer than the model's 3500"):
        tr.pick_bucket(3501)
    with pytest.raises(BackendError, match="longer than the model's 3500"):
        tr.backend.encode(np.zeros((1, 128, 3600), np.float32), 3600)
