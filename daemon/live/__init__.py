"""The live daemon: config, capture, the caption policy, the engine, messages, the server and the app that wires them.

The only package that imports asyncio, websockets or sounddevice.
"""
