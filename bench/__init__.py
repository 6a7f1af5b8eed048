"""Side-by-side benchmarks of pyconcepts against existing tools: ``python -m bench`` runs all,
``python -m bench.<name>`` one (results in ``bench/results/``)."""
