"""Render collected results as one self-contained HTML page (inline CSS, images as data URIs,
no script, no network) that any browser opens from disk and a mail client can carry."""

from __future__ import annotations

import datetime as _dt
import html
from typing import Any

from pyconcepts.report.collect import Results, SavedExplanation, Section, Table, fmt
from pyconcepts.report.images import array_uri, file_uri, heat_rgb, to_rgb

EXAMPLES = 4  # images shown per saved explanation
MAPS = 4  # heatmaps shown per image
BARS = 8  # concept-score bars per image
NAMES = 80  # concept names listed per method before "… and N more"
FOLD_ROWS = 12  # longer tables start folded

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;
color:#1d2330;background:#fff}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #d8dde8;padding-bottom:4px;margin-top:34px}
h3{margin:20px 0 8px}nav a{margin-right:12px}.meta{color:#5a6478}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #d8dde8;padding:3px 8px;text-align:left}th{background:#f1f4f9}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.chips span{display:inline-block;background:#eef2fa;border-radius:4px;padding:1px 6px;margin:2px;
font-size:12px}.example{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap;
border:1px solid #e3e7ef;border-radius:6px;padding:10px;margin:10px 0}
figure{margin:0;text-align:center;font-size:11px;max-width:140px}figure img{display:block;
width:128px;height:128px;image-rendering:pixelated}.bars{min-width:280px;font-size:12px}
.bar{display:flex;align-items:center;gap:6px;margin:2px 0}.bar .name{width:200px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.bar .track{width:120px;background:#f1f4f9;height:10px}
.bar .fill{height:10px;background:#3b6fd8}.bar .neg{background:#d8563b}
details{margin:10px 0}.figures img{max-width:100%;border:1px solid #e3e7ef;margin:6px 0}
.error{color:#b3261e}
"""


def render(results: Results, title: str = "pyconcepts report") -> str:
    """The whole page for ``results`` (see :func:`pyconcepts.report.collect.collect`)."""
    from pyconcepts import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    scoreboard = _scoreboard(results)
    links = [("model-and-data", "model and data")] + (
        [("scoreboard", "scoreboard")] if scoreboard else []
    )
    links += [(_id(s.name), s.name) for s in results.sections]
    nav = " ".join(f'<a href="#{anchor}">{_e(text)}</a>' for anchor, text in links)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">pyconcepts {_e(__version__)} · {now} · from {_e(str(results.root))}</p>',
        f"<nav>{nav}</nav>",
        _model_and_data(results),
        scoreboard,
        *(_section(s) for s in results.sections),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _model_and_data(results: Results) -> str:
    rows: list[list[str]] = []
    world = results.summary.get("world", {})
    for key in ("images", "classes", "concepts"):
        if key in world:
            rows.append([f"concept world {key}", fmt(world[key])])
    for key, value in results.summary.get("zoo", {}).items():
        if key.endswith("_test_accuracy"):
            rows.append([f"{key[: -len('_test_accuracy')]} test accuracy", fmt(value)])
    for s in results.sections:
        for saved in s.explanations:
            e, settings = saved.explanation, saved.settings
            rows.append([
                f"{s.name}: {e.method}",
                f"model {settings.get('model', '?')}, layer {e.layer}, {len(e.class_names)} "
                f"classes, {len(e.concept_names)} concepts, {len(e)} images explained"
                + (f", images normalised with mean {saved.mean} std {saved.std}"
                   if saved.mean or saved.std else ""),
            ])  # fmt: skip
    samples = [f for s in results.sections if s.name == "world" for f in s.figures]
    pictures = "".join(f'<img alt="{_e(f.name)}" src="{file_uri(f)}">' for f in samples)
    return (
        '<h2 id="model-and-data">Model and data</h2>'
        + _table(Table("", ["", ""], rows), header=False)
        + (f'<div class="figures">{pictures}</div>' if pictures else "")
    )


def _scoreboard(results: Results) -> str:
    """Ground-truth scores of every step (their names carry ``gt`` or ``ground_truth``) and
    each step's status, side by side."""
    rows = []
    for name, summary in results.summary.items():
        scores = {
            k: v
            for k, v in summary.items()
            if isinstance(v, (int, float)) and ("gt" in k.lower() or "ground_truth" in k)
        }
        if scores or summary.get("status") != "ok":
            status = summary.get("status", "?")
            cell = status if status == "ok" else f'<span class="error">{_e(status)}</span>'
            scores_text = ", ".join(f"{k} {fmt(v)}" for k, v in scores.items())
            rows.append([_e(name), cell, fmt(summary.get("seconds")), _e(scores_text)])
    if not rows:
        return ""
    table = Table("", ["method", "status", "seconds", "ground-truth scores"], rows)
    return (
        '<h2 id="scoreboard">Quality scoreboard</h2><p class="meta">How well each method\'s '
        "concepts match the concept world's ground truth (higher is better).</p>"
        + _table(table, escape=False)
    )


def _section(section: Section) -> str:
    parts = [f'<h2 id="{_id(section.name)}">{_e(section.name)}</h2>']
    summary = section.summary
    if summary.get("status") == "error":
        parts.append(f'<p class="error">failed: {_e(str(summary.get("error")))}</p>')
    for saved in section.explanations:
        parts.append(_explanation(saved))
    scalars = [[k, fmt(v)] for k, v in summary.items() if isinstance(v, (int, float, str))]
    if scalars:
        parts.append("<h3>Metrics</h3>" + _table(Table("", ["metric", "value"], scalars)))
    for table in section.tables:
        if len(table.rows) > FOLD_ROWS:  # long tables fold (no script: <details> is HTML)
            title = f"<summary><b>{_e(table.title)}</b> ({len(table.rows)} rows)</summary>"
            parts.append(f"<details>{title}{_table(table)}</details>")
        else:
            parts.append(f"<h3>{_e(table.title)}</h3>" + _table(table))
    figures = [f for f in section.figures if section.name != "world"]
    if figures:
        parts.append(
            '<h3>Figures</h3><div class="figures">'
            + "".join(f'<img alt="{_e(f.name)}" src="{file_uri(f)}"><br>' for f in figures)
            + "</div>"
        )
    return "\n".join(parts)


def _explanation(saved: SavedExplanation) -> str:
    e = saved.explanation
    names = e.concept_names
    chips = "".join(f"<span>{_e(n)}</span>" for n in names[:NAMES])
    more = f" … and {len(names) - NAMES} more" if len(names) > NAMES else ""
    parts = [
        f"<h3>{_e(e.method)} at {_e(e.layer)}: {len(names)} concepts</h3>",
        f'<div class="chips">{chips}{more}</div>',
    ]
    for i in range(min(EXAMPLES, len(e))):
        parts.append(_example(saved, i))
    config = saved.settings.get("config")
    if isinstance(config, dict) and config:
        rows = [[k, str(v)] for k, v in config.items()]  # _table escapes every cell
        parts.append("<h3>Settings</h3>" + _table(Table("", ["option", "value"], rows)))
    return "\n".join(parts)


def _example(saved: SavedExplanation, i: int) -> str:
    e = saved.explanation
    target, predicted = int(e.targets[i]), int(e.predictions[i])
    base = None
    figures = []
    if saved.images is not None and i < len(saved.images):
        base = to_rgb(saved.images[i], saved.mean, saved.std)
        figures.append(_figure(array_uri(base), "input"))
    class_map = e.class_map(i)
    if class_map is not None and float(class_map.max()) > 0:
        figures.append(_figure(array_uri(heat_rgb(class_map, base)), "class map"))
    for column, concept in _top_maps(saved, i):
        assert e.heatmaps is not None
        label = f"{e.concept_names[concept]} ({float(e.concept_scores[i, concept]):.3g})"
        figures.append(_figure(array_uri(heat_rgb(e.heatmaps[i, column], base)), label))
    caption = f"image {i}: explained class <b>{_e(e.class_names[target])}</b>" + (
        "" if target == predicted else f" (predicted {_e(e.class_names[predicted])})"
    )
    return (
        f'<div class="example"><div><p>{caption}</p>{_bars(e.concept_scores[i], e.concept_names)}'
        f"</div>{''.join(figures)}</div>"
    )


def _top_maps(saved: SavedExplanation, i: int) -> list[tuple[int, int]]:
    """(heatmap column, concept index) of image ``i``'s highest-scoring mapped concepts: the
    columns ``heatmap_concepts`` names, else (one column per concept) those that scored."""
    e = saved.explanation
    if e.heatmaps is None:
        return []
    if e.heatmap_concepts is not None:
        pairs = [(j, int(c)) for j, c in enumerate(e.heatmap_concepts[i].tolist()) if c >= 0]
    else:
        n = min(e.heatmaps.shape[1], len(e.concept_names))
        pairs = [(j, j) for j in range(n) if float(e.concept_scores[i, j]) != 0]
    pairs = [(j, c) for j, c in pairs if float(e.heatmaps[i, j].max()) > 0]
    pairs.sort(key=lambda p: -float(e.concept_scores[i, p[1]]))
    return pairs[:MAPS]


def _bars(scores: Any, names: list[str]) -> str:
    """Horizontal bars of the largest-magnitude concept scores (negative ones in red)."""
    order = scores.abs().argsort(descending=True)[:BARS].tolist()
    peak = max((abs(float(scores[j])) for j in order), default=0.0) or 1.0
    rows = []
    for j in order:
        value = float(scores[j])
        if value == 0:
            continue
        width = 100 * abs(value) / peak
        kind = "fill neg" if value < 0 else "fill"
        rows.append(
            f'<div class="bar"><span class="name" title="{_e(names[j])}">{_e(names[j])}</span>'
            f'<span class="track"><span class="{kind}" style="display:block;width:{width:.0f}%">'
            f"</span></span><span>{value:.3g}</span></div>"
        )
    return f'<div class="bars">{"".join(rows) or "no concept scored"}</div>'


def _figure(uri: str, caption: str) -> str:
    text = _e(caption)
    return f'<figure><img alt="{text}" src="{uri}"><figcaption>{text}</figcaption></figure>'


def _table(table: Table, header: bool = True, escape: bool = True) -> str:
    def cell(value: str, tag: str) -> str:
        text = _e(value) if escape else value
        num = ' class="num"' if tag == "td" and _is_number(value) else ""
        return f"<{tag}{num}>{text}</{tag}>"

    head = "<tr>" + "".join(cell(h, "th") for h in table.header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in table.rows)
    return f"<table>{head}{body}</table>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _id(name: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in name)
