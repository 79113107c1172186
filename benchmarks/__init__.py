"""session-broker's benchmark suite; the entry point is ``benchmarks/run.py``."""
