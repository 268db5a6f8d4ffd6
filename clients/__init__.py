"""Clients of the daemon's websocket protocol (they depend only on the wire format, docs/protocol.md)."""
