"""The HTML report: one self-contained page (images embedded, no network, no script) of the
explanations, metrics, ground-truth scores and settings found in a results folder — the output
of ``pyconcepts demo`` or ``pyconcepts explain``. ``pyconcepts report RESULTS_DIR -o FILE``.

- :mod:`pyconcepts.report.collect`: read a results folder; :func:`save_explanation` writes an
  explanation with the images and settings the report shows.
- :mod:`pyconcepts.report.images`: de-normalised thumbnails, heatmap overlays, data URIs.
- :mod:`pyconcepts.report.html`: the page (plain string templating).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pyconcepts.report.collect import collect, load_explanation, save_explanation

__all__ = ["collect", "load_explanation", "save_explanation", "write_report"]


def write_report(
    results_dir: str | Path, out: Optional[str | Path] = None, title: str = "pyconcepts report"
) -> Path:
    """Render the results under ``results_dir`` to ``out`` (default
    ``results_dir/report.html``); returns the file's path."""
    from pyconcepts.report.html import render

    path = Path(out) if out is not None else Path(results_dir) / "report.html"
    page = render(collect(results_dir), title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
