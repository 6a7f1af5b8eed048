"""Side-by-side benchmarks of pyconcepts against existing tools (python -m bench.<op>)."""
