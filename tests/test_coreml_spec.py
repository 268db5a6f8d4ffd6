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
from coreml_checks import MIL, expected, io_of, weight_bytes  # noqa: E402


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
                        "--backends", "coreml", "--precision", precision], check=True, capture_output=True)
    return ckpt, out


@pytest.mark.parametrize("precision", ["hybrid", "fp16", "fp32"])
def test_io_matches_config_and_manifest(precision: str, wide) -> None:
    ckpt, bundles = wide
    b = bundles[precision]
    enc_in, enc_out, dec_in, dec_out = expected(ckpt, "float32" if precision == "fp32" else "float16")
    assert io_of(b / "coreml/encoder_3500.mlpackage") == (enc_in, enc_out)
    assert io_of(b / "coreml/decoder_step.mlpackage") == (dec_in, dec_out)
    m = json.loads((b / "manifest.json").read_text())["backends"]["coreml"]
    declared = {t["name"]: (tuple(t["shape"]), t["dtype"]) for g in (m["encoders"]["3500"], m["decoder"])
                for t in g["inputs"] + g["outputs"]}
    assert declared == {**enc_in, **enc_out, **dec_in, **dec_out} | {"cross_k": dec_in["cross_k"]}
    assert m["precision"] == precision and m["minimum_deployment_target"] == "macOS15"


def test_hybrid_encoder_int8_decoder_fp16(wide) -> None:
    _, bundles = wide
    enc = weight_bytes(bundles["hybrid"] / "coreml/encoder_3500.mlpackage")
    dec = weight_bytes(bundles["hybrid"] / "coreml/decoder_step.mlpackage")
    share = enc.get("INT8", 0) / sum(enc.values())
    print(f"hybrid encoder: {share:.1%} of weight bytes INT8 ({enc}); decoder {dec}")
    assert share >= 0.95
    assert set(dec) - {"INT32"} == {"FLOAT16"}  # INT32: index constants (positions), not weights
    assert "INT8" not in weight_bytes(bundles["fp16"] / "coreml/encoder_3500.mlpackage")
    assert set(weight_bytes(bundles["fp32"] / "coreml/decoder_step.mlpackage")) - {"INT32"} == {"FLOAT32"}


def test_encoder_mask_is_finite_in_fp16(wide) -> None:
    """The padding mask constant must survive FP16: -1e4, not float32 min (which becomes -inf → NaN)."""
    _, bundles = wide
    spec = ct.models.MLModel(str(bundles["fp16"] / "coreml/encoder_3500.mlpackage"), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
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
