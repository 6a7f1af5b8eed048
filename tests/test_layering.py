"""The package layering the design states: ``reference/`` and ``opspec/`` never import ``ops/``
(ops → reference is the only edge between the twins), and neither ``export/`` nor ``metrics/``
reaches up into ``explainers/``. Checked in a fresh interpreter, by what importing each package
loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROGRAM = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package}.{{info.name}}")
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("pyconcepts.reference", "pyconcepts.ops"),
        ("pyconcepts.opspec", "pyconcepts.ops"),
        ("pyconcepts.opspec", "pyconcepts.reference"),
        ("pyconcepts.export", "pyconcepts.explainers"),
        ("pyconcepts.metrics", "pyconcepts.explainers"),  # the scoreboard sits above both
    ],
)
def test_a_package_does_not_import_the_layer_above(package: str, forbidden: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(package=package)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    loaded = json.loads(out.splitlines()[-1])
    assert not [m for m in loaded if m == forbidden or m.startswith(forbidden + ".")]
