"""Exporter: a Cohere Transcribe checkpoint (transformers) → a bundle of ONNX and Core ML files the daemon loads."""
