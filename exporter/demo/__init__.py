"""Demo model: a tiny Cohere-architecture model trained on synthetic espeak-ng speech."""
