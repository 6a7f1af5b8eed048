"""Metrics of concept explanations (one module per family)."""
