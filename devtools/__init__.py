"""Tools of this checkout that the tests and the benchmarks share (not part of the installed runtime).

- `devtools.speech`: speech from espeak-ng (single sentences, exact-length clips, programs with pauses).
- `devtools.daemon_process`: `python -m daemon serve` in a subprocess, a websocket collector, WER.
"""
