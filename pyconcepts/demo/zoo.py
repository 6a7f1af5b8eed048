"""Demo step: load (or train and cache) the zoo models and measure their test accuracy."""

from __future__ import annotations

from typing import Any

from pyconcepts.demo import DemoContext
from pyconcepts.models.zoo import ZOO, accuracy


def run(ctx: DemoContext) -> dict[str, Any]:
    images, labels = ctx.test.tensors()
    return {
        f"{name}_test_accuracy": round(accuracy(ctx.model(name), images, labels), 4) for name in ZOO
    }
