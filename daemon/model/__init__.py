"""The model: bundle, features, tokenizer, backends, decoding, the transcriber — samples in, text out.

Imports no asyncio, websockets or sounddevice (a test checks it).
"""
