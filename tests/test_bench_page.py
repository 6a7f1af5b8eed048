"""``python -m bench --all`` machinery: tables, plots and the page's generated section (on a toy
kernel; nothing here depends on how long anything takes)."""

from __future__ import annotations

import pytest

pytest.importorskip("bench._suite", reason="run from the repository root (bench/ importable)")

from bench import _page
from bench._suite import OURS, Kernel, run_kernel


def _toy() -> Kernel:
    def setup(size: int):
        calls = {OURS: lambda: size * 2, "their tool": lambda: size + size}
        return calls, {"missing tool": "not installed"}

    return Kernel("toy", "doubling", "size N", {"quick": [1, 2], "full": [1, 2, 3]}, setup,
                  lambda impl, a, b: a == b)  # fmt: skip


def test_kernel_rows_table_plot_and_page(tmp_path):
    kernel = _toy()
    result = run_kernel(kernel, kernel.sizes["quick"], repeats=2, log=lambda s: None)
    assert [(r["size"], r["impl"]) for r in result["rows"]] == [
        (1, OURS), (1, "their tool"), (2, OURS), (2, "their tool"),
    ]  # fmt: skip
    table = _page.table(kernel, result)
    assert table.splitlines()[0] == ("| size N | pyconcepts | their tool | their tool / ours |")
    assert "missing tool: not run (not installed)" in table
    image = tmp_path / "img" / "bench-toy.png"
    _page.plot(kernel, result, image)
    assert image.stat().st_size < 100_000
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nIntro.\n\n## Hand-written\n\nProse.\n")
    for run in ("first", "second"):
        generated = _page.section(_page.machine(), (1.0, 2.0), "quick", [f"### toy {run}\n"])
        _page.write_page(page, generated)
    text = page.read_text()
    assert text.count(_page.BEGIN) == 1 and "toy second" in text and "toy first" not in text
    assert text.startswith("# Benchmarks\n\nIntro.\n\n" + _page.BEGIN)
    assert text.endswith("## Hand-written\n\nProse.\n")


def test_disagreeing_tool_stops_the_run():
    bad = Kernel("bad", "", "n", {}, lambda n: ({OURS: lambda: 1, "t": lambda: 2}, {}),
                 lambda impl, a, b: a == b)  # fmt: skip
    with pytest.raises(SystemExit, match="disagrees"):
        run_kernel(bad, [1], repeats=1, log=lambda s: None)
