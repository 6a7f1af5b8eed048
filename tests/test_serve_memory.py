"""Decoded memory per request is bounded by the pixel limit, which defaults to 16 × the
export's input pixels: the peak resident memory of a service answering N concurrent
worst-case images (and images whose header declares far more pixels, refused before decoding)
stays under N × the documented per-request bound (docs/serving.md)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
from pyconcepts.export import export_module
from pyconcepts.serve.images import BYTES_PER_PIXEL
from pyconcepts.serve.limits import PIXELS_PER_INPUT

SIDE = 256  # the export's input: 256 × 256, so the default pixel limit is 1024 × 1024
CLIENTS = 4
MIB = 2**20
# Thread stacks, onnxruntime's per-run buffers and allocator granularity of CLIENTS
# concurrent requests beyond their images' bound.
SLACK = 16 * MIB

# Runs in a fresh interpreter: starts the service (default limits) on 127.0.0.1, warms every
# decoder and the model with small images, then sends each worst-case body from CLIENTS
# threads at once. Prints the statuses and memory: VmRSS after the warm-up, then the peak
# (VmHWM, reset after the warm-up through /proc/self/clear_refs; ru_maxrss would not do: Linux
# keeps it across exec, so it can hold the forking test process's own peak).
PROBE = """
import http.client, json, sys, threading
from pathlib import Path
from pyconcepts.serve import build_server

model, clients, warm, worst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
server = build_server(model, "127.0.0.1", 0, quiet=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]

def post(path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/explain", Path(path).read_bytes(), {"Content-Type": "image/png"})
    status = conn.getresponse().status
    conn.close()
    return status

def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

warm_statuses = [post(p) for p in warm.split(",")]
Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
base = status_kib("VmRSS")
statuses = {}
def client(i):
    statuses[i] = [post(p) for p in worst.split(",")]
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
peak = status_kib("VmHWM")
server.shutdown()
print(json.dumps({"warm": warm_statuses, "statuses": list(statuses.values()),
                  "base_kib": base, "peak_kib": peak, "max_pixels": server.max_pixels}))
"""


class Tiny(torch.nn.Module):
    """A 256 × 256 classifier whose cost is negligible next to decoding an image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.conv(images).mean((2, 3))
        return self.head(pooled), pooled[:, :3]


def png_rgba16(width: int, height: int, level: int = 9) -> bytes:
    """A 16-bit RGBA PNG of zeros, written directly (at zlib ``level`` 9 a few hundred bytes
    per megapixel; at 0, stored: 8 bytes a pixel and more)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compress, row = zlib.compressobj(level), b"\x00" + bytes(8 * width)
    idat = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def progressive_cmyk_jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (width, height)).save(buffer, format="JPEG", progressive=True)
    return buffer.getvalue()


def test_concurrent_worst_case_images_stay_under_the_memory_bound(tmp_path: Path) -> None:
    meta = {
        "pyconcepts_method": "tiny",
        "pyconcepts_outputs": json.dumps(["logits", "concept_scores"]),
    }
    model = export_module(
        Tiny().eval(),
        tmp_path / "tiny.onnx",
        torch.rand(1, 3, SIDE, SIDE),
        ["logits", "concept_scores"],
        metadata=meta,
    )
    max_pixels = PIXELS_PER_INPUT * SIDE * SIDE
    bodies = {
        # the most memory per pixel allowed: not reducible by draft (narrower than 2 × 256)
        "cmyk.jpg": progressive_cmyk_jpeg(SIDE * 2 - 1, max_pixels // (SIDE * 2 - 1)),
        "rgba16.png": png_rgba16(1024, 1024),
        # 130 KB declaring 4096 × 4096 × 8 bytes: refused from its header
        "bomb.png": png_rgba16(4096, 4096),
        "warm.jpg": progressive_cmyk_jpeg(SIDE, SIDE),
        "warm.png": png_rgba16(SIDE, SIDE),
    }
    for name, data in bodies.items():
        (tmp_path / name).write_bytes(data)
    worst = [tmp_path / n for n in ("cmyk.jpg", "rgba16.png", "bomb.png")]
    warm = [tmp_path / n for n in ("warm.jpg", "warm.png")]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(model),
            str(CLIENTS),
            ",".join(map(str, warm)),
            ",".join(map(str, worst)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["max_pixels"] == max_pixels
    assert result["warm"] == [200, 200]
    assert result["statuses"] == [[200, 200, 400]] * CLIENTS
    largest_body = max(len(bodies[p.name]) for p in worst)
    bound = CLIENTS * (BYTES_PER_PIXEL * max_pixels + 3 * largest_body) + SLACK
    growth = (result["peak_kib"] - result["base_kib"]) * 1024
    print(f"peak growth {growth / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB")  # shown with -rP
    assert growth <= bound, f"peak grew {growth / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB"


def test_the_default_body_limit_admits_the_largest_image_the_pixel_limit_allows(tmp_path):
    """Without ``max_body_bytes`` the body limit follows the pixel limit: an uncompressed 16-bit
    RGBA PNG of exactly the pixel limit, base64 in JSON, is explained; one byte past the limit
    is refused with 413 before it is read."""
    import base64
    import http.client
    import threading

    from pyconcepts.serve import Limits, build_server

    side = 32
    meta = {"pyconcepts_method": "tiny",
            "pyconcepts_outputs": json.dumps(["logits", "concept_scores"])}  # fmt: skip
    model = export_module(Tiny().eval(), tmp_path / "tiny.onnx", torch.rand(1, 3, side, side),
                          ["logits", "concept_scores"], metadata=meta)  # fmt: skip
    server = build_server(model, "127.0.0.1", 0, Limits(max_concurrency=1), quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        width = int((PIXELS_PER_INPUT * side * side) ** 0.5)  # 128 × 128: the pixel limit
        png = png_rgba16(width, width, level=0)
        assert len(png) > 8 * width * width  # stored, not compressed
        body = json.dumps({"image": base64.b64encode(png).decode()}).encode()
        assert len(body) <= server.max_body_bytes
        statuses = []
        for data in (body, body + b" " * (server.max_body_bytes + 1 - len(body))):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
            conn.request("POST", "/explain", data, {"Content-Type": "application/json"})
            statuses.append(conn.getresponse().status)
            conn.close()
        assert statuses == [200, 413]
    finally:
        server.shutdown()
        server.server_close()
