"""Reading Core ML packages back with coremltools (Linux can read, not run, them): I/O and weight dtypes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

logging.getLogger("coremltools").setLevel(logging.ERROR)
import coremltools as ct  # noqa: E402

MIL = ct.proto.MIL_pb2
FT = ct.proto.FeatureTypes_pb2.ArrayFeatureType
DTYPE = {FT.FLOAT32: "float32", FT.FLOAT16: "float16", FT.INT32: "int32"}
BYTES = {"FLOAT16": 2, "FLOAT32": 4, "INT8": 1, "UINT8": 1, "INT32": 4}
CAPACITY = 266


def io_of(path: Path, function: str | None = None) -> tuple[dict, dict]:
    """(inputs, outputs) of a package, or of one function of a multifunction package."""
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    if function is not None:
        desc = next(f for f in desc.functions if f.name == function)

    def table(items) -> dict:
        return {i.name: (tuple(i.type.multiArrayType.shape), DTYPE[i.type.multiArrayType.dataType]) for i in items}

    return table(desc.input), table(desc.output)


def functions_of(path: Path) -> list[str]:
    """The function names of a multifunction package ([] for a single-function one)."""
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return [f.name for f in spec.description.functions]


def weight_bytes(path: Path, function: str = "main") -> dict[str, int]:
    """Bytes of the weights one function of the package references in its blob file, by MIL dtype."""
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions[function]
    out: dict[str, int] = {}

    def add(value) -> None:
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
