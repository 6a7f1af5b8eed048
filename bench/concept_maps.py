"""concept_maps and concept_map_stats: ours vs torch conv2d + relu (oneDNN on CPU, cuDNN on GPU).

Rows, on the same float32 inputs in one process (agreement is checked first):
- ``forward``: ``concept_maps(x, W, b)`` vs ``relu(conv2d(x, W[:, :, None, None], b))``.
- ``forward+backward``: the same plus ``.backward(g)`` for x, W and b.
- ``stats``: ``concept_map_stats(x, W, b, t)`` vs torch conv + relu + amax / mean /
  (> t).mean, with the peak extra memory of each call (on CPU the peak resident-set growth of
  a fresh process running just that call; on GPU the ``torch.cuda.max_memory_allocated`` growth).
- ``matmul``: a plain float32 ``torch.matmul`` of the same GEMM (``[M, D] @ [D, B*H*W]``, no
  bias, no ReLU), the GFLOP/s ceiling that torch's BLAS reaches on this machine in this run.

"Ours" is the compiled backend of the inputs' device, named explicitly (``backend="cuda"`` or
``"cpu"``): the automatic choice on CUDA tensors is the torch twin (``pyconcepts.ops._dispatch``).
On CUDA, TF32 is off on both sides (our ``precision="fp32"``, the default).

Time: median of ``--repeats`` interleaved runs after one warm-up. GFLOP/s counts 2·B·D·M·H·W per
GEMM (three GEMMs for forward+backward). Run: ``python -m bench.concept_maps [--cases small]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from pyconcepts.ops import concept_map_stats, concept_maps
from pyconcepts.persistence import atomic_write_bytes
from pyconcepts.reference import concept_maps as reference

CASES = {"small": ((64, 512, 14, 14), 100), "large": ((256, 2048, 7, 7), 1000)}
THRESHOLD = 0.1
RESULTS = Path(__file__).resolve().parent / "results" / "concept_maps.json"


def _ours_maps(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return concept_maps(x, w, b, backend=x.device.type)


def _ours_stats(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(concept_map_stats(x, w, b, THRESHOLD, backend=x.device.type))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(name: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """x, W, b, grad_out of a case, seeded, allocated in their final shape (no temporaries)."""
    (batch, channels, height, width), n_maps = CASES[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=gen).to(device)
    w = torch.randn(n_maps, channels, generator=gen).div_(channels**0.5).to(device)
    b = torch.randn(n_maps, generator=gen).mul_(0.1).to(device)
    g = torch.randn(batch, n_maps, height, width, generator=gen).to(device)
    return x, w, b, g


def _stats_fn(impl: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            if impl == "ours":
                return _ours_stats(x, w, b)
            return _torch_stats(x, w, b)

    return run


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited over exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return 1024 * int(line.split()[1])


def _memory_probe(name: str, impl: str) -> None:
    """Child process: print the peak resident-set growth (bytes) of one CPU stats call."""
    x, w, b, _ = _inputs(name, torch.device("cpu"))
    _stats_fn(impl, x[:1, :, :1, :1], w, b)()  # imports, thread pools, kernel selection
    before = _peak_rss()
    _stats_fn(impl, x, w, b)()
    print(_peak_rss() - before)


def peak_extra_bytes(name: str, impl: str, device: torch.device) -> int:
    """Peak memory growth of one stats call: CUDA allocator peak, or on CPU the growth of the
    peak resident set of a fresh process (so memory freed earlier in this one cannot hide it).
    """
    if device.type == "cuda":
        x, w, b, _ = _inputs(name, device)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _stats_fn(impl, x, w, b)()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    probe = [sys.executable, "-m", "bench.concept_maps", "--memory-probe", name, impl]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(probe, capture_output=True, text=True, check=True, cwd=root, env=env)
    return int(done.stdout.split()[-1])


def _torch_stats(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    maps = reference.concept_maps(x, w, b)
    return maps.amax((2, 3)), maps.mean((2, 3)), (maps > THRESHOLD).to(x.dtype).mean((2, 3))


def _fwd_bwd(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    fn(*leaves).backward(g)
    return tuple(t.grad for t in leaves)  # type: ignore[misc]


def check_agreement(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> dict:
    """Max abs differences ours vs torch; raises if any exceeds the float32 tolerance."""
    d = x.shape[1]
    tol = {"rtol": 1e-4, "atol": 1e-5 * d**0.5}
    diffs = {}
    ours, theirs = _ours_maps(x, w, b), reference.concept_maps(x, w, b)
    torch.testing.assert_close(ours, theirs, **tol)
    diffs["forward"] = float((ours - theirs).abs().max())
    # Gradients: against torch given our output's ReLU mask. Pre-activations within rounding of
    # 0 may land on the other side of the kink in torch's forward, which changes whole gradient
    # rows there; those flips are counted, not compared.
    diffs["relu_kink_flips"] = int(((ours > 0) != (theirs > 0)).sum())
    masked = g * (ours > 0).to(g.dtype)
    del ours, theirs
    want = (
        torch.einsum("bmhw,md->bdhw", masked, w),
        torch.einsum("bmhw,bdhw->md", masked, x),
        masked.sum((0, 2, 3)),
    )
    for name, got, expect in zip(
        ("grad_x", "grad_w", "grad_b"), _fwd_bwd(_ours_maps, x, w, b, g), want
    ):
        scale = float(expect.abs().max()) + 1.0
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5 * scale)
        diffs[name] = float((got - expect).abs().max())
    with torch.no_grad():
        got_stats = concept_map_stats(x, w, b, THRESHOLD, backend=x.device.type)
        want_stats = _torch_stats(x, w, b)
    for name, got, expect in zip(("max", "mean"), got_stats[:2], want_stats[:2]):
        torch.testing.assert_close(got, expect, **tol)
        diffs[name] = float((got - expect).abs().max())
    # frac may differ only by positions within rounding of the threshold
    with torch.no_grad():
        maps = reference.concept_maps(x, w, b)
        near = ((maps - THRESHOLD).abs() <= tol["atol"] + tol["rtol"] * THRESHOLD).to(x.dtype)
        slack = near.mean((2, 3))
    frac_diff = (got_stats.frac_above - want_stats[2]).abs()
    diffs["frac_above"] = float(frac_diff.max())
    if bool((frac_diff > slack + 1e-6).any()):
        raise AssertionError(f"frac_above differs by {diffs['frac_above']} beyond rounding")
    return diffs


def time_median(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Median seconds of each fn, runs interleaved so machine load hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(
    name: str, repeats: int, device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> list[dict]:
    (batch, channels, height, width), n_maps = CASES[name]
    x, w, b, g = _inputs(name, device)
    diffs = check_agreement(x, w, b, g)
    gen = torch.Generator().manual_seed(1)
    b_mat = torch.randn(channels, batch * height * width, generator=gen).to(device)
    stats_ours, stats_torch = _stats_fn("ours", x, w, b), _stats_fn("torch", x, w, b)

    fns = {
        "forward/ours": lambda: _ours_maps(x, w, b),
        "forward/torch": lambda: reference.concept_maps(x, w, b),
        "forward+backward/ours": lambda: _fwd_bwd(_ours_maps, x, w, b, g),
        "forward+backward/torch": lambda: _fwd_bwd(reference.concept_maps, x, w, b, g),
        "stats/ours": stats_ours,
        "stats/torch": stats_torch,
        "matmul/torch": lambda: torch.matmul(w, b_mat),
    }
    with torch.no_grad():
        secs = time_median(
            {k: v for k, v in fns.items() if "backward" not in k}, repeats, device, clock
        )
    secs.update(
        time_median({k: v for k, v in fns.items() if "backward" in k}, repeats, device, clock)
    )
    memory = {
        "stats/ours": peak_extra_bytes(name, "ours", device),
        "stats/torch": peak_extra_bytes(name, "torch", device),
    }
    gemm_flops = 2 * batch * channels * n_maps * height * width
    rows = []
    for key, sec in secs.items():
        task, impl = key.split("/")
        flops = gemm_flops * (3 if task == "forward+backward" else 1)
        torch_sec = secs.get(f"{task}/torch", sec)
        rows.append(
            {
                "case": name,
                "shape": f"x [{batch},{channels},{height},{width}], M={n_maps}",
                "task": task,
                "impl": impl,
                "ms": 1e3 * sec,
                "gflops": flops / sec / 1e9,
                "speedup_vs_torch": torch_sec / sec,
                "vs_matmul_gflops": (flops / sec) / (gemm_flops / secs["matmul/torch"]),
                "peak_extra_mib": memory[key] / 2**20 if key in memory else None,
                "max_abs_diff": diffs,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | task | impl | ms | GFLOP/s | × torch | of matmul GFLOP/s | peak extra MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = "" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.1f}"
        lines.append(
            f"| {r['shape']} | {r['task']} | {r['impl']} | {r['ms']:.1f} | {r['gflops']:.1f} | "
            f"{r['speedup_vs_torch']:.2f} | {100 * r['vs_matmul_gflops']:.0f}% | {mem} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.concept_maps", description=__doc__)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["small", "large"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU seconds (all threads) instead of wall time: steadier "
        "on a machine loaded by others; GFLOP/s then read per CPU-second",
    )
    parser.add_argument("--memory-probe", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _memory_probe(*args.memory_probe)
        return
    device = torch.device(args.device)
    # Compare full-fp32 arithmetic: cuDNN and cuBLAS would otherwise round inputs to TF32 (10-bit
    # mantissa), which neither matches our kernel's fp32 nor is what the matmul ceiling means.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    clock = time.process_time if args.cpu_time else time.perf_counter
    rows = [row for case in args.cases for row in run_case(case, args.repeats, device, clock)]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    timing = "CPU seconds of this process" if args.cpu_time else "wall time"
    print(f"device: {where}; timing: {timing}\n")
    print(markdown(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {"device": where, "timing": timing, "rows": rows}
    atomic_write_bytes(RESULTS, json.dumps(doc, indent=2).encode())


if __name__ == "__main__":
    main()
