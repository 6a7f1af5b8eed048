"""Side-by-side benchmarks: ``python -m bench.<op>`` (results in ``bench/results/``)."""
