"""Excitation backprop against hand-written propagation (numpy, dense matrices, explicit loops)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyconcepts.attribution.excitation import excitation_backprop


def _mwp_dense(weight: np.ndarray, x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(x_j) = sum_i x_j w+_ij / sum_j' x_j' w+_ij' * P(y_i), written as loops."""
    out = np.zeros_like(x)
    for i in range(weight.shape[0]):
        wp = np.maximum(weight[i], 0.0)
        denom = float(np.dot(wp, x))
        if denom <= 1e-12:
            continue
        for j in range(x.shape[0]):
            out[j] += x[j] * wp[j] / denom * p[i]
    return out


def test_two_layer_mlp_by_hand() -> None:
    w1 = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]])
    b1 = np.array([0.1, 0.2])
    w2 = np.array([[2.0, -1.0], [-0.5, 1.5]])
    x = np.array([0.4, 0.2, 0.9])
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w1))
        net[0].bias.copy_(torch.from_numpy(b1))
        net[2].weight.copy_(torch.from_numpy(w2))
    h = np.maximum(w1 @ x + b1, 0.0)  # [0.1, 0.2+0.12+0.14-0.9 -> 0] -> h = [0.35, 0]
    for target in (0, 1):
        seed = np.eye(2)[target]
        p_h_pos = _mwp_dense(w2, h, seed)
        p_h_neg = _mwp_dense(-w2, h, seed)
        mwp = _mwp_dense(w1, x, p_h_pos)
        cmwp = np.maximum(mwp - _mwp_dense(w1, x, p_h_neg), 0.0)
        got = excitation_backprop(net, torch.from_numpy(x)[None], target, contrastive=False)
        np.testing.assert_allclose(got[0, 0].numpy(), mwp, rtol=1e-12, atol=1e-12)
        got_c = excitation_backprop(net, torch.from_numpy(x)[None], target)
        np.testing.assert_allclose(got_c[0, 0].numpy(), cmwp, rtol=1e-12, atol=1e-12)
    # Plain MWP conserves probability mass where every unit on the path is excited.
    assert excitation_backprop(net, torch.from_numpy(x)[None], 0, contrastive=False).sum() == (
        pytest.approx(1.0)
    )


def _dense(op: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear op (no bias) found by probing it with basis vectors."""
    n = int(np.prod(shape))
    cols = []
    with torch.no_grad():
        for k in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[k] = 1.0
            cols.append(op(e.reshape(1, *shape)).reshape(-1).numpy())
    return np.stack(cols, axis=1)


def test_conv_pool_network_against_dense_oracle() -> None:
    torch.manual_seed(0)
    conv1 = nn.Conv2d(2, 3, 3, padding=1)
    conv2 = nn.Conv2d(3, 2, 2, stride=1)
    fc = nn.Linear(2 * 2 * 2, 3)
    net = nn.Sequential(
        conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.AvgPool2d(1), nn.Flatten(), fc
    ).double()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    got = excitation_backprop(net, x, [0, 2], layer=net[2])  # maps at the max-pool output
    assert got.shape == (2, 2, 3, 3)
    for b in range(2):
        with torch.no_grad():
            a1 = net[2](net[1](net[0](x[b : b + 1])))  # [1,3,3,3] pooled activations
            a2 = net[4](net[3](a1))  # [1,2,2,2]
        m2 = _dense(lambda t: nn.functional.conv2d(t, conv2.weight), (3, 3, 3))
        for t, target in enumerate((0, 2)):
            seed = np.eye(3)[target]
            v2 = a2.reshape(-1).numpy()
            p2 = _mwp_dense(fc.weight.detach().numpy(), v2, seed) - _mwp_dense(
                -fc.weight.detach().numpy(), v2, seed
            )
            p1 = _mwp_dense(m2, a1.reshape(-1).numpy(), p2)
            want = np.maximum(p1.reshape(3, 3, 3).sum(0), 0.0)
            np.testing.assert_allclose(got[b, t].numpy(), want, rtol=1e-10, atol=1e-12)


def test_avgpool_rule_and_input_maps() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    ).double()
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    got = excitation_backprop(net, x, 1, contrastive=False)
    conv = net[0]
    with torch.no_grad():
        a = net[1](conv(x))  # [1,2,3,3]
        pooled = a.mean(dim=(2, 3)).reshape(-1).numpy()
    p_pool = _mwp_dense(net[4].weight.detach().numpy(), pooled, np.eye(2)[1])
    p_a = _mwp_dense(_dense(nn.AdaptiveAvgPool2d(1), (2, 3, 3)), a.reshape(-1).numpy(), p_pool)
    p_x = _mwp_dense(
        _dense(lambda t: nn.functional.conv2d(t, conv.weight), (1, 5, 5)),
        x.reshape(-1).numpy(),
        p_a,
    )
    np.testing.assert_allclose(got[0, 0].numpy(), p_x.reshape(5, 5), rtol=1e-10, atol=1e-12)


def test_batchnorm_is_folded_into_the_conv() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0]))
    head = nn.Linear(3, 2)
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    folded_conv = nn.Conv2d(2, 3, 3, padding=1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded_conv.weight.copy_(conv.weight * scale[:, None, None, None])
        folded_conv.bias.copy_(bn.bias - bn.running_mean * scale)
    folded = nn.Sequential(folded_conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(net(x), folded(x))
    torch.testing.assert_close(
        excitation_backprop(net, x, [0, 1]), excitation_backprop(folded, x, [0, 1])
    )


def test_output_layer_scalar_and_per_sample_targets() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(5, 4)
    # A hidden unit of the first layer: only that layer's weights matter (contrastive at it).
    got = excitation_backprop(net, x, [1, 4], output_layer=net[1])
    w = net[0].weight.detach().double().numpy()
    for b in range(5):
        for t, unit in enumerate((1, 4)):
            seed = np.eye(6)[unit]
            xb = x[b].double().numpy()
            want = np.maximum(_mwp_dense(w, xb, seed) - _mwp_dense(-w, xb, seed), 0.0)
            if net[0](x[b])[unit] <= 0:  # a ReLU that is off passes nothing
                want = np.zeros_like(want)
            np.testing.assert_allclose(got[b, t].numpy(), want, rtol=1e-5, atol=1e-6)
    per_sample = excitation_backprop(net, x, torch.tensor([0, 1, 1, 0, 1]))
    both = excitation_backprop(net, x, [0, 1])
    torch.testing.assert_close(
        per_sample[:, 0], both[torch.arange(5), torch.tensor([0, 1, 1, 0, 1])]
    )
    named = excitation_backprop(net, x, 2, output_layer="2")
    assert named.shape == (5, 1, 4)


def test_errors_are_clear() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="GELU"):
        excitation_backprop(net, torch.rand(1, 3), 0)
    mlp = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="non-negative"):
        excitation_backprop(mlp, -torch.ones(1, 3), 0)
    with pytest.raises(ValueError, match="no layer named"):
        excitation_backprop(mlp, torch.rand(1, 3), 0, layer="nope")
    with pytest.raises(ValueError, match="indices"):
        excitation_backprop(mlp, torch.rand(1, 3), 7)
    bn_net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="eval"):
        excitation_backprop(bn_net, torch.rand(2, 3), 0)
    # The model's hooks are removed afterwards, also after an error.
    assert all(not m._forward_hooks for m in bn_net.modules())


def test_upsampled_maps_and_normalised_inputs_with_a_layer() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.randn(2, 3, 8, 8)  # normalised images: negative pixels are fine above the first ReLU
    maps = excitation_backprop(net, x, [0, 1, 2], layer=net[2], size=(8, 8))
    assert maps.shape == (2, 3, 8, 8)
    assert bool((maps >= 0).all())


def test_forward_only_twin_matches_the_hooks() -> None:
    from pyconcepts.models import cw_vgg
    from pyconcepts.reference.excitation import chain_of, excitation_backprop_chain

    torch.manual_seed(5)
    model = cw_vgg(n_classes=4, image_size=32).eval()
    x = (torch.rand(3, 3, 32, 32) * 2).floor() / 2  # flat regions: ties in max pooling
    chain = [m for _, m in chain_of(model, x[:1])]
    targets = torch.tensor([[0, 3], [1, 2], [2, 2]])
    want = excitation_backprop(model, x, targets)
    got = excitation_backprop_chain(chain, x, targets)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # maps read at an intermediate layer (after the second ReLU), upsampled
    names = [n for n, _ in chain_of(model, x[:1])]
    stop = names.index("features.relu2")
    want = excitation_backprop(model, x, targets, layer="features.relu2", size=(32, 32))
    got = excitation_backprop_chain(chain, x, targets, stop=stop, size=(32, 32))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_chain_of_rejects_non_chains() -> None:
    from pyconcepts.reference.excitation import chain_of

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x) + self.a(x)

    with pytest.raises(ValueError, match="chain"):
        chain_of(Residual(), torch.rand(1, 3))


def test_no_autograd_graph_outlives_a_call() -> None:
    """Each layer's node used to keep its output, whose grad_fn kept the node: a reference cycle
    through autograd that gc cannot collect, so every call leaked its graph (found by the
    explainer contract's memory check)."""
    import gc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.rand(2, 3, 8, 8)

    def live_tensors() -> int:
        gc.collect()
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    excitation_backprop(model, x, [0, 1])
    before = live_tensors()
    for _ in range(5):
        excitation_backprop(model, x, [0, 1])
    assert live_tensors() == before


class _SamePadConv(nn.Conv2d):
    """A convolution with its own forward: static zero padding, then the convolution (as
    EfficientNet's TensorFlow-style "same" convolutions)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, bias=False)
        self.static_padding = nn.ZeroPad2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(self.static_padding(x), self.weight)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _head(c: int, n: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n)]


def test_relu6_passes_the_signal_of_active_units_saturated_or_not() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU6(), nn.Linear(5, 3)).double()
    x = torch.rand(3, 4, dtype=torch.float64) * 20
    with torch.no_grad():
        pre = net[0](x)
    assert bool((pre > 6).any()) and bool((pre < 0).any())  # saturated and inactive units
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed exactly: no fallback warning
        got = excitation_backprop(net, x, [0, 2], contrastive=False)
    w1, w2 = net[0].weight.detach().numpy(), net[2].weight.detach().numpy()
    for b in range(3):
        h = pre[b].clamp(0, 6).numpy()
        for t, target in enumerate((0, 2)):
            p_h = _mwp_dense(w2, h, np.eye(3)[target]) * (pre[b].numpy() > 0)
            want = _mwp_dense(w1, x[b].numpy(), p_h)
            np.testing.assert_allclose(got[b, t].numpy(), want, rtol=1e-10, atol=1e-12)


def test_zero_padding_and_convolutions_with_their_own_forward() -> None:
    torch.manual_seed(7)
    plain = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    same = _SamePadConv(2, 3)
    with torch.no_grad():
        same.weight.copy_(plain.weight)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.2, -0.5, 0.8]))
    unpadded = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        unpadded.weight.copy_(plain.weight)
    head = _head(3, 2)
    reference = nn.Sequential(plain, bn, nn.ReLU(), *head).double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    for net in (
        nn.Sequential(same, bn, nn.ReLU(), *head),
        nn.Sequential(nn.ZeroPad2d(1), unpadded, bn, nn.ReLU(), *head),
        nn.Sequential(nn.ConstantPad2d(1, 0.0), _Identity(), unpadded, bn, nn.ReLU6(), *head),
    ):
        net.double()
        torch.testing.assert_close(net(x), reference(x))
        torch.testing.assert_close(
            excitation_backprop(net, x, [0, 1]), excitation_backprop(reference, x, [0, 1])
        )
    with pytest.raises(ValueError, match=r"ConstantPad2d with value 1\.0"):
        excitation_backprop(nn.Sequential(nn.ConstantPad2d(1, 1.0), plain, *head), x, 0)
    with pytest.raises(ValueError, match=r"does not support layer\(s\) 1 \(_Double\)"):
        excitation_backprop(nn.Sequential(plain, _Double(), *head), x, 0)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.conv(x))


def _gradient_x_activation(model: nn.Module, acts: torch.Tensor, logits_of, target: int):
    leaf = acts.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(logits_of(leaf)[:, target].sum(), leaf)
    return (g * leaf.detach()).clamp(min=0).sum(1)


def test_a_residual_sum_falls_back_to_gradient_x_activation_with_a_warning() -> None:
    torch.manual_seed(8)
    stem = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    block, head = _Residual(), nn.Sequential(*_head(3, 4))
    net = nn.Sequential(stem, block, head).eval()
    x = torch.rand(2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"AddBackward0 x1.*positive part of gradient x activ"):
        got = excitation_backprop(net, x, [1, 3], layer="0.1")
    with torch.no_grad():
        acts = stem(x)
    for t, target in enumerate((1, 3)):
        want = _gradient_x_activation(net, acts, lambda a: head(block(a)), target)
        torch.testing.assert_close(got[:, t], want)
    # read above the residual block, the rule follows the model exactly again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        excitation_backprop(net, x, 1, layer="1")


def test_negative_activations_inside_the_model_fall_back_too() -> None:
    torch.manual_seed(9)
    bottleneck = nn.Sequential(  # a linear bottleneck: no activation after the second conv
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1), nn.ReLU(),
        *_head(2, 2),
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"negative inputs to excited layers \(3 \(Conv2d"):
        maps = excitation_backprop(bottleneck, torch.rand(1, 3, 4, 4), 0, layer="1")
    assert maps.shape == (1, 1, 4, 4) and bool((maps >= 0).all())


def test_layers_of_a_module_that_runs_twice_are_named_by_call() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.act, self.pool, self.fc = nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.act(self.conv2(self.act(self.conv1(x))))).flatten(1))

    torch.manual_seed(10)
    net = Shared().eval()
    x = torch.rand(2, 3, 6, 6)
    first = excitation_backprop(net, x, [0, 1], layer="act@0")
    second = excitation_backprop(net, x, [0, 1], layer="act@1")
    assert first.shape == second.shape == (2, 2, 6, 6) and not torch.equal(first, second)
    with pytest.raises(ValueError, match=r"layer: 'act' runs more than once .* 'act@0'"):
        excitation_backprop(net, x, 0, layer="act")
    # a target may be what a module receives (fc's input is the pooled, flattened vector)
    into_fc = excitation_backprop(net, x, [0, 1], output_layer="fc:input")
    torch.testing.assert_close(into_fc, excitation_backprop(net, x, [0, 1], output_layer="pool"))
    with pytest.raises(ValueError, match="layer: 'fc:input' names a module's input"):
        excitation_backprop(net, x, 0, layer="fc:input")


def test_forward_only_twin_covers_relu6_and_zero_padding() -> None:
    from pyconcepts.reference.excitation import chain_of, excitation_backprop_chain

    torch.manual_seed(11)
    model = nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 5, 4) * 8
    chain = [m for _, m in chain_of(model, x[:1])]
    targets = torch.tensor([[0, 2], [1, 1]])
    torch.testing.assert_close(
        excitation_backprop_chain(chain, x, targets),
        excitation_backprop(model, x, targets),
        rtol=1e-4,
        atol=1e-7,
    )
    with pytest.raises(ValueError, match="only non-negative zero padding"):
        chain_of(nn.Sequential(nn.ConstantPad2d(1, 0.5), nn.Conv2d(3, 1, 1)), x[:1])


def test_forward_only_twin_covers_global_average_pooling() -> None:
    """Global average pooling, as most CNNs end, read at the pixels and at a feature map."""
    from pyconcepts.reference.excitation import chain_of, excitation_backprop_chain

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 9, 7)
    chain = [m for _, m in chain_of(model, x[:1])]
    targets = torch.tensor([[0, 2], [1, 1]])
    kw = {"rtol": 1e-4, "atol": 1e-7}
    got = excitation_backprop_chain(chain, x, targets)
    torch.testing.assert_close(got, excitation_backprop(model, x, targets), **kw)
    got = excitation_backprop_chain(chain, x, targets, stop=3, size=(9, 7))
    want = excitation_backprop(model, x, targets, layer="3", size=(9, 7))
    torch.testing.assert_close(got, want, **kw)
    assert float(want.sum()) > 0
    with pytest.raises(ValueError, match="only global average pooling"):
        chain_of(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(2)), x[:1])


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5),
    k=st.integers(1, 4), double=st.booleans(), transposed=st.booleans(),
    zero_channel=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_global_average_pooling_rule_against_dense_oracle(
    b: int, c: int, h: int, w: int, k: int, double: bool, transposed: bool, zero_channel: bool,
    seed: int,
) -> None:  # fmt: skip
    """The forward-only twin's global-pooling link, the hook version and the dense MWP rule
    with the pooling matrix (weights 1/HW) agree: any sizes (1 × 1 maps too), float32 and
    float64, non-contiguous inputs, a channel that is zero everywhere (it receives nothing)."""
    from pyconcepts.reference.excitation import chain_of, excitation_backprop_chain

    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, k)).to(dtype)
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(k, c, generator=gen))
    x = torch.rand(b, c, w, h, generator=gen, dtype=dtype).transpose(2, 3) if transposed \
        else torch.rand(b, c, h, w, generator=gen, dtype=dtype)  # fmt: skip
    if zero_channel:
        x[:, 0] = 0
    targets = torch.randint(0, k, (b, 2), generator=gen)
    chain = [m for _, m in chain_of(model, x[:1])]
    with torch.no_grad():
        got = excitation_backprop_chain(chain, x, targets)
    tol = {"rtol": 1e-10, "atol": 1e-12} if double else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(got, excitation_backprop(model, x, targets), **tol)
    weight = model[2].weight.detach().double().numpy()
    pool = _dense(nn.AdaptiveAvgPool2d(1), (c, h, w))
    for i in range(b):
        a = x[i].double().reshape(-1).numpy()
        for j in range(2):
            seed_p = np.eye(k)[int(targets[i, j])]
            pooled = pool @ a
            p_pool = _mwp_dense(weight, pooled, seed_p) - _mwp_dense(-weight, pooled, seed_p)
            p_a = _mwp_dense(pool, a, p_pool).reshape(c, h, w)
            if zero_channel:
                assert not p_a[0].any()
            want = np.maximum(p_a.sum(0), 0.0)
            np.testing.assert_allclose(got[i, j].double().numpy(), want, **tol)


def _cat_beside_coffee(photos: dict) -> np.ndarray:
    """A 256x256 photo: chelsea's face on the left half, the espresso cup on the right (the
    model's 224 crop keeps 112 columns of each)."""
    from PIL import Image

    halves = []
    for name in ("chelsea", "coffee"):
        im = Image.fromarray(photos[name])
        width = round(im.size[0] * 256 / im.size[1])
        im = im.resize((width, 256), Image.Resampling.BILINEAR)
        left = (width - 128) // 2
        halves.append(np.asarray(im.crop((left, 0, left + 128, 256))))
    return np.concatenate(halves, axis=1)


def test_efficientnet_heatmaps_find_the_cat(effnet, photos) -> None:
    from pyconcepts.models import discover_layers

    x = effnet.preprocess(_cat_beside_coffee(photos))
    with torch.no_grad():
        logits = effnet(x)[0]
    cat = max((281, 282, 285), key=lambda c: float(logits[c]))
    assert int(logits.argmax()) == cat
    layer = discover_layers(effnet, x).feature_map
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the head is followed exactly: no fallback
        maps = excitation_backprop(effnet, x, [cat, 967], layer=layer, size=(224, 224))
    assert maps.shape == (1, 2, 224, 224) and bool(torch.isfinite(maps).all())
    assert bool((maps >= 0).all())
    left = maps[0, :, :, :112].sum((1, 2)) / maps[0].sum((1, 2))
    assert float(left[0]) > 0.9  # measured 0.98; a uniform map has 0.5
    assert float(left[1]) < 0.1  # the espresso map sits on the cup (measured 0.06)


def test_efficientnet_blocks_fall_back_with_a_warning(effnet, photos) -> None:
    x = effnet.preprocess([photos["chelsea"], _cat_beside_coffee(photos)])
    with pytest.warns(UserWarning, match=r"AddBackward0 x9.*negative inputs to excited layers"):
        pixels = excitation_backprop(effnet, x[:1], 285)
    assert pixels.shape == (1, 1, 224, 224) and bool(torch.isfinite(pixels).all())
    assert bool((pixels >= 0).all()) and float(pixels.sum()) > 0
    with pytest.warns(UserWarning, match="negative inputs"):
        maps = excitation_backprop(effnet, x[1:], [285, 967], layer="_blocks.15._swish@1")
    left = maps[0, :, :, :3].sum((1, 2)) / maps[0].sum((1, 2))  # 7x7 map: 3.5 columns per photo
    assert bool(torch.isfinite(maps).all()) and bool((maps >= 0).all())
    assert float(left[0]) > float(left[1])  # the cat's map lies further left than the cup's
