"""The HTTP service (pyconcepts.serve) on a real socket, and the ``export`` CLI command."""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pyconcepts.cli import main
from pyconcepts.data import ConceptWorld
from pyconcepts.export import OnnxExplainer
from pyconcepts.serve import Limits, build_server, decode_image
from pyconcepts.testing import quick_explainers

MAX_BODY = 256 * 1024
MAX_PIXELS = 128 * 128


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, vgg, resnet):
    """A quick IBD on the zoo ResNet: saved (.pcx) and exported (.onnx)."""
    folder = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    make, data, fit_kwargs = quick_explainers(ConceptWorld(24, seed=3), vgg, resnet)["ibd"]
    explainer = make().fit(data, **fit_kwargs)
    return explainer.save(folder / "ibd.pcx"), explainer.export_onnx(folder / "ibd.onnx")


@pytest.fixture(scope="module")
def server(fitted):
    """The service with one explain slot; its 60 s request timeout is far longer than any test
    keeps a connection waiting, so that no outcome depends on the machine's speed."""
    limits = Limits(max_body_bytes=MAX_BODY, max_concurrency=1, timeout=60, max_pixels=MAX_PIXELS)
    srv = build_server(fitted[1], "127.0.0.1", 0, limits, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server, method, path, body=None, headers=None):
    """(status, response, parsed JSON body) of one request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        assert response.getheader("Content-Type") == "application/json", data
        return response.status, response, json.loads(data)
    finally:
        conn.close()


def raw_request(server, data: bytes, half_close: bool = False):
    """Status and JSON body of the answer to raw bytes sent on a socket."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]  # a status line, then headers
    assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n", head
    return int(head.split()[1]), json.loads(body)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image():
    """A concept-world image (with three distinct non-zero concept scores) as uint8 HWC at the
    export's input size (64×64)."""
    tensor = ConceptWorld(4, seed=11).image(2)
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_health_and_metadata(server):
    status, _, health = request(server, "GET", "/health")
    served = server.explainer
    assert status == 200
    assert health == {
        "status": "ok",
        "method": "ibd",
        "inputs": [3, 64, 64],
        "concepts": len(served.concept_names),
    }
    status, _, meta = request(server, "GET", "/metadata")
    assert status == 200 and meta["method"] == "ibd"
    assert meta["class_names"] == served.class_names
    assert meta["concept_names"] == served.concept_names
    assert meta["output_names"] == list(served.output_names)
    assert meta["output_names"][:5] == [
        "logits", "concept_scores", "heatmaps", "heatmap_concepts", "class_maps",
    ]  # fmt: skip


def test_png_and_base64_json_match_onnx_explainer(server, fitted, image):
    want = OnnxExplainer(fitted[1]).explain(torch.from_numpy(image).permute(2, 0, 1)[None] / 255)
    top = want.top_concepts(0, 3)
    assert len({s for _, s in top}) == 3 and top[2][1] > 0  # no ties: the order is defined
    png = png_bytes(image)
    status, _, raw = request(server, "POST", "/explain", png, {"Content-Type": "image/png"})
    assert status == 200
    doc = json.dumps({"image": base64.b64encode(png).decode(), "top_k": 3, "heatmap_png": True})
    status, _, js = request(server, "POST", "/explain", doc, {"Content-Type": "application/json"})
    assert status == 200
    for answer, k in ((raw, 5), (js, 3)):
        assert answer["method"] == "ibd" and len(answer["top_concepts"]) == k
        assert answer["prediction"]["class"] == int(want.predictions[0])
        assert answer["prediction"]["name"] == want.class_names[int(want.predictions[0])]
        assert np.allclose(answer["logits"], want.logits[0].numpy(), atol=1e-4)
        got = [(c["name"], c["score"]) for c in answer["top_concepts"][:3]]
        assert [n for n, _ in got] == [n for n, _ in top]
        assert np.allclose([s for _, s in got], [s for _, s in top], atol=1e-4)
    assert "heatmap_png" not in raw
    overlay = Image.open(io.BytesIO(base64.b64decode(js["heatmap_png"])))
    assert overlay.format == "PNG" and overlay.size == (64, 64)


def test_jpeg_of_another_size_is_resized_bilinearly(server, fitted, image):
    big = np.asarray(Image.fromarray(image).resize((96, 80)))
    jpeg = png_bytes(big, "JPEG")
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((64, 64), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(decoded).copy()).permute(2, 0, 1)[None] / 255
    want = OnnxExplainer(fitted[1]).explain(tensor)
    status, _, got = request(server, "POST", "/explain", jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200
    assert np.allclose(got["logits"], want.logits[0].numpy(), atol=1e-4)


JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}
NESTED_FIELD = b'{"image": ' + b"[" * 65 + b"]" * 65 + b"}"
GZIP = {**JSON, "Content-Encoding": "gzip"}
LARGE_PNG = png_bytes(np.zeros((200, 200, 3), np.uint8))  # 40000 pixels > MAX_PIXELS
MALFORMED = {
    "corrupt image": ("POST", "/explain", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50, PNG, 400),
    "empty body": ("POST", "/explain", b"", PNG, 400),
    "wrong content type": ("POST", "/explain", b"hello", {"Content-Type": "text/plain"}, 415),
    "no content type": ("POST", "/explain", b"hello", {}, 415),
    "body over the limit": ("POST", "/explain", b"\x00" * (MAX_BODY + 1), PNG, 413),
    "deeply nested json": ("POST", "/explain", b"[" * 100_000, JSON, 400),
    "nested inside object": ("POST", "/explain", NESTED_FIELD, JSON, 400),
    "invalid json": ("POST", "/explain", b'{"image": ', JSON, 400),
    "json not an object": ("POST", "/explain", b"[1, 2]", JSON, 400),
    "invalid base64": ("POST", "/explain", b'{"image": "not*base64!"}', JSON, 400),
    "base64 of non-image": ("POST", "/explain", b'{"image": "aGVsbG8="}', JSON, 400),
    "image not a string": ("POST", "/explain", b'{"image": 3}', JSON, 400),
    "unknown field": ("POST", "/explain", b'{"image": "", "topk": 3}', JSON, 400),
    "bad top_k": ("POST", "/explain", b'{"image": "", "top_k": 0}', JSON, 400),
    "bad heatmap_png": ("POST", "/explain", b'{"image": "", "heatmap_png": 1}', JSON, 400),
    "too many pixels": ("POST", "/explain", LARGE_PNG, PNG, 400),
    "gzip encoding": ("POST", "/explain", gzip.compress(b'{"image": ""}'), GZIP, 415),
    "unknown path": ("GET", "/admin", None, {}, 404),
    "wrong method": ("GET", "/explain", None, {}, 405),
    "unsupported method": ("PUT", "/explain", b"x", PNG, 501),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_json_error_and_health_still_answers(server, case):
    method, path, body, headers, expected = MALFORMED[case]
    status, response, answer = request(server, method, path, body, headers)
    assert status == expected, answer
    assert isinstance(answer["error"], str) and answer["error"]
    assert response.getheader("Connection") == "close"
    assert request(server, "GET", "/health")[0] == 200


def test_raw_protocol_abuse_gets_a_json_error(server):
    head = "POST /explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    status, answer = raw_request(server, f"{head}Content-Length: {10**12}\r\n\r\n".encode())
    assert status == 413 and "Content-Length" in answer["error"]
    status, answer = raw_request(server, f"{head}Transfer-Encoding: chunked\r\n\r\n5\r\n".encode())
    assert status == 411
    status, answer = raw_request(server, f"{head}Content-Length: {'9' * 5000}\r\n\r\n".encode())
    assert status == 413 and "5000-digit" in answer["error"]
    status, answer = raw_request(server, f"{head}Content-Length: 1e3\r\n\r\n".encode())
    assert status == 400
    status, answer = raw_request(server, f"{head}Content-Length: 100\r\n\r\nshort".encode(), True)
    assert status == 400 and "got 5" in answer["error"]
    status, answer = raw_request(server, b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
    assert status == 431
    assert request(server, "GET", "/health")[0] == 200


@pytest.fixture
def held_explain(server, monkeypatch):
    """Makes ``server.explain_image`` wait, once entered, until the test sets ``release``:
    a request inside it holds an explain slot for as long as the test decides."""
    entered, release = threading.Event(), threading.Event()
    explain = server.explain_image

    def held(*args):
        entered.set()
        assert release.wait(60), "the test never released the explain call"
        return explain(*args)

    monkeypatch.setattr(server, "explain_image", held)
    yield entered, release
    release.set()


def test_busy_service_answers_503(server, image, held_explain):
    """max_concurrency=1: while one request is being explained, another is answered 503."""
    entered, release = held_explain
    png = png_bytes(image)
    first: list[int] = []
    worker = threading.Thread(
        target=lambda: first.append(request(server, "POST", "/explain", png, PNG)[0])
    )
    worker.start()
    try:
        assert entered.wait(60)  # the first request holds the only slot from here on
        status, response, answer = request(server, "POST", "/explain", png, PNG)
        assert status == 503 and response.getheader("Retry-After") == "1", answer
    finally:
        release.set()
        worker.join(60)
    assert first == [200]
    assert request(server, "POST", "/explain", png, PNG)[0] == 200  # the slot was given back


def read_head(sock: socket.socket) -> bytes:
    """Bytes from ``sock`` up to the end of one answer's head (the blank line)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {head!r}"
        head += chunk
    return head


def test_requests_waiting_for_their_body_hold_no_explain_slot(server, image):
    """max_concurrency=1: connections that announced a body and sent none (the server has
    said 100 Continue to each: it is reading their bodies) do not make others wait or 503."""
    png = png_bytes(image)
    head = (
        "POST /explain HTTP/1.1\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(png)}\r\n\r\n"
    ).encode()
    port = server.server_address[1]
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(head)
            assert read_head(sock).startswith(b"HTTP/1.1 100 Continue\r\n")
        assert request(server, "POST", "/explain", png, PNG)[0] == 200
        stalled[0].sendall(png)  # a body that arrives is explained as usual
        answer = read_head(stalled[0])
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    finally:
        for sock in stalled:
            sock.close()


def test_bodies_being_received_share_a_byte_budget(server, image):
    """max_concurrency × max_body_bytes = 256 KiB of bodies at once: while one connection has
    sent 200 KiB of its body, a 100 KiB one does not fit (503); it does once that one ends."""
    budget = server.body_budget
    body = b"\x00" * (100 * 1024)
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as big:
        head = f"POST /explain HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: {MAX_BODY}"
        big.sendall(head.encode() + b"\r\n\r\n" + b"\x00" * (200 * 1024))
        deadline = time.monotonic() + 60
        while budget.held < 200 * 1024:  # wait until the server has received them
            assert time.monotonic() < deadline, f"the server holds {budget.held} bytes"
            time.sleep(0.01)
        status, response, answer = request(server, "POST", "/explain", body, PNG)
        assert status == 503 and response.getheader("Retry-After") == "1", answer
        assert "bytes of request bodies" in answer["error"]
    deadline = time.monotonic() + 60
    while budget.held:  # the closed connection's bytes are given back
        assert time.monotonic() < deadline, f"the server still holds {budget.held} bytes"
        time.sleep(0.01)
    assert request(server, "POST", "/explain", body, PNG)[0] == 400  # fits: decoded, not an image


def test_a_large_jpeg_is_decoded_at_reduced_scale(image):
    """A JPEG 4× the input size is decoded at 1/4 scale (libjpeg's DCT scaling), then resized."""
    jpeg = png_bytes(np.asarray(Image.fromarray(image).resize((256, 256))), "JPEG")
    with Image.open(io.BytesIO(jpeg)) as img:
        img.draft("RGB", (64, 64))
        assert img.size == (64, 64)
        want = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR), np.float32) / 255
    got = decode_image(jpeg, (64, 64), 256 * 256)
    assert np.array_equal(got[0].transpose(1, 2, 0), want)


def test_100_continue_comes_only_after_the_size_check(server, image):
    head = "POST /explain HTTP/1.1\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
    status, answer = raw_request(server, f"{head}Content-Length: {MAX_BODY + 1}\r\n\r\n".encode())
    assert status == 413, answer


@pytest.mark.parametrize(
    "line, want",
    [
        ("GET /health HTTP/2.0", 505),
        ("hello", 400),
        ("GET /health HTTP/1.x", 400),
        ("GET /health HTTP/1.1 extra", 400),
        ("GET /health", 400),
    ],
)
def test_a_bad_request_line_gets_a_status_line_and_json(server, line, want):
    status, answer = raw_request(server, f"{line}\r\nHost: x\r\n\r\n".encode())
    assert status == want and answer["error"]


def test_image_jpg_and_wrapped_base64_are_accepted(server, image):
    jpeg, png = png_bytes(image, "JPEG"), png_bytes(image)
    status, _, answer = request(server, "POST", "/explain", jpeg, {"Content-Type": "image/jpg"})
    assert status == 200, answer
    want = request(server, "POST", "/explain", png, PNG)[2]
    wrapped = base64.encodebytes(png).decode()  # 76-column lines, as `base64 FILE` prints
    assert "\n" in wrapped.rstrip("\n")
    status, _, got = request(server, "POST", "/explain", json.dumps({"image": wrapped}), JSON)
    assert status == 200 and got == want


def test_an_unrecognised_image_error_shows_no_memory_address(server):
    status, _, answer = request(server, "POST", "/explain", b"hello world", PNG)
    assert status == 400 and "PNG or JPEG" in answer["error"]
    assert "0x" not in answer["error"] and "BytesIO" not in answer["error"], answer


def test_a_handler_exception_is_a_json_500_and_the_service_survives(
    server, image, monkeypatch, capsys
):
    def broken(*_args):
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "explain_image", broken)
    monkeypatch.setattr(server, "quiet", False)
    status, _, answer = request(server, "POST", "/explain", png_bytes(image), PNG)
    assert status == 500 and "RuntimeError" in answer["error"]
    assert request(server, "GET", "/health")[0] == 200
    log = capsys.readouterr().err.splitlines()
    traceback = [line for line in log if "Traceback" in line or "RuntimeError: boom" in line]
    assert len(traceback) == 2, log  # the traceback's lines are log lines of their own
    assert not any("\\x0a" in line for line in log), log


def test_a_body_that_does_not_arrive_in_time_gets_408(fitted):
    srv = build_server(fitted[1], "127.0.0.1", 0, Limits(timeout=0.3), quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        head = "POST /explain HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n"
        status, answer = raw_request(srv, head.encode() + b"12345")
        assert status == 408 and "timed out" in answer["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_beyond_the_cap_get_503_without_a_thread(fitted, monkeypatch):
    import socketserver

    threads = []  # connections handed a thread, counted by the accepting thread itself
    start = socketserver.ThreadingMixIn.process_request

    def counted(self, request, client_address):
        threads.append(client_address)
        start(self, request, client_address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", counted)
    srv = build_server(fitted[1], "127.0.0.1", 0, Limits(max_connections=2, timeout=60), quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    address = ("127.0.0.1", srv.server_address[1])
    idle = [socket.create_connection(address, timeout=10) for _ in range(2)]
    try:
        for _ in range(3):  # accepted in order after the two idle ones: refused at once
            status, answer = raw_request(srv, b"GET /health HTTP/1.1\r\n\r\n")
            assert status == 503 and "max_connections=2" in answer["error"]
        assert len(threads) == 2  # the idle ones; no thread for a refused connection
        idle.pop().close()  # its thread sees the end of the stream and gives its place back
        deadline, health = (
            time.monotonic() + 30,
            b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        while (status := raw_request(srv, health)[0]) == 503:
            assert time.monotonic() < deadline, "the closed connection's place never came back"
            time.sleep(0.05)
        assert status == 200 and len(threads) == 3
    finally:
        for sock in idle:
            sock.close()
        srv.shutdown()
        srv.server_close()


def test_model_runs_queue_beyond_max_inferences(fitted, image, monkeypatch):
    """max_concurrency=3, max_inferences=2: three requests are admitted, two run the model and
    the third waits for one of them (no 503), then all are answered."""
    srv = build_server(
        fitted[1], "127.0.0.1", 0, Limits(max_concurrency=3, max_inferences=2), quiet=True
    )
    running, release, lock = [0, 0], threading.Event(), threading.Lock()  # [now, most]
    explain = srv.explainer.explain

    def held(images):
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            assert release.wait(60), "the test never released the model runs"
            return explain(images)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(srv.explainer, "explain", held)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    png, statuses = png_bytes(image), []
    clients = [
        threading.Thread(
            target=lambda: statuses.append(request(srv, "POST", "/explain", png, PNG)[0])
        )
        for _ in range(3)
    ]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while running[1] < 2:
            assert time.monotonic() < deadline, "two model runs never started"
            time.sleep(0.01)
        time.sleep(0.3)  # room for a third run to start, were it not held back
        assert running[1] == 2
    finally:
        release.set()
        for client in clients:
            client.join(60)
        srv.shutdown()
        srv.server_close()
    assert statuses == [200, 200, 200] and running == [0, 2]


def test_threads_reach_the_onnxruntime_session(fitted):
    srv = build_server(fitted[1], "127.0.0.1", 0, quiet=True, threads=1)
    try:
        assert srv.explainer.session.get_session_options().intra_op_num_threads == 1
        assert (
            Limits().inferences()
            == (os.cpu_count() or 1)
            == Limits(max_inferences=None).inferences()
        )
        assert Limits(max_inferences=3).inferences() == 3
    finally:
        srv.server_close()


def test_keep_alive_serves_several_requests_on_one_connection(server, image):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", "/explain", body=png_bytes(image), headers=PNG)
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["top_concepts"]
            assert response.getheader("Connection") is None
    finally:
        conn.close()


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_concurrency", 0),
        ("max_concurrency", True),
        ("max_connections", 0),
        ("max_inferences", 0),
        ("max_body_bytes", 2.5),
        ("max_pixels", -1),
        ("max_json_depth", None),
        ("timeout", float("inf")),
        ("timeout", float("nan")),
        ("timeout", 0),
        ("timeout", 1e12),
    ],
)
def test_limits_are_validated(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        Limits(**{field: value})


@pytest.mark.parametrize(
    "option",
    [
        ["--timeout", "inf"],
        ["--timeout", "nan"],
        ["--timeout", "-1"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--max-body-mib", "inf"],
        ["--max-body-mib", "0"],
        ["--max-concurrency", "0"],
        ["--max-connections", "0"],
        ["--max-inferences", "0"],
        ["--threads", "0"],
    ],
)
def test_serve_refuses_bad_numeric_options_in_one_line(option, tmp_path, capsys):
    """Checked before the model is loaded (the file does not exist here)."""
    assert main(["serve", str(tmp_path / "missing.onnx"), *option]) == 2
    err = capsys.readouterr().err
    name = option[0].lstrip("-")
    assert err.startswith("pyconcepts serve: error: ") and err.count("\n") == 1, err
    assert name in err or name.replace("-", "_") in err, err


def test_cli_export_writes_a_loadable_onnx(fitted, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert (
        main(["export", "--method", "ibd", "--explainer", str(fitted[0]), "--out", str(out)]) == 0
    )
    served = OnnxExplainer(out)
    assert served.method == "ibd" and served.output_names[:2] == ["logits", "concept_scores"]
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "logits, concept_scores" in printed
