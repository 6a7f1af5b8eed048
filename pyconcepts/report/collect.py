"""Gather what a results folder holds for the report: the demo's ``summary.json``, saved
explanations (``explanation.safetensors`` + ``manifest.json``, with the explained images and
the method's settings beside them), metric files and figures of each step.

Writing side: :func:`save_explanation` stores an explanation with what the report needs to
show it (the model inputs, the model's normalisation, the explainer's settings).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from pyconcepts.explanation import Explanation
from pyconcepts.persistence import load_file, save_file

INPUTS = "inputs.safetensors"
SETTINGS = "settings.json"
MAX_IMAGES = 8  # model inputs kept beside a saved explanation


@dataclass
class SavedExplanation:
    """One saved explanation and what it explained."""

    folder: Path
    explanation: Explanation
    images: Optional[torch.Tensor]  # the model inputs [B, 3, H, W], as normalised for it
    mean: Optional[list[float]]
    std: Optional[list[float]]
    settings: dict[str, Any]


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One step / method of the results: its summary, explanations, tables and figures."""

    name: str
    summary: dict[str, Any] = field(default_factory=dict)
    explanations: list[SavedExplanation] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


@dataclass
class Results:
    root: Path
    sections: list[Section]
    summary: dict[str, dict[str, Any]]


def save_explanation(
    folder: str | Path,
    explanation: Explanation,
    images: torch.Tensor,
    settings: dict[str, Any],
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    pngs: int = 0,
) -> Path:
    """``explanation.save(folder)`` plus the first images it explained (``inputs.safetensors``,
    with the model's ``mean``/``std`` so the report can undo the normalisation) and the
    explainer's ``settings`` (``settings.json``: method, model, constructor options)."""
    out = explanation.save(folder, pngs=pngs)
    kept = images[:MAX_IMAGES].detach().float().cpu()
    preprocess = {"mean": _floats(mean), "std": _floats(std)}
    save_file(out / INPUTS, {"images": kept}, "explanation-inputs", {"preprocess": preprocess})
    (out / SETTINGS).write_text(json.dumps(settings, indent=2, default=str))
    return out


def _floats(values: Optional[Sequence[float]]) -> Optional[list[float]]:
    return None if values is None else [float(v) for v in values]


def load_explanation(folder: str | Path) -> SavedExplanation:
    """Read back a folder written by :meth:`Explanation.save` (and :func:`save_explanation`)."""
    folder = Path(folder)
    tensors, documents = load_file(folder / "explanation.safetensors", "explanation")
    manifest = documents.get("manifest") or json.loads((folder / "manifest.json").read_text())
    explanation = Explanation(
        method=manifest["method"],
        layer=manifest["layer"],
        concept_names=list(manifest["concept_names"]),
        concept_scores=tensors["concept_scores"],
        logits=tensors["logits"],
        targets=tensors["targets"],
        class_names=list(manifest["class_names"]),
        heatmaps=tensors.get("heatmaps"),
        heatmap_concepts=tensors.get("heatmap_concepts"),
        class_maps=tensors.get("class_maps"),
        extras={k[len("extras.") :]: v for k, v in tensors.items() if k.startswith("extras.")},
    )
    images, preprocess = None, {}
    if (folder / INPUTS).is_file():
        inputs, docs = load_file(folder / INPUTS, "explanation-inputs")
        images, preprocess = inputs["images"], docs.get("preprocess", {})
    settings_file = folder / SETTINGS
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return SavedExplanation(
        folder, explanation, images, preprocess.get("mean"), preprocess.get("std"), settings
    )


def collect(root: str | Path) -> Results:
    """Everything the report shows from ``root``: a demo's output folder (``summary.json`` and one
    folder per step) or a folder written by ``pyconcepts explain`` (one saved explanation)."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such results folder")
    summary_file = base / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    names = list(summary) or sorted(p.name for p in base.iterdir() if p.is_dir())
    sections = [_section(base / name, name, summary.get(name, {})) for name in names]
    if (base / "explanation.safetensors").is_file():  # `pyconcepts explain` output
        sections.insert(0, _section(base, "explanation", {}, recurse=False))
    sections = [s for s in sections if s.summary or s.explanations or s.tables or s.figures]
    if not sections:
        raise FileNotFoundError(f"{base}: no summary.json, saved explanation or step folder")
    return Results(base, sections, summary)


def _section(folder: Path, name: str, summary: dict[str, Any], recurse: bool = True) -> Section:
    section = Section(name, summary)
    if not folder.is_dir():
        return section
    pattern = "**/explanation.safetensors" if recurse else "explanation.safetensors"
    explanation_dirs = sorted(p.parent for p in folder.glob(pattern))
    section.explanations = [load_explanation(d) for d in explanation_dirs]
    for path in sorted(folder.iterdir()):
        if path.suffix == ".md":
            section.tables += markdown_tables(path.read_text(), path.stem)
        elif path.suffix == ".json" and path.name not in ("manifest.json", SETTINGS):
            section.tables += json_tables(json.loads(path.read_text()), path.stem)
        elif path.suffix == ".png" and not (recurse is False and path.stem.startswith("image_")):
            section.figures.append(path)
    return section


def markdown_tables(text: str, title: str) -> list[Table]:
    """The pipe tables of a markdown text."""
    tables: list[Table] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            body = [r for r in block[1:] if not all(set(c) <= set(":- ") for c in r)]
            tables.append(Table(title, block[0], body))
        block = []
    return tables


def json_tables(doc: Any, title: str) -> list[Table]:
    """Tables of a metrics document: its scalar entries as one key/value table; entries that map
    the same names to scalars (per class, say) side by side in one table; entries that map names
    to mappings of scalars as a table each. Long lists and deeper structures stay in the file."""
    if not isinstance(doc, dict):
        return []
    tables: list[Table] = []
    scalars = [[k, fmt(v)] for k, v in doc.items() if _is_scalar(v)]
    if scalars:
        tables.append(Table(title, ["metric", "value"], scalars))
    by_names: dict[tuple[str, ...], list[str]] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value and all(_is_scalar(v) for v in value.values()):
            by_names.setdefault(tuple(value), []).append(key)
    for names, keys in by_names.items():
        rows = [[name, *(fmt(doc[k][name]) for k in keys)] for name in names]
        tables.append(Table(f"{title}: {', '.join(keys)}", ["", *keys], rows))
    for key, value in doc.items():
        if not isinstance(value, dict) or not value:
            continue
        if all(
            isinstance(v, dict) and all(_is_scalar(x) for x in v.values()) for v in value.values()
        ):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            rows = [[k, *(fmt(v.get(c)) for c in columns)] for k, v in value.items()]
            tables.append(Table(f"{title}: {key}", ["", *columns], rows))
    return tables


def _is_scalar(value: Any) -> bool:
    """A value that fits a table cell (long strings, such as printed tensors, do not)."""
    if isinstance(value, str):
        return len(value) <= 80
    return value is None or isinstance(value, (bool, int, float))


def fmt(value: Any) -> str:
    """A metric value as short text (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
