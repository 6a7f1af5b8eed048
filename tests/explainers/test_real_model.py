"""Every method on the real EfficientNet-Lite0 with only (model, photos) given: defaults find
the layers, the fit runs, and the class map of chelsea's class lands on the cat half of a
cat-and-espresso picture (more than a uniform map, about as much as Grad-CAM at the same
layer). Skipped with the reason where the ``[imagenet]`` extra is absent; CI installs it.
Run lengths are shortened (epochs, iterations), nothing else."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from pyconcepts.attribution.gradcam import grad_cam

pytest.importorskip("skimage", reason="the photos need scikit-image (the [imagenet] extra)")


@pytest.fixture(scope="module")
def setting(effnet: torch.nn.Module) -> dict[str, Any]:
    from pyconcepts.data.photos import cat_and_cup, left_half_mass, photo_batch

    picture = cat_and_cup(effnet)
    with torch.no_grad():
        cat = int(effnet(photo_batch(effnet, 1)).argmax(1))  # chelsea's class
    cam = grad_cam(effnet, effnet.zoo_info["feature_layer"], picture, torch.tensor([cat])).cam
    return {
        "images": photo_batch(effnet, 24),  # each photo 3 times: SRAE needs >1 positive
        "picture": picture,
        "cat": cat,
        "gradcam": left_half_mass(cam[0]),
    }


def _concepts(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    from pyconcepts.data import ConceptWorld

    world = ConceptWorld(16, image_size=(224, 224), seed=0)
    pre = model.preprocessing
    mean, std = (torch.tensor(v)[:, None, None] for v in (pre.mean, pre.std))
    return (world.image(slice(None)) - mean) / std, world.concept_masks(slice(None))


def _factories(model: torch.nn.Module, images: torch.Tensor) -> dict[str, Callable[[], Any]]:
    from pyconcepts.explainers import IBD, MACE, SRAE, AfI, FilterPatterns

    with torch.no_grad():
        labels = model(images).argmax(1)
    return {
        "mace": lambda: MACE(model, epochs=2).fit(images, progress=False),
        "srae": lambda: SRAE(model, epochs=20).fit(images, progress=False),
        "afi": lambda: AfI(model, max_iter=1, impression_steps=0).fit((images, labels)),
        "pattern_mining": lambda: FilterPatterns(model, batch_size=4).fit(images),
        "ibd": lambda: IBD(model, steps=5, mining_rounds=0).fit(_concepts(model)),
    }


@pytest.mark.parametrize("method", ["mace", "srae", "afi", "pattern_mining", "ibd"])
def test_defaults_explain_the_cat_on_a_real_model(effnet, setting, method) -> None:
    from pyconcepts.data.photos import left_half_mass

    explainer = _factories(effnet, setting["images"])[method]()
    assert "_swish@1" in repr(explainer)  # the layer it found (EfficientNet's head activation)
    result = explainer.explain(setting["picture"], targets=[setting["cat"]])
    assert result.targets.tolist() == [setting["cat"]]
    assert result.class_names[setting["cat"]].endswith("cat")
    mass = left_half_mass(result.class_map(0))
    assert mass > 0.6, f"{method}: {mass:.3f} of the class map on the cat half"
    assert mass > setting["gradcam"] - 0.15, (
        f"{method}: {mass:.3f} vs Grad-CAM {setting['gradcam']:.3f}"
    )
