"""Load test of the HTTP service (``pyconcepts serve``): throughput, latency, statuses, memory.

Fits one explainer in its small configuration (``pyconcepts.testing.quick_explainers``, seeded
untrained zoo architectures), exports it to ONNX and starts :func:`pyconcepts.serve.build_server`
in this process on 127.0.0.1 (a free port). ``--requests`` requests then go out from
``--concurrency`` client threads, each on its own keep-alive connection: valid ones (concept-world
images as raw PNG bodies, or as base64 JSON, every other one asking for the heatmap overlay)
and a ``--malformed`` fraction of malformed ones (corrupt image, wrong content type, broken or
deeply nested JSON, bad base64, gzip body, huge Content-Length, unknown path), shuffled.
Meanwhile ``--stalled`` more connections send only the headers of a ``POST /explain`` (with
``Expect: 100-continue``) and never the body, each reopened whenever the server closes it: they
must not make valid requests wait for an explain slot or get 503.

Before the measured requests, ``--warmup`` requests of the same mix (not counted) fill the
connections, onnxruntime's and the allocators' caches and arenas. Reports requests/s,
p50/p90/p99 latency of the valid requests, counts per status, this process's resident memory
(VmRSS from /proc/self/status) after the warm-up and after each quarter, its growth over the
warm-up value (at the end and at the highest quarter, in %), the load average, and whether
``GET /health`` still answers 200 afterwards. Exits with an error if a valid request got anything
but 200, a malformed one anything but its expected 4xx, the peak growth exceeds
``--max-growth`` or the service stopped answering. Client and server share this process (and its
GIL), so the numbers are those of a service sharing its CPU with its clients. Results:
``bench/results/serve_load.json`` (``--out``).
Run: ``python -m bench.serve_load --requests 10000 --concurrency 32 --malformed 0.1``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import io
import json
import os
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from pyconcepts.data import ConceptWorld
from pyconcepts.models import cw_resnet, cw_vgg
from pyconcepts.serve import Limits, build_server
from pyconcepts.testing import quick_explainers

# (method, path, body, headers, expected status)
Request = tuple[str, str, Optional[bytes], dict[str, str], int]
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}
MALFORMED: list[Request] = [
    ("POST", "/explain", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, PNG, 400),
    ("POST", "/explain", b"hello", {"Content-Type": "text/plain"}, 415),
    ("POST", "/explain", b'{"image": ', JSON, 400),
    ("POST", "/explain", b"[" * 100_000, JSON, 400),
    ("POST", "/explain", b'{"image": "not*base64!"}', JSON, 400),
    (
        "POST",
        "/explain",
        gzip.compress(b'{"image": ""}'),
        {**JSON, "Content-Encoding": "gzip"},
        415,
    ),
    ("POST", "/explain", None, {**PNG, "Content-Length": str(10**12)}, 413),
    ("GET", "/admin", None, {}, 404),
]


STALLED_HEAD = (
    b"POST /explain HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
    b"Expect: 100-continue\r\nContent-Length: 4096\r\n\r\n"
)


def hold_stalled(
    port: int, stop: threading.Event, ready: threading.Semaphore, answers: Counter[str]
) -> None:
    """One connection at a time that sends the headers of a ``POST /explain`` and no body,
    reopened whenever the server answers and closes it, until ``stop``. Releases ``ready``
    once the server first said 100 Continue (it is then waiting for the body); counts the
    statuses of the final answers in ``answers``."""
    signalled = False
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(STALLED_HEAD)
            sock.settimeout(0.5)  # polls ``stop``
            received = b""
            while not stop.is_set():
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                received += chunk
                if not signalled and b"100 Continue" in received:
                    signalled = True
                    ready.release()
            final = received.split(b"\r\n\r\n", 1)[-1]  # after the 100 Continue's head
            if final.startswith(b"HTTP/"):
                answers[final.split(b" ", 2)[1].decode()] += 1


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status: expected a VmRSS line, found none")


def valid_requests(world: ConceptWorld) -> list[Request]:
    """Each image of ``world`` as a raw PNG and as base64 JSON (every other one with heatmap)."""
    requests: list[Request] = []
    for i in range(len(world)):
        buffer = io.BytesIO()
        array = (world.image(i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(buffer, format="PNG")
        png = buffer.getvalue()
        doc = {"image": base64.b64encode(png).decode(), "top_k": 3, "heatmap_png": i % 2 == 0}
        requests.append(("POST", "/explain", png, PNG, 200))
        requests.append(("POST", "/explain", json.dumps(doc).encode(), JSON, 200))
    return requests


def make_plan(n: int, malformed: float, valid: list[Request], seed: int) -> list[Request]:
    """``n`` requests, ``round(malformed * n)`` of them malformed (cycling over each list), in an
    order shuffled with ``seed``."""
    n_bad = round(malformed * n)
    plan = [valid[i % len(valid)] for i in range(n - n_bad)]
    plan += [MALFORMED[i % len(MALFORMED)] for i in range(n_bad)]
    random.Random(seed).shuffle(plan)
    return plan


def main(argv: Optional[list[str]] = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="client threads")
    parser.add_argument("--malformed", type=float, default=0.1, help="fraction malformed")
    parser.add_argument("--method", default="ibd", help="quick explainer to serve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stalled",
        type=int,
        default=32,
        help="connections that send a POST /explain's headers and never its body",
    )
    parser.add_argument(
        "--warmup", type=int, default=1000, help="requests (same mix) before the measured ones"
    )
    parser.add_argument(
        "--max-growth",
        type=float,
        default=0.10,
        help="fail if the resident memory grows more than this fraction over its warm-up value",
    )
    parser.add_argument(
        "--max-inferences", type=int, default=None,
        help="model runs at once in the service (default: its own, the CPU count)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "serve_load.json"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.malformed <= 1:
        raise SystemExit(f"--malformed: expected a fraction in [0, 1], got {args.malformed}")
    if args.requests < 1 or args.warmup < 0 or args.stalled < 0:
        raise SystemExit(
            f"--requests/--warmup/--stalled: expected ≥ 1 / ≥ 0 / ≥ 0, got "
            f"{args.requests}/{args.warmup}/{args.stalled}"
        )

    torch.manual_seed(args.seed)
    world = ConceptWorld(64, seed=3)
    make, data, fit_kwargs = quick_explainers(world, cw_vgg().eval(), cw_resnet().eval())[
        args.method
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = make().fit(data, **fit_kwargs).export_onnx(Path(tmp) / f"{args.method}.onnx")
        limits = Limits(max_inferences=args.max_inferences)
        server = build_server(path, "127.0.0.1", 0, limits, quiet=True)  # loads the model
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    port = server.server_address[1]

    valid = valid_requests(ConceptWorld(16, seed=args.seed + 1))
    warmup = make_plan(args.warmup, args.malformed, valid, args.seed + 1)
    plan = make_plan(args.requests, args.malformed, valid, args.seed)
    local = threading.local()
    stop, ready, stalled_answers = threading.Event(), threading.Semaphore(0), Counter[str]()
    stallers = [
        threading.Thread(target=hold_stalled, args=(port, stop, ready, stalled_answers))
        for _ in range(args.stalled)
    ]
    for thread in stallers:
        thread.start()
    for _ in stallers:  # every stalled connection is being read by the server from here on
        if not ready.acquire(timeout=60):
            raise SystemExit("--stalled: a connection got no 100 Continue within 60 s")

    def send(request: Request) -> tuple[Request, object, float]:
        """(request, status or exception name, seconds) on this thread's connection."""
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        method, target, body, headers, _ = request
        start = time.perf_counter()
        try:
            local.conn.request(method, target, body=body, headers=headers)
            response = local.conn.getresponse()
            response.read()
            status: object = response.status
        except (OSError, http.client.HTTPException) as exc:
            local.conn.close()  # reconnects on the next request
            status = type(exc).__name__
        return request, status, time.perf_counter() - start

    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(send, warmup))  # connections, onnxruntime, allocator arenas
            rss = [rss_mib()]
            load = [os.getloadavg()[0]]
            start = time.perf_counter()
            results: list[tuple[Request, object, float]] = []
            for quarter in np.array_split(np.arange(len(plan)), 4):  # RSS after each quarter
                results += pool.map(send, [plan[i] for i in quarter])
                rss.append(rss_mib())
            seconds = time.perf_counter() - start
            load.append(os.getloadavg()[0])
        health = send(("GET", "/health", None, {}, 200))[1] if serving.is_alive() else "stopped"
    finally:
        stop.set()
        for thread in stallers:
            thread.join()
        server.shutdown()
        server.server_close()

    latencies = np.array([t for r, _, t in results if r[4] == 200]) * 1e3
    by_kind: dict[str, Counter[str]] = {"valid": Counter(), "malformed": Counter()}
    wrong: Counter[tuple[str, str, int, str]] = Counter()  # (method, path, expected, got)
    for (method, target, _, _, expected), status, _ in results:
        by_kind["valid" if expected == 200 else "malformed"][str(status)] += 1
        if status != expected:
            wrong[(method, target, expected, str(status))] += 1
    growth_mib = {"end": rss[-1] - rss[0], "peak": max(rss[1:]) - rss[0]}
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "method": args.method,
        "warmup_requests": args.warmup,
        "requests": args.requests,
        "malformed": sum(1 for r in plan if r[4] != 200),
        "concurrency": args.concurrency,
        "max_inferences": server.limits.inferences(),
        "stalled_connections": args.stalled,
        "stalled_answers": dict(sorted(stalled_answers.items())),
        "load_average_1min_before_after": load,
        "requests_per_s": len(results) / seconds,
        "valid_latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)},
        "status_counts": {kind: dict(sorted(c.items())) for kind, c in by_kind.items()},
        "valid_5xx": sum(n for s, n in by_kind["valid"].items() if s.startswith("5")),
        "rss_mib_after_warmup_and_each_quarter": rss,
        "rss_growth_mib": growth_mib,
        "rss_growth_pct": {key: 100 * mib / rss[0] for key, mib in growth_mib.items()},
        "health_after_run": health,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    failures: list[str] = []
    if wrong:
        found = [[*key, n] for key, n in wrong.items()]
        failures.append(f"unexpected answers as [method, path, expected, got, count]: {found}")
    if growth_mib["peak"] > args.max_growth * rss[0]:
        failures.append(
            f"resident memory: expected at most {100 * args.max_growth:g}% growth over "
            f"{rss[0]:.1f} MiB (after warm-up), got +{growth_mib['peak']:.1f} MiB"
        )
    if health != 200:
        failures.append(f"GET /health after the run: expected 200, got {health}")
    if failures:
        raise SystemExit("\n".join(failures))
    return report


if __name__ == "__main__":
    main()
