"""The layout helpers shared by the explainers' explain modules."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts.explainers.layout import smooth, upsample


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    out_h=st.integers(1, 70),
    out_w=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_upsample_equals_bilinear_interpolation(h, w, out_h, out_w, dtype, seed):
    maps = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    want = F.interpolate(maps, size=(out_h, out_w), mode="bilinear", align_corners=False)
    got = upsample(maps, (out_h, out_w))
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, atol=1e-5 if dtype == torch.float32 else 1e-6, rtol=0)


def test_upsample_accepts_any_leading_axes():
    maps = torch.rand(7, 8, 8)
    assert upsample(maps, (64, 48)).shape == (7, 64, 48)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    sigma=st.floats(0.2, 6.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_smooth_equals_a_replicate_padded_gaussian_convolution(h, w, sigma, dtype, seed):
    """Oracle: the truncated (3σ) normalised Gaussian as a separable conv2d over the maps
    padded by repeating their border (radius may exceed the map: the border repeats)."""
    maps = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    radius = math.ceil(3 * sigma)
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(d**2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(dtype)
    x = F.pad(maps.reshape(6, 1, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, -1, 1)), taps.view(1, 1, 1, -1))
    want = x.view(2, 3, h, w)
    got = smooth(maps, sigma)
    assert got.shape == maps.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, atol=1e-5 if dtype == torch.float32 else 1e-9, rtol=0)
    assert smooth(maps, 0.0) is maps
