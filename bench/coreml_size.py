"""The Core ML encoder's size on disk, one package per bucket vs one multifunction package, computed from weights.

    python -m bench.coreml_size [--bundle models/demo] [--checkpoint models/demo-checkpoint]

No conversion: the real 2B model does not fit in memory here, so its sizes are computed from the shapes of a
meta-device model (transformers' default CohereAsrConfig, the real one) with the exporter's INT8 recipe: tensors
of ≥ 2048 elements INT8 with one FP16 scale per block of 32 input weights, smaller ones FP16; each layer's
positional projection (relative_k_proj) is folded by the converter into a bucket-sized constant,
(heads·head_dim)×(2T−1) INT8 plus one FP16 scale per 32 of them. Weights shared by the buckets are stored once in the multifunction package; the
bucket-sized constants once per bucket. The same computation for the demo checkpoint is printed next to the
demo bundle's measured package, as a check of the method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.model.bundle import encoder_frames, load_bundle

THRESHOLD = 2048  # exporter.to_coreml.INT8_WEIGHT_THRESHOLD
BLOCK = 32  # exporter.to_coreml.INT8_BLOCK: weights per FP16 scale


def computed(cfg: object, buckets: tuple[int, ...]) -> tuple[int, dict[int, int]]:
    """(bytes of the weights every bucket shares, bytes of each bucket's own constants)."""
    import torch
    from transformers import CohereAsrForConditionalGeneration

    from exporter.wrappers import EncoderExport

    with torch.device("meta"):
        wrapper = EncoderExport(CohereAsrForConditionalGeneration(cfg))
    shared = 0
    for name, p in wrapper.named_parameters():
        if "relative_k_proj" in name:
            continue  # folded into the bucket-sized constants below
        shared += p.numel() + 2 * p.numel() // BLOCK if p.numel() >= THRESHOLD else 2 * p.numel()
    enc = cfg.encoder_config  # type: ignore[attr-defined]
    stages = (enc.subsampling_factor - 1).bit_length()
    width = enc.hidden_size
    own = {}
    for frames in buckets:
        positions = 2 * encoder_frames(frames, stages) - 1
        own[frames] = enc.num_hidden_layers * (width * positions + 2 * width * positions // BLOCK)
    return shared, own


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="models/demo")
    ap.add_argument("--checkpoint", default="models/demo-checkpoint")
    args = ap.parse_args()
    from transformers import CohereAsrConfig

    bundle = load_bundle(args.bundle)
    buckets = bundle.buckets
    package = bundle.backends["coreml"].encoders[buckets[-1]].path
    rows = [("demo (computed)", CohereAsrConfig.from_pretrained(args.checkpoint)),
            ("2B shape (computed)", CohereAsrConfig())]
    print(f"buckets {list(buckets)}; INT8 encoder (hybrid)")
    weights = sum(f.stat().st_size for f in package.rglob("*.bin"))
    print(f"demo (measured): one multifunction package {package.name}: {du(package) / 1e6:.2f} MB, of which "
          f"the weight file {weights / 1e6:.2f} MB (the rest: the program, {len(buckets)} functions)")
    for label, cfg in rows:
        shared, own = computed(cfg, buckets)
        before, after = len(buckets) * shared + sum(own.values()), shared + sum(own.values())
        print(f"{label}: shared weights {shared / 1e6:.2f} MB, bucket constants "
              f"{', '.join(f'{f}: {b / 1e6:.2f}' for f, b in own.items())} MB; "
              f"a package per bucket {before / 1e6:.2f} MB -> one package {after / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
