"""concept_maps / concept_map_stats: compiled kernels vs torch conv2d+relu vs the reference twin.

Oracle: ``torch.nn.functional.conv2d`` + ``relu`` (+ torch reductions for the statistics).
Edge cases covered: B = 0 (empty result, allowed; M = 0 and D = 0 are refused, as by conv2d),
D = 1, M = 1, H != W, 1x1 spatial, non-contiguous x (channels_last, a transposed H/W view, a
channel slice), float32 and float64.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyconcepts import _backends
from pyconcepts.ops import concept_map_stats, concept_maps
from pyconcepts.reference import concept_maps as reference

cm_module = importlib.import_module("pyconcepts.ops.concept_maps")

needs_cpu = pytest.mark.skipif(_backends.core() is None, reason="compiled CPU core not built")

LAYOUTS = ("contiguous", "channels_last", "transposed", "channel_slice")


def make_x(batch, channels, height, width, dtype, layout, gen, device="cpu"):
    """x of the given logical shape, stored in the given memory layout."""
    if layout == "transposed":  # a [B,D,W,H] tensor viewed as [B,D,H,W]
        return (
            torch.randn(batch, channels, width, height, dtype=dtype, generator=gen)
            .to(device)
            .transpose(2, 3)
        )
    if layout == "channel_slice":  # every other channel of a wider tensor
        return torch.randn(batch, 2 * channels, height, width, dtype=dtype, generator=gen).to(
            device
        )[:, ::2]
    x = torch.randn(batch, channels, height, width, dtype=dtype, generator=gen).to(device)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def oracle(x, weight, bias):
    return torch.relu(torch.nn.functional.conv2d(x, weight[:, :, None, None], bias))


def tolerances(dtype, channels):
    """float32 sums of D products in a different order: the error grows with D."""
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-11 * channels}
    return {"rtol": 1e-5, "atol": 2e-6 * channels}


shapes = st.tuples(
    st.integers(0, 3),  # B
    st.integers(1, 40),  # D
    st.integers(1, 20),  # M
    st.integers(1, 6),  # H
    st.integers(1, 6),  # W
)


# a make_problem draw (with dtype parametrised separately)
problems = given(
    shape=shapes,
    layout=st.sampled_from(LAYOUTS),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)


def make_problem(shape, dtype, layout, with_bias, seed):
    """x (in ``layout``), weight and optional bias of a ``shapes`` draw, and the generator."""
    batch, channels, n_maps, height, width = shape
    gen = torch.Generator().manual_seed(seed)
    x = make_x(batch, channels, height, width, dtype, layout, gen)
    weight = torch.randn(n_maps, channels, dtype=dtype, generator=gen)
    bias = torch.randn(n_maps, dtype=dtype, generator=gen) if with_bias else None
    return x, weight, bias, gen


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@problems
def test_forward_matches_conv2d_and_reference(shape, dtype, layout, with_bias, seed):
    batch, channels, n_maps, height, width = shape
    x, weight, bias, _ = make_problem(shape, dtype, layout, with_bias, seed)
    out = concept_maps(x, weight, bias)
    assert out.shape == (batch, n_maps, height, width)
    assert out.is_contiguous()
    tol = tolerances(dtype, channels)
    torch.testing.assert_close(out, oracle(x, weight, bias), **tol)
    torch.testing.assert_close(out, reference.concept_maps(x, weight, bias), **tol)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_many_tiles(dtype, layout):
    """Several register tiles, column chunks cutting images, partial edge tiles on both axes."""
    gen = torch.Generator().manual_seed(1)
    x = make_x(9, 300, 7, 7, dtype, layout, gen)
    weight = torch.randn(37, 300, dtype=dtype, generator=gen) / 10
    bias = torch.randn(37, dtype=dtype, generator=gen)
    torch.testing.assert_close(
        concept_maps(x, weight, bias), oracle(x, weight, bias), **tolerances(dtype, 300)
    )


def stats_oracle(x, weight, bias, threshold):
    maps = oracle(x, weight, bias)
    return maps.amax((2, 3)), maps.mean((2, 3)), (maps > threshold).to(x.dtype).mean((2, 3)), maps


def assert_stats_close(got, x, weight, bias, threshold):
    tol = tolerances(x.dtype, x.shape[1])
    want_max, want_mean, want_frac, maps = stats_oracle(x, weight, bias, threshold)
    torch.testing.assert_close(got.max, want_max, **tol)
    torch.testing.assert_close(got.mean, want_mean, **tol)
    # Positions within rounding of the threshold may fall either side.
    borderline = ((maps - threshold).abs() <= tol["atol"] + tol["rtol"] * maps.abs()).to(x.dtype)
    slack = borderline.sum((2, 3)) / (x.shape[2] * x.shape[3])
    assert bool(((got.frac_above - want_frac).abs() <= slack + 1e-12).all())


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(
    shape=shapes,
    layout=st.sampled_from(LAYOUTS),
    with_bias=st.booleans(),
    threshold=st.floats(-1.0, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_stats_match_torch_reductions(shape, dtype, layout, with_bias, threshold, seed):
    batch, channels, n_maps = shape[:3]
    x, weight, bias, _ = make_problem(shape, dtype, layout, with_bias, seed)
    got = concept_map_stats(x, weight, bias, threshold)
    assert all(t.shape == (batch, n_maps) and t.dtype == dtype for t in got)
    assert_stats_close(got, x, weight, bias, threshold)
    ref = reference.concept_map_stats(x, weight, bias, threshold)
    torch.testing.assert_close(got.max, ref.max, **tolerances(dtype, channels))


@needs_cpu
@pytest.mark.parametrize("shape", [(5, 300, 7, 7), (2, 20, 30, 17), (40, 16, 1, 1)])
def test_stats_many_tiles(shape):
    """Image groups, images longer than a column chunk, and many images per register tile."""
    gen = torch.Generator().manual_seed(2)
    x = make_x(*shape, torch.float64, "contiguous", gen)
    weight = torch.randn(19, shape[1], dtype=torch.float64, generator=gen)
    bias = torch.randn(19, dtype=torch.float64, generator=gen)
    assert_stats_close(concept_map_stats(x, weight, bias, 0.3), x, weight, bias, 0.3)


@needs_cpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(layout, with_bias):
    gen = torch.Generator().manual_seed(3)
    x = make_x(2, 5, 3, 4, torch.float64, layout, gen).requires_grad_()
    weight = torch.randn(6, 5, dtype=torch.float64, generator=gen).requires_grad_()
    bias = (
        torch.randn(6, dtype=torch.float64, generator=gen).requires_grad_() if with_bias else None
    )
    assert torch.autograd.gradcheck(lambda *a: concept_maps(*a, backend="cpu"), (x, weight, bias))


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "needs", [(True, True, True), (True, False, False), (False, True, True), (False, False, True)]
)
def test_backward_matches_autograd_of_reference(dtype, needs):
    """Multiple k-blocks, m-blocks and d-panels in the grad_W GEMM; partial gradient requests."""
    gen = torch.Generator().manual_seed(4)
    base = (
        make_x(3, 70, 5, 9, dtype, "contiguous", gen),
        torch.randn(75, 70, dtype=dtype, generator=gen) / 8,
        torch.randn(75, dtype=dtype, generator=gen),
    )
    grad_out = torch.randn(3, 75, 5, 9, dtype=dtype, generator=gen)
    grads = []
    for fn in (concept_maps, reference.concept_maps):
        inputs = [t.clone().requires_grad_(need) for t, need in zip(base, needs)]
        fn(*inputs).backward(grad_out)
        grads.append([t.grad for t in inputs])
    tol = tolerances(dtype, 3 * 5 * 9)  # grad_W sums over B*H*W terms
    for got, want in zip(*grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **tol)


@needs_cpu
def test_empty_batch():
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    out = concept_maps(x, weight, bias)
    assert out.shape == (0, 5, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))
    assert concept_map_stats(x.detach(), weight.detach()).max.shape == (0, 5)
    assert concept_maps(torch.randn(2, 4, 0, 3), weight.detach()).shape == (2, 5, 0, 3)


@needs_cpu
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_nan_and_inf_are_errors_naming_the_argument(backend):
    """NaN/inf never come out: in weight/bias they are refused up front, in x they are found in
    the maps or statistics (tests/ops/test_special_values.py tries many such inputs)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen)
    weight = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    weight[0, 1] = 1.0  # +inf in channel 1 reaches a map (all-negative weights make it ReLU's 0)
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="x: expected finite"):
            concept_maps(x_bad, weight, backend=backend)
        with pytest.raises(ValueError, match="x: expected finite"):
            concept_map_stats(x_bad, weight, None, 0.1, backend=backend)
        with pytest.raises(ValueError, match="weight: expected finite"):
            concept_maps(x, weight.clone().fill_(bad), backend=backend)
        with pytest.raises(ValueError, match="bias: expected finite"):
            concept_map_stats(x, weight, torch.full((4,), bad, dtype=x.dtype), backend=backend)


@needs_cpu
def test_stats_with_grad_uses_differentiable_reference():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, dtype=torch.float64)
    stats = concept_map_stats(x, weight)
    stats.mean.sum().backward()
    assert x.grad is not None


def test_reference_backend_forced_and_fallback_dtype():
    x = torch.randn(2, 3, 4, 5)
    weight = torch.randn(6, 3)
    torch.testing.assert_close(
        concept_maps(x, weight, backend="reference"), oracle(x, weight, None)
    )
    got = concept_map_stats(x, weight, None, 0.2, backend="reference")
    assert_stats_close(got, x, weight, None, 0.2)
    half = concept_maps(x.bfloat16(), weight.bfloat16())  # no compiled bfloat16: reference
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), oracle(x, weight, None), rtol=0.05, atol=0.1)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (
            (torch.randn(3, 4, 5), torch.randn(2, 3)),
            ValueError,
            r"x: expected a 4-D tensor.*got shape \(3, 4, 5\)",
        ),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(2, 4)),
            ValueError,
            r"weight: expected shape \[M, 3\].*got \(2, 4\)",
        ),
        ((torch.randn(1, 3, 2, 2), torch.randn(3)), ValueError, r"weight: expected a 2-D tensor"),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(2, 3), torch.randn(3)),
            ValueError,
            r"bias: expected shape \[2\].*got \(3,\)",
        ),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(2, 3), torch.randn(2, 1)),
            ValueError,
            r"bias: expected shape \[2\]",
        ),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(2, 3).double()),
            TypeError,
            r"weight: expected dtype torch.float32.*got torch.float64",
        ),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(2, 3, device="meta")),
            ValueError,
            r"weight: expected device cpu.*got meta",
        ),
        (
            (torch.ones(1, 3, 2, 2, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64)),
            TypeError,
            r"x: expected a floating-point tensor",
        ),
        (
            (torch.randn(1, 0, 2, 2), torch.randn(2, 0)),
            ValueError,
            r"x: expected at least one channel",
        ),
        (
            (torch.randn(1, 3, 2, 2), torch.randn(0, 3)),
            ValueError,
            r"weight: expected at least one concept",
        ),
        (([[1.0]], torch.randn(2, 3)), TypeError, r"x: expected a torch.Tensor, got list"),
    ],
)
def test_bad_inputs(args, error, match):
    with pytest.raises(error, match=match):
        concept_maps(*args)
    with pytest.raises(error, match=match):
        concept_map_stats(*args)


def test_bad_stats_arguments():
    x, weight = torch.randn(1, 3, 2, 2), torch.randn(2, 3)
    with pytest.raises(TypeError, match="threshold: expected a real number, got str"):
        concept_map_stats(x, weight, None, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x: expected H\*W >= 1"):
        concept_map_stats(torch.randn(1, 3, 0, 2), weight)
    with pytest.raises(ValueError, match="backend: expected one of"):
        concept_maps(x, weight, backend="gpu")


# ---- CUDA (the cuda marker skips these without a usable GPU: see tests/conftest.py) ----


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 70, 37, 5, 9), (9, 300, 100, 7, 7), (1, 1, 1, 1, 1)])
def test_cuda_forward_backward_stats(dtype, layout, shape):
    batch, channels, n_maps, height, width = shape
    gen = torch.Generator().manual_seed(5)
    x_cpu = make_x(batch, channels, height, width, dtype, layout, gen)
    weight_cpu = torch.randn(n_maps, channels, dtype=dtype, generator=gen) / math.sqrt(channels)
    bias_cpu = torch.randn(n_maps, dtype=dtype, generator=gen)
    grad_cpu = torch.randn(batch, n_maps, height, width, dtype=dtype, generator=gen)
    tol = tolerances(dtype, channels)
    if dtype == torch.float32:  # the oracle runs on the CPU; precision="fp32": no TF32
        tol = {"rtol": 1e-4, "atol": 1e-5 * channels}
    results = {}
    for device in ("cuda", "cpu"):
        x, weight, bias = (
            t.to(device, copy=True).requires_grad_() for t in (x_cpu, weight_cpu, bias_cpu)
        )
        if device == "cuda":
            out = concept_maps(x, weight, bias, backend="cuda")
        else:
            out = reference.concept_maps(x, weight, bias)
        out.backward(grad_cpu.to(device))
        with torch.no_grad():
            if device == "cuda":
                stats = concept_map_stats(x, weight, bias, 0.25, backend="cuda")
            else:
                stats = reference.concept_map_stats(x, weight, bias, 0.25)
        results[device] = [out, x.grad, weight.grad, bias.grad, stats.max, stats.mean]
    for got, want in zip(results["cuda"], results["cpu"]):
        torch.testing.assert_close(got.cpu(), want, **tol)


@pytest.mark.cuda
def test_cuda_gradcheck_and_frac():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    weight = torch.randn(6, 5, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    bias = torch.randn(6, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: concept_maps(*a, backend="cuda"), (x, weight, bias))
    with torch.no_grad():
        got = concept_map_stats(x, weight, bias, 0.4)
        assert_stats_close(
            type(got)(*(t.cpu() for t in got)), x.cpu(), weight.cpu(), bias.cpu(), 0.4
        )


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_tf32_is_opt_in_and_close(layout):
    """precision="tf32" rounds the GEMM inputs to 10-bit mantissas: about 1e-3 relative error
    (on a GPU with TF32 tensor cores); "fp32" stays within float32 rounding."""
    gen = torch.Generator().manual_seed(8)
    x = make_x(4, 256, 7, 7, torch.float32, layout, gen)
    weight = torch.randn(50, 256, generator=gen) / 16
    bias = torch.randn(50, generator=gen)
    want = reference.concept_maps(x.double(), weight.double(), bias.double()).float()
    args = (x.cuda(), weight.cuda(), bias.cuda())
    for precision, tol in (("fp32", 1e-4), ("tf32", 2e-2)):
        got = concept_maps(*args, backend="cuda", precision=precision).cpu()
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        stats = concept_map_stats(*args, 0.1, backend="cuda", precision=precision)
        torch.testing.assert_close(stats.max.cpu(), want.amax((2, 3)), rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("chunk_bytes", [1, 4 * 5 * 6 * 4, 10**9])
def test_cuda_stats_in_chunks(monkeypatch, chunk_bytes):
    """The statistics of chunks of positions (1 byte: one position at a time), of whole images
    (one image's maps: 5 x 24 float32) and of one chunk agree with the reference."""
    monkeypatch.setattr(cm_module, "STATS_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 7, 4, 6, generator=gen)
    weight, bias = torch.randn(5, 7, generator=gen), torch.randn(5, generator=gen)
    got = concept_map_stats(x.cuda(), weight.cuda(), bias.cuda(), 0.2, backend="cuda")
    assert_stats_close(type(got)(*(t.cpu() for t in got)), x, weight, bias, 0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(
    shape=shapes,
    layout=st.sampled_from(LAYOUTS),
    with_bias=st.booleans(),
    chunk_bytes=st.sampled_from([1, 7, 64, 4 * 5 * 6 * 4, 10**9]),
    with_nan=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cuda_chunk_planning_with_the_torch_reducer(
    shape, dtype, layout, with_bias, chunk_bytes, with_nan, seed
):
    """The CUDA path's chunking (runs of positions when one image's maps exceed the chunk,
    several whole images otherwise) with the kernel's torch twin as the reducer, on the CPU:
    equal to the materialised statistics; a NaN in the features makes its maps' max and mean
    NaN, as on the other backends."""
    height = shape[3]
    x, weight, bias, _ = make_problem(shape, dtype, layout, with_bias, seed)
    if with_nan and x.numel():
        x = x.clone()
        x[0, 0, height - 1, 0] = float("nan")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cm_module, "STATS_CHUNK_BYTES", chunk_bytes)
        got = cm_module._chunked_stats(x, weight, bias, 0.2, reference.stats_chunk)
    stats = type(reference.concept_map_stats(x, weight, bias, 0.2))(*got)
    if with_nan and x.numel():
        assert bool(stats.max[0].isnan().all()) and bool(stats.mean[0].isnan().all())
        x, stats = x[1:], type(stats)(*(t[1:] for t in stats))
    assert_stats_close(stats, x, weight, bias, 0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@problems
def test_cuda_path_with_the_torch_epilogue(shape, dtype, layout, with_bias, seed):
    """The CUDA path's autograd function (GEMM, epilogue into a contiguous output whatever
    the product's strides, backward through the ReLU mask) with the epilogue's torch twin on
    the CPU: outputs and all three gradients equal the reference's autograd."""
    x, weight, bias, gen = make_problem(shape, dtype, layout, with_bias, seed)
    inputs = [t.requires_grad_(True) for t in (x, weight, bias) if t is not None]
    channels = shape[1]
    out = cm_module._ConceptMapsCuda.apply(x, weight, bias, "fp32", reference.bias_relu)
    want = reference.concept_maps(x, weight, bias)
    tol = tolerances(dtype, channels)
    torch.testing.assert_close(out, want, **tol)
    if out.numel() == 0:
        return
    grad = torch.randn(out.shape, dtype=dtype, generator=gen)
    got = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(want, inputs, grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tol)


def test_cuda_path_gradcheck_with_the_torch_epilogue():
    gen = torch.Generator().manual_seed(5)
    x = make_x(2, 4, 3, 2, torch.float64, "channels_last", gen).requires_grad_(True)
    weight = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    apply = cm_module._ConceptMapsCuda.apply
    assert torch.autograd.gradcheck(
        lambda *a: apply(*a, "fp32", reference.bias_relu), (x, weight, bias)
    )


def test_precision_is_checked():
    x, weight = torch.randn(1, 3, 2, 2), torch.randn(2, 3)
    for fn in (concept_maps, concept_map_stats):
        with pytest.raises(ValueError, match="precision: expected 'fp32' or 'tf32', got 'fp16'"):
            fn(x, weight, precision="fp16")


def test_cuda_precision_flags_are_restored():
    """The TF32 switch is scoped to the call: the caller's torch settings come back."""

    def flags():
        matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            return matmul.fp32_precision, conv.fp32_precision
        return matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    before = flags()
    for precision, inside in (("tf32", ("tf32", True)), ("fp32", ("ieee", False))):
        with cm_module._cuda_precision(precision):
            assert all(f in inside for f in flags())
        assert flags() == before
    with pytest.raises(RuntimeError), cm_module._cuda_precision("tf32"):
        raise RuntimeError("restored on errors too")
    assert flags() == before
