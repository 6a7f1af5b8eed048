"""``pyconcepts demo``: the main job on the embedded default (the concept world).

The demo runs a sequence of steps; each step is a module of this package exposing
``run(ctx: DemoContext) -> dict`` that writes its artefacts under ``ctx.step_dir(name)`` and
returns a small JSON-able summary. A failing step is reported and the others still run; the
demo then exits non-zero.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pyconcepts.data.concept_world import ConceptWorld, train_test
from pyconcepts.explanation import Explanation

STEPS = ("world", "zoo", "concept_maps", "mace", "srae", "afi", "pattern_mining", "ibd")


@dataclass
class DemoContext:
    """What every demo step gets: output folder, data, models (loaded once) and options."""

    out: Path
    progress: bool = True
    n_train: int = 2000
    n_test: int = 500
    _worlds: Optional[tuple[ConceptWorld, ConceptWorld]] = None
    _models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def train(self) -> ConceptWorld:
        return self._pair()[0]

    @property
    def test(self) -> ConceptWorld:
        return self._pair()[1]

    def _pair(self) -> tuple[ConceptWorld, ConceptWorld]:
        if self._worlds is None:
            self._worlds = train_test(self.n_train, self.n_test, seed=123)
        return self._worlds

    def model(self, name: str) -> nn.Module:
        """A trained zoo model (trained and cached on first use)."""
        if name not in self._models:
            from pyconcepts.models import zoo

            self._models[name] = zoo.load(name, progress=self.progress)
        return self._models[name]

    def step_dir(self, name: str) -> Path:
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save_explanation(
        self,
        step: str,
        explainer: Any,
        model_name: str,
        images: torch.Tensor,
        explanation: Optional[Explanation] = None,
    ) -> Path:
        """Save the explanation of ``images`` (computed here unless given), the images and the
        explainer's settings under ``<step>/explanation`` for the report."""
        from pyconcepts.report import save_explanation

        config = explainer.get_config()
        settings = {"method": explainer.method, "model": model_name, "config": config}
        if explanation is None:
            explanation = explainer.explain(images)
        return save_explanation(self.step_dir(step) / "explanation", explanation, images, settings)


def run_demo(
    out: Path, steps: tuple[str, ...] = STEPS, progress: bool = True, log: Any = print
) -> dict[str, dict[str, Any]]:
    """Run the demo steps, write ``summary.json`` under ``out``; returns the summaries."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"steps: unknown {unknown}; expected some of {list(STEPS)}")
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, progress=progress)
    results: dict[str, dict[str, Any]] = {}
    for name in steps:
        start = time.perf_counter()
        log(f"[demo] {name} ...")
        try:
            module = importlib.import_module(f"pyconcepts.demo.{name}")
            summary = dict(module.run(ctx))
            summary["status"] = "ok"
        except Exception as exc:  # a broken step must not hide the others' results
            summary = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            (ctx.step_dir(name) / "error.txt").write_text(traceback.format_exc())
        summary["seconds"] = round(time.perf_counter() - start, 2)
        results[name] = summary
        log(f"[demo] {name}: {_one_line(summary)}")
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _one_line(summary: dict[str, Any]) -> str:
    items = [f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str))]
    text = ", ".join(items)
    return text if len(text) < 300 else text[:297] + "..."
