"""Load a Cohere Transcribe checkpoint with transformers: a hub id (with the user's login) or a local folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm


@dataclass
class Checkpoint:
    """A loaded model, its tokenizer file, its feature extractor, and where it came from."""

    model: Any  # CohereAsrForConditionalGeneration, eval mode, float32, eager attention
    tokenizer_path: Path
    feature_extractor: Any  # CohereAsrFeatureExtractor (the reference's filterbank and window)
    source: str


def load_checkpoint(checkpoint: str) -> Checkpoint:
    """Load a `save_pretrained` folder holding tokenizer.model, or a hub id (downloads need an accepted licence).

    Raises:
        FileNotFoundError: when a local folder lacks tokenizer.model.
    """
    import torch
    from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

    local = Path(checkpoint)
    if local.is_dir():
        root = local
    else:
        from huggingface_hub import snapshot_download

        tqdm.write(f"downloading {checkpoint} (gated: needs an accepted licence and `hf auth login`)")
        root = Path(snapshot_download(checkpoint, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    tok = root / "tokenizer.model"
    if not tok.is_file():
        raise FileNotFoundError(f"{root} has no tokenizer.model (the SentencePiece model the daemon needs)")
    model = CohereAsrForConditionalGeneration.from_pretrained(
        root, dtype=torch.float32, attn_implementation="eager").eval()
    if (root / "preprocessor_config.json").is_file():
        fe = CohereAsrFeatureExtractor.from_pretrained(root)
    else:
        fe = CohereAsrFeatureExtractor()
    return Checkpoint(model, tok, fe, str(checkpoint))
