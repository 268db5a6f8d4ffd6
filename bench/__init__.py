"""Benchmarks of this checkout, each a module run from the repository root: `python -m bench.accuracy …`.

They import the runtime (daemon), the exporter and devtools (speech, the daemon in a subprocess), never tests/.
Results go to bench/results/*.json; `python -m bench.report` turns them into docs/benchmarks.md.
"""
