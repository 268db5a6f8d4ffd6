"""Core ML files read back with coremltools on Linux: names, shapes, dtypes, INT8 encoder weights, FP16 decoder."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

MIL = ct.proto.MIL_pb2
FT = ct.proto.FeatureTypes_pb2.ArrayFeatureType
DTYPE = {FT.FLOAT32: "float32", FT.FLOAT16: "float16", FT.INT32: "int32"}
BYTES = {"FLOAT16": 2, "FLOAT32": 4, "INT8": 1, "UINT8": 1, "INT32": 4}
CAPACITY = 266


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, dict[str, Path]]:  # noqa: ANN001
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


def io_of(path: Path) -> tuple[dict, dict]:
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def table(items) -> dict:  # noqa: ANN001
        return {i.name: (tuple(i.type.multiArrayType.shape), DTYPE[i.type.multiArrayType.dataType]) for i in items}

    return table(spec.description.input), table(spec.description.output)


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the weights stored in the package's blob file, by MIL dtype."""
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    out: dict[str, int] = {}

    def add(value) -> None:  # noqa: ANN001 - a MIL Value
        if value.WhichOneof("value") == "blobFileValue":
            t = value.type.tensorType
            name = MIL.DataType.Name(t.dataType)
            out[name] = out.get(name, 0) + math.prod(d.constant.size for d in t.dimensions) * BYTES[name]

    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const":
            add(op.attributes["val"])
        for arg in op.inputs.values():  # constexpr ops hold their quantized data inline
            for a in arg.arguments:
                if a.WhichOneof("binding") == "value":
                    add(a.value)
    return out


def expected(ckpt: Path, state: str) -> tuple[dict, dict, dict, dict]:
    """Encoder and decoder I/O derived here from config.json alone."""
    cfg = json.loads((ckpt / "config.json").read_text())
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // heads
    t = math.ceil(3500 / 8)  # 438
    enc_in = {"input_features": ((1, 128, 3500), "float32"), "feature_length": ((1,), "int32")}
    enc_out = {"encoder_hidden": ((1, t, cfg["hidden_size"]), state),
               "cross_k": ((layers, 1, heads, t, hd), state), "cross_v": ((layers, 1, heads, t, hd), state)}
    cache, cross = (layers, 1, heads, CAPACITY, hd), (layers, 1, heads, t, hd)
    dec_in = {"input_id": ((1, 1), "int32"), "position": ((1,), "int32"), "self_k": (cache, state),
              "self_v": (cache, state), "self_mask": ((1, 1, 1, CAPACITY), state), "cross_k": (cross, state),
              "cross_v": (cross, state), "cross_mask": ((1, 1, 1, t), state)}
    dec_out = {"logits": ((1, cfg["vocab_size"]), "float32"), "new_k": ((layers, 1, heads, 1, hd), state),
               "new_v": ((layers, 1, heads, 1, hd), state)}
    return enc_in, enc_out, dec_in, dec_out


@pytest.mark.parametrize("precision", ["hybrid", "fp16", "fp32"])
def test_io_matches_config_and_manifest(precision: str, wide) -> None:  # noqa: ANN001
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


def test_hybrid_encoder_int8_decoder_fp16(wide) -> None:  # noqa: ANN001
    _, bundles = wide
    enc = weight_bytes(bundles["hybrid"] / "coreml/encoder_3500.mlpackage")
    dec = weight_bytes(bundles["hybrid"] / "coreml/decoder_step.mlpackage")
    share = enc.get("INT8", 0) / sum(enc.values())
    print(f"hybrid encoder: {share:.1%} of weight bytes INT8 ({enc}); decoder {dec}")
    assert share >= 0.95
    assert set(dec) - {"INT32"} == {"FLOAT16"}  # INT32: index constants (positions), not weights
    assert "INT8" not in weight_bytes(bundles["fp16"] / "coreml/encoder_3500.mlpackage")
    assert set(weight_bytes(bundles["fp32"] / "coreml/decoder_step.mlpackage")) - {"INT32"} == {"FLOAT32"}


def test_encoder_mask_is_finite_in_fp16(wide) -> None:  # noqa: ANN001
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
