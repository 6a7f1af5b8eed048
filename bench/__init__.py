"""Benchmarks: one module per op or explainer, runnable as ``python -m bench.<name>``."""
