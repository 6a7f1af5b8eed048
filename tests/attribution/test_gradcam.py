import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts.attribution import grad_cam
from pyconcepts.models import cw_vgg


def test_matches_a_hand_written_grad_cam_and_works_under_no_grad():
    torch.manual_seed(0)
    model = cw_vgg().eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen models must work too
    x = torch.rand(4, 3, 64, 64)
    targets = torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        result = grad_cam(model, "features.relu4", x, targets, upsample=False)
    # independent reading: split the network at the layer and differentiate by hand
    acts = model.features[:-1](x).requires_grad_(True)  # up to relu4
    pooled = model.features.pool4(acts)
    logits = model.fc2(model.relu_fc1(model.fc1(model.flatten(pooled))))
    logits.gather(1, targets[:, None]).sum().backward()
    alpha = acts.grad.mean((2, 3))
    expected = torch.relu((alpha[:, :, None, None] * acts.detach()).sum(1))
    assert torch.allclose(result.cam, expected, atol=1e-6)
    assert torch.allclose(result.logits, logits.detach(), atol=1e-6)
    assert torch.equal(result.targets, targets)


def test_upsamples_to_input_size_and_defaults_to_predictions():
    model = cw_vgg().eval()
    x = torch.rand(2, 3, 64, 64)
    result = grad_cam(model, "features.relu4", x)
    assert result.cam.shape == (2, 64, 64) and bool((result.cam >= 0).all())
    assert torch.equal(result.targets, model(x).argmax(1))
    with pytest.raises(ValueError, match="targets"):
        grad_cam(model, "features.relu4", x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="images"):
        grad_cam(model, "features.relu4", torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="conv layer"):
        grad_cam(model, "fc1", x)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6), d=st.integers(1, 5), k=st.integers(1, 6), hw=st.integers(1, 5),
    batch=st.integers(1, 7), budget=st.sampled_from([1, 200, 2**20]), seed=st.integers(0, 999),
)  # fmt: skip
def test_mean_class_weights_equal_a_per_class_gradient_loop(n, d, k, hw, batch, budget, seed):
    """Oracle: one ``torch.autograd.grad`` per class and image of a small random conv net."""
    from pyconcepts.attribution.gradcam import mean_class_weights

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, d, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(d * hw * hw, 8), torch.nn.Tanh(), torch.nn.Linear(8, k),
    ).double()  # fmt: skip
    images = torch.randn(n, 2, hw, hw, dtype=torch.float64)
    want = torch.zeros(k, d, dtype=torch.float64)
    for x in images:
        acts = net[:2](x[None]).detach().requires_grad_(True)
        logits = net[2:](acts)[0]
        for c in range(k):
            (g,) = torch.autograd.grad(logits[c], acts, retain_graph=True)
            want[c] += g[0].mean((1, 2)) / n
    got = mean_class_weights(net, "1", images, batch, budget)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_mean_class_weights_equal_one_grad_cam_per_class() -> None:
    """The batched backward passes give each class's mean Grad-CAM weights, as a loop of one
    Grad-CAM per class does, with any chunking of classes and images."""
    from pyconcepts.attribution.gradcam import grad_cam, mean_class_weights
    from pyconcepts.models import cw_vgg

    torch.manual_seed(0)
    model, images = cw_vgg().eval(), torch.rand(7, 3, 64, 64)
    loop = torch.stack([
        grad_cam(model, "features.relu4", images, torch.full((7,), k), upsample=False)
        .weights.mean(0)
        for k in range(10)
    ])  # fmt: skip
    for batch, budget in ((7, 64 * 2**20), (3, 1)):  # budget 1 byte: one class per pass
        got = mean_class_weights(model, "features.relu4", images, batch, budget)
        torch.testing.assert_close(got, loop, rtol=1e-4, atol=1e-6)
