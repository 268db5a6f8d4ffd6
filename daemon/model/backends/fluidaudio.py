"""FluidAudio's decoder contract behind the Backend interface, so the one greedy loop (decode.py) drives it.

The loop owns stacked caches (n_layers, 1, H, C, D), an additive self mask of C slots and the cross mask, and
expects logits plus the new K/V row back; FluidInference's files want per-layer caches and return them whole.
This adapter translates each step (reference/coreml-prior-art.md §2-3):

  loop feed                       FluidAudio input
  input_id (1, 1)             →   input_id (1, 1) int32
  position (1,)               →   position_id (1, 1) int32
  encoder_hidden (1, 438, d)  →   encoder_hidden_states (the same every step; cross K/V recomputed inside)
  cross_mask (1, 1, 1, 438)   →   cross_attention_mask (additive: 0 valid, −1e4 padded, ceil(L/8) valid frames)
  self_mask (1, 1, 1, C)      →   attention_mask: v2 the same (0 up to pos, −1e4 after); v1 zeros (1, 1, 1, pos+1)
  self_k[i], self_v[i]        →   k_cache_i, v_cache_i (1, H, C, D)
and back: logits (1, V) raw → logits; k_cache_i_out[:, :, pos] → new_k[i] (the loop writes that row into its
cache, which equals taking the whole _out cache: the step changes no other slot).
The encoder returns hidden_states only (EncoderOutput.cross_k None).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.model.bundle import Bundle

from .base import Array, Backend, EncoderOutput, _run


def backend_class(bundle: Bundle) -> type[Backend]:
    """Backend for our decoder contract, this adapter for FluidInference's files (fluidaudio-v1, -v2)."""
    return FluidAudioBackend if bundle.contract.startswith("fluidaudio") else Backend


class FluidAudioBackend(Backend):
    """A Backend over FluidInference's encoder and cache-external decoder (contract fluidaudio-v1 or -v2)."""

    CACHE_INPUT = "k_cache_0"  # FluidAudio reads the cache dtype from the model description, so do we

    @property
    def version(self) -> int:
        """1 or 2: the attention-mask form of the decoder."""
        return 1 if self.bundle.contract == "fluidaudio-v1" else 2

    def encode(self, features: npt.NDArray[np.float32], n_valid: int) -> EncoderOutput:
        """(1, n_mels, 3500) features whose first n_valid frames are audio → hidden_states (1, 438, d)."""
        frames = int(features.shape[-1])
        out = _run(self.encoder_session(frames), self.spec.encoders[frames],
                   {"input_features": features, "feature_length": np.array([n_valid])})
        return EncoderOutput(out["hidden_states"], None, None)

    def decoder_step(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """One step with the loop's feeds; returns {"logits", "new_k", "new_v"} as the loop's contract does."""
        pos = int(np.asarray(feeds["position"]).reshape(-1)[0])
        attention = (np.zeros((1, 1, 1, pos + 1), np.float32) if self.version == 1
                     else feeds["self_mask"])
        fluid: dict[str, Array] = {
            "input_id": np.asarray(feeds["input_id"]).reshape(1, 1),
            "position_id": np.array([[pos]]),
            "encoder_hidden_states": feeds["encoder_hidden"],
            "cross_attention_mask": feeds["cross_mask"],
            "attention_mask": attention,
        }
        self_k, self_v = feeds["self_k"], feeds["self_v"]
        layers = range(self.bundle.n_layers)
        for i in layers:
            fluid[f"k_cache_{i}"] = self_k[i]
            fluid[f"v_cache_{i}"] = self_v[i]
        out = _run(self.decoder_session, self.spec.decoder, fluid)
        row = slice(pos, pos + 1)
        new_k = np.stack([out[f"k_cache_{i}_out"][:, :, row] for i in layers])  # (L, 1, H, 1, D)
        new_v = np.stack([out[f"v_cache_{i}_out"][:, :, row] for i in layers])
        return {"logits": out["logits"], "new_k": new_k, "new_v": new_v}
