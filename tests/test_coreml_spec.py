"""Core ML files read back with coremltools on Linux: names, shapes, dtypes, INT8 encoder weights, FP16 decoder."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402
from coreml_checks import MIL, expected, functions_of, io_of, weight_bytes  # noqa: E402

from exporter.to_coreml import INT8_BLOCK  # noqa: E402

ENCODER = "coreml/encoder.mlpackage"


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A wider tiny checkpoint exported in each precision (Core ML only)."""
    from exporter.tiny import build_tiny

    root = tmp_path_factory.mktemp("coreml")
    ckpt = build_tiny(root / "ckpt", preset="wide")
    out = {}
    for precision in ("hybrid", "fp16", "fp32"):
        out[precision] = root / precision
        subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(out[precision]),
                        "--backends", "coreml", "--precision", precision, "--buckets", "1000,3500"],
                       check=True, capture_output=True)
    return ckpt, out


@pytest.mark.parametrize("precision", ["hybrid", "fp16", "fp32"])
def test_io_matches_config_and_manifest(precision: str, wide) -> None:
    ckpt, bundles = wide
    b = bundles[precision]
    enc_in, enc_out, dec_in, dec_out = expected(ckpt, "float32" if precision == "fp32" else "float16")
    assert io_of(b / ENCODER, "encoder_3500") == (enc_in, enc_out)
    decoder = b / "coreml/decoder_step.mlpackage"  # functions decoder_step (default) and prefill (the prompt)
    assert functions_of(decoder) == ["decoder_step", "prefill"]
    assert io_of(decoder, "decoder_step") == (dec_in, dec_out)
    m = json.loads((b / "manifest.json").read_text())["backends"]["coreml"]
    declared = {t["name"]: (tuple(t["shape"]), t["dtype"]) for g in (m["encoders"]["3500"], m["decoder"])
                for t in g["inputs"] + g["outputs"]}
    assert declared == {**enc_in, **enc_out, **dec_in, **dec_out} | {"cross_k": dec_in["cross_k"]}
    assert m["precision"] == precision and m["minimum_deployment_target"] == "macOS15"
    for frames, g in m["encoders"].items():  # each bucket: its own function of the one package, as declared
        assert (g["file"], g["function"]) == (ENCODER, f"encoder_{frames}")
        assert io_of(b / ENCODER, g["function"]) == tuple(
            {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in g[k]} for k in ("inputs", "outputs"))
    assert (m["decoder"]["function"], m["prefill"]["function"]) == ("decoder_step", "prefill")
    assert io_of(decoder, "prefill") == tuple(
        {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in m["prefill"][k]} for k in ("inputs", "outputs"))
    assert m["prefill"]["inputs"][0] == {"name": "input_id", "shape": [1, 10], "dtype": "int32"}


def test_encoder_is_one_multifunction_package_with_weights_once(wide) -> None:
    """One package, a function per bucket, default the full window; its weight file holds one copy of the
    encoder (less than the two single-bucket packages together)."""
    _, bundles = wide
    b = bundles["hybrid"]
    files = json.loads((b / "manifest.json").read_text())["files"]
    assert sorted(f for f in files if f.startswith("coreml/")) == ["coreml/decoder_step.mlpackage", ENCODER]
    assert sorted(p.name for p in (b / "coreml").iterdir()) == ["decoder_step.mlpackage", "encoder.mlpackage"]
    assert functions_of(b / ENCODER) == ["encoder_1000", "encoder_3500"]
    spec = ct.models.MLModel(str(b / ENCODER), skip_model_load=True).get_spec()
    assert spec.description.defaultFunctionName == "encoder_3500"
    assert spec.specificationVersion >= 9  # iOS 18 / macOS 15: multifunction programs
    one = sum(weight_bytes(b / ENCODER, "encoder_3500").values())
    blob = sum(f.stat().st_size for f in (b / ENCODER).rglob("*.bin"))
    print(f"encoder weights: one function {one} B, package weight file {blob} B")
    assert blob < 1.25 * one  # stored once (two copies would be ≥ 2×)


def test_hybrid_encoder_int8_decoder_fp16(wide) -> None:
    _, bundles = wide
    enc = weight_bytes(bundles["hybrid"] / ENCODER, "encoder_3500")
    dec = weight_bytes(bundles["hybrid"] / "coreml/decoder_step.mlpackage", "decoder_step")
    share = enc.get("INT8", 0) * (1 + 2 / INT8_BLOCK) / sum(enc.values())  # INT8 weights with their FP16 scales
    print(f"hybrid encoder: {share:.1%} of weight bytes INT8 ({enc}); decoder {dec}")
    assert share >= 0.95
    assert set(dec) - {"INT32"} == {"FLOAT16"}  # INT32: index constants (positions), not weights
    assert "INT8" not in weight_bytes(bundles["fp16"] / ENCODER, "encoder_1000")
    assert set(weight_bytes(bundles["fp32"] / "coreml/decoder_step.mlpackage", "prefill")) - {"INT32"} == {"FLOAT32"}


def test_encoder_mask_is_finite_in_fp16(wide) -> None:
    """The padding mask constant must survive FP16: -1e4, not float32 min (which becomes -inf → NaN)."""
    _, bundles = wide
    spec = ct.models.MLModel(str(bundles["fp16"] / ENCODER), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["encoder_3500"]
    values: list[float] = []
    for op in fn.block_specializations[fn.opset].operations:
        v = op.attributes["val"] if op.type == "const" else None
        if v is not None and v.WhichOneof("value") == "immediateValue":
            t = v.immediateValue.tensor
            values += list(t.floats.values)
            if t.WhichOneof("value") == "bytes" and v.type.tensorType.dataType == MIL.DataType.Value("FLOAT16"):
                values += np.frombuffer(t.bytes.values, np.float16).astype(float).tolist()
    assert -1e4 in values
    assert all(np.isfinite(values)) and max(abs(x) for x in values) <= 65504
