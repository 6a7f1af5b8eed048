"""Saving and loading an explainer's tensors: pyconcepts' streamed safetensors writer and reader
(``pyconcepts.persistence``) against the safetensors package's ``save_file`` / ``load_file`` and
``torch.save`` / ``torch.load(weights_only=True)``, on the same tensors in one process.

Agreement comes first: every tool's load must give back the saved tensors bit for bit, and the
safetensors package must read pyconcepts' file bit for bit too (it is a standard safetensors
file). Then each save and load is timed (median of ``--repeats``) and its peak memory measured:
the process's peak resident memory (``VmHWM``, reset before each call through
``/proc/self/clear_refs``) less its resident memory before the call. A load's peak includes the
tensors it returns; a save's does not include the tensors it is given (they exist before).
A load is timed until every page of its tensors has been read once: the safetensors package
maps the file and reads a page only when it is first touched, so without this its load would
time nothing.

pyconcepts' save also computes a SHA-256 digest of the tensors and fsyncs the file before it is
renamed into place (an interrupted save never leaves a half-written file); the package and
``torch.save`` do neither, so part of a time gap is that work. Loads read files just written,
from the page cache, for every tool alike.

Run: ``python -m bench.persistence [--mib 1024 --tensors 8 --repeats 3 --dir /tmp]``; writes
``bench/results/persistence.json``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from bench import _page, _results
from pyconcepts import persistence

KIND = "bench"
MIB = 2**20


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None, f"/proc/self/status has no {field}"
    return int(match.group(1))


def peak_extra_mib(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, its seconds and the MiB its peak resident memory rose above the
    resident memory before the call (Linux: the peak is reset through ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    # the kernel's RSS counters are per-CPU caches accurate to a few pages, so a call that
    # allocates nothing can read a fraction of a MiB below 0: that is 0
    return out, seconds, max(0.0, (_status_kib("VmHWM") - before) / 1024)


def make_tensors(mib: int, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` float32 tensors of ``mib`` MiB in all, shaped like an autoencoder's layers."""
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, mib * MIB // (4 * 1280 * count))
    return {f"layer{i}.weight": torch.randn(rows, 1280, generator=gen) for i in range(count)}


def touch(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reads one element of every 4 KiB page of each tensor (faults a mapped file in)."""
    for t in tensors.values():
        flat = t.reshape(-1)
        if flat.numel():
            flat[:: max(1, 4096 // t.element_size())].sum()
    return tensors


def _touched(load: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return touch(load())


def tools(folder: Path) -> dict[str, tuple[Callable[[dict], None], Callable[[], dict]]]:
    """``{name: (save(tensors), load() -> tensors)}``, pyconcepts first; tools not installed
    are left out."""
    ours = folder / "pyconcepts.safetensors"
    pt = folder / "torch.pt"
    out: dict[str, tuple[Callable[[dict], None], Callable[[], dict]]] = {
        "pyconcepts": (
            lambda t: persistence.save_file(ours, t, KIND, {"config": {}}),
            lambda: persistence.load_file(ours, KIND)[0],
        )
    }
    try:
        import safetensors.torch as st
    except ImportError:
        pass
    else:
        theirs = folder / "package.safetensors"
        out["safetensors"] = (lambda t: st.save_file(t, str(theirs)), lambda: st.load_file(theirs))
    out["torch.save"] = (lambda t: torch.save(t, pt), lambda: torch.load(pt, weights_only=True))
    return out


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def agreement(tensors: dict[str, torch.Tensor], folder: Path, calls: dict) -> dict[str, bool]:
    """Each tool's save then load gives back ``tensors``; the safetensors package reads
    pyconcepts' file the same."""
    result = {}
    for name, (save, load) in calls.items():
        save(tensors)
        result[name] = _equal(load(), tensors)
    if "safetensors" in calls:
        from safetensors import safe_open

        with safe_open(str(folder / "pyconcepts.safetensors"), framework="pt") as f:
            cross = {k: f.get_tensor(k) for k in f.keys()}
        result["safetensors reads pyconcepts' file"] = _equal(cross, tensors)
    return result


def measure(
    tensors: dict[str, torch.Tensor], calls: dict, repeats: int
) -> dict[str, dict[str, float]]:
    """Median seconds and largest extra peak MiB of each tool's save and load."""
    rows: dict[str, dict[str, float]] = {}
    for name, (save, load) in calls.items():
        runs: dict[str, list[tuple[float, float]]] = {"save": [], "load": []}
        for _ in range(repeats):
            runs["save"].append(peak_extra_mib(partial(save, tensors))[1:])
            loaded, seconds, peak = peak_extra_mib(partial(_touched, load))
            del loaded
            runs["load"].append((seconds, peak))
        rows[name] = {
            f"{step}_{what}": f([r[i] for r in runs[step]])
            for step in runs
            for what, i, f in (("s", 0, statistics.median), ("peak_mib", 1, max))
        }
    return rows


def table(rows: dict[str, dict[str, float]], ours: str = "pyconcepts") -> str:
    """Markdown: each tool's times and peaks, and their ratios to pyconcepts' (> 1: ours is
    faster / smaller)."""
    lines = [
        "| tool | save s | save peak MiB | load s | load peak MiB | save time ratio "
        "| load time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows[ours]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['save_s']:.2f} | {r['save_peak_mib']:,.0f} | {r['load_s']:.2f} | "
            f"{r['load_peak_mib']:,.0f} | {r['save_s'] / base['save_s']:.2f} | "
            f"{r['load_s'] / base['load_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB of tensors (default 1024)")
    ap.add_argument("--tensors", type=int, default=8, help="how many tensors (default 8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="folder of the files (default: temp)")
    args = ap.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench.persistence measures peak memory through /proc (Linux only)")
    tensors = make_tensors(args.mib, args.tensors)
    size_mib = sum(t.numel() * t.element_size() for t in tensors.values()) / MIB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        calls = tools(folder)
        agree = agreement(tensors, folder, calls)
        print("agreement:", agree)
        if not all(agree.values()):
            raise SystemExit("the tools do not give back the same tensors")
        rows = measure(tensors, calls, args.repeats)
    size = f"{len(tensors)} float32 tensors, {size_mib:,.0f} MiB"
    print(f"\n{size}; median of {args.repeats} ({torch.get_num_threads()} threads)\n")
    print(table(rows))
    _results.save(
        "persistence",
        {
            "size": size, "repeats": args.repeats, "agreement": agree, "results": rows,
            "machine": _page.machine(), "load_average_at_end": os.getloadavg(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
