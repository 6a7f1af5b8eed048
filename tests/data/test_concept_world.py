import numpy as np
import pytest
import torch

from pyconcepts.data import CONCEPTS, ConceptWorld, iter_batches
from pyconcepts.data.concept_world import (
    COLOURS,
    SHAPES,
    TEXTURES,
    _satisfies,
    _spec_ids,
)


def test_items_have_the_documented_types_and_shapes(small_world):
    image, label, masks, presence = small_world[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label.dtype == torch.int64 and 0 <= int(label) < 10
    assert masks.shape == (16, 64, 64) and masks.dtype == torch.bool
    assert torch.equal(presence, masks.flatten(1).any(1).float())


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = ConceptWorld(40, seed=3), ConceptWorld(40, seed=3), ConceptWorld(40, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_every_image_satisfies_exactly_its_own_class(small_world):
    specs = [[_spec_ids(s) for s in v] for v in small_world.classes.values()]
    for i in range(len(small_world)):
        parts = [tuple(int(v) for v in p[:3]) for p in small_world.parts[i] if p[0] >= 0]
        satisfied = [c for c, s in enumerate(specs) if _satisfies(parts, s)]
        assert satisfied == [int(small_world.labels[i])]


def test_masks_are_the_pixels_of_parts_with_that_attribute(small_world):
    # independent reading: a pixel owned by part p belongs to p's shape, colour and texture
    i = 5
    owner = small_world.owner[i].long()
    masks = small_world.concept_masks(i)
    expected = torch.zeros_like(masks)
    for p, row in enumerate(small_world.parts[i]):
        if row[0] < 0:
            continue
        for name in (
            f"shape:{SHAPES[int(row[0])]}",
            f"colour:{COLOURS[int(row[1])]}",
            f"texture:{TEXTURES[int(row[2])]}",
        ):
            expected[CONCEPTS.index(name)] |= owner == p
    assert torch.equal(masks, expected)


def test_defining_concepts_are_present_in_images_of_the_class(small_world):
    matrix = small_world.class_concept_matrix()
    presence = small_world.concept_presence(slice(None))
    for c in range(len(small_world.class_names)):
        rows = presence[small_world.labels == c]
        # occlusion may hide a part's pixels now and then, but rarely
        assert rows[:, matrix[c]].mean() > 0.9


def test_classes_are_balanced_enough():
    world = ConceptWorld(1000, seed=1)
    counts = np.bincount(world.labels.numpy(), minlength=10)
    assert counts.min() > 60


def test_render_parts_removes_and_adds_concepts(small_world):
    full = small_world.render_parts(0)
    assert torch.allclose(full, small_world.image(0), atol=1 / 255)
    blank = small_world.blank(0)
    assert not torch.allclose(blank, full)
    added = small_world.render_parts(
        0,
        keep=torch.zeros(small_world.parts.shape[1], dtype=torch.bool),
        extra=[small_world.part("circle", "red", "solid", 0.5, 0.5)],
    )
    centre = added[:, 32, 32]
    assert centre[0] > 0.8 and centre[1] < 0.3  # a red pixel at the centre


def test_non_square_and_bad_arguments():
    world = ConceptWorld(4, image_size=48)
    assert world.images.shape == (4, 3, 48, 48) and world.shape == (48, 48)
    with pytest.raises(ValueError, match="n_images"):
        ConceptWorld(0)
    for bad in (16, (48,), (48, 16), (48.0, 64), "64"):
        with pytest.raises(ValueError, match="image_size"):
            ConceptWorld(3, image_size=bad)
    with pytest.raises(ValueError, match="n_distractors"):
        ConceptWorld(3, n_distractors=(2, 1))
    with pytest.raises(IndexError):
        world[4]


def test_iter_batches_accepts_tensors_pairs_datasets_and_loaders(small_world):
    x, y = small_world.tensors()
    assert [b[0].shape[0] for b in iter_batches(x[:10], 4)] == [4, 4, 2]
    pairs = list(iter_batches((x[:10], y[:10]), 5))
    assert torch.equal(pairs[1][1], y[5:10])
    from_dataset = next(iter(iter_batches(small_world, 8)))
    assert from_dataset[0].shape == (8, 3, 64, 64) and from_dataset[1].shape == (8,)
    with pytest.raises(TypeError, match="data"):
        next(iter_batches(42))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(x, 0))


def test_non_square_worlds_keep_parts_inside_and_masks_aligned():
    """(height, width) worlds: parts lie inside the image, masks match the rendered pixels, and
    re-rendering reproduces the image — so no height/width swap hides in the renderer."""
    world = ConceptWorld(40, image_size=(40, 72), seed=2)
    assert world.images.shape == (40, 3, 40, 72) and world.shape == (40, 72)
    masks = world.concept_masks(slice(None))
    assert masks.shape == (40, len(CONCEPTS), 40, 72)
    real = world.parts[..., 0] >= 0
    cx, cy, r = (world.parts[..., i][real] for i in (3, 4, 5))
    assert bool((cx - 0.9 * r >= 0).all() and (cx + 0.9 * r <= 72).all())
    assert bool((cy - 0.9 * r >= 0).all() and (cy + 0.9 * r <= 40).all())
    assert bool((masks.flatten(2).any(-1).float() == world.concept_presence(slice(None))).all())
    for i in range(3):
        again = (world.render_parts(i) * 255).round().to(torch.uint8)
        assert torch.equal(again, world.images[i])
    assert ConceptWorld(3, image_size=(64, 64), seed=1).images.equal(
        ConceptWorld(3, image_size=64, seed=1).images
    )


def _carriers(world, i, cid):
    """Slots of image i's parts that carry concept cid."""
    ids = world.concept_ids_of_parts(i)
    return (ids == cid).any(-1).nonzero().flatten().tolist()


@pytest.mark.parametrize("concept", ["colour:red", "texture:stripes", "shape:circle"])
def test_changing_a_concept_removes_it_and_leaves_the_rest_of_the_image(small_world, concept):
    cid = small_world.concepts.index(concept)
    present = small_world.concept_presence(slice(None))[:, cid].nonzero().flatten()[:8]
    edited = small_world.intervene(present, concept)
    assert edited.shape == (len(present), 3, 64, 64) and edited.dtype == torch.float32
    for row, i in enumerate(present.tolist()):
        before = small_world.image(i)
        parts = small_world.parts[i]
        slots = _carriers(small_world, i, cid)
        changed = ~torch.isclose(edited[row], before).all(0)
        touched = torch.isin(small_world.owner[i].long(), torch.tensor(slots))
        if concept.startswith("shape:"):
            # a new outline: only pixels within the carrying parts' discs may change
            yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
            near = torch.zeros(64, 64, dtype=torch.bool)
            for s in slots:
                cx, cy, r = (float(v) for v in parts[s, 3:6])
                near |= (xx - cx) ** 2 + (yy - cy) ** 2 <= (r * 1.5) ** 2
            assert not bool((changed & ~near).any())
        else:
            assert not bool((changed & ~touched).any())  # only the part's own pixels
            assert bool(changed.any())
        assert torch.equal(edited[row][:, ~changed], before[:, ~changed])
    # edits are deterministic
    rerendered = small_world.intervene(present[:1], cid)
    assert torch.equal(rerendered[0], edited[0])


def test_a_change_takes_the_next_value_of_the_same_kind_and_keeps_the_others(small_world):
    red = small_world.concepts.index("colour:red")
    i = int(small_world.concept_presence(slice(None))[:, red].nonzero()[0])
    slot = _carriers(small_world, i, red)[0]
    part = small_world.parts[i, slot]
    pixels = small_world.owner[i] == slot
    edited = small_world.intervene(i, "colour:red")
    bright = edited[:, pixels].amax(1)  # the brightest pixel of the part = its colour
    assert torch.allclose(bright, torch.tensor([0.15, 0.80, 0.20]), atol=1 / 255)  # green
    assert int(part[1]) == 0  # stored parts are not modified
    assert torch.equal(small_world.owner[i] == slot, pixels)


def test_removing_a_concept_deletes_its_parts(small_world):
    dots = small_world.concepts.index("texture:dots")
    i = int(small_world.concept_presence(slice(None))[:, dots].nonzero()[0])
    slots = _carriers(small_world, i, dots)
    keep = torch.ones(small_world.parts.shape[1], dtype=torch.bool)
    keep[slots] = False
    removed = small_world.intervene(i, dots, mode="remove")
    assert torch.allclose(removed, small_world.render_parts(i, keep=keep), atol=1 / 255)


def test_images_without_the_concept_are_unchanged_and_existing_calls_too(small_world):
    magenta = small_world.concepts.index("colour:magenta")
    absent = (small_world.concept_presence(slice(None))[:, magenta] == 0).nonzero().flatten()[:5]
    assert torch.equal(small_world.intervene(absent, magenta), small_world.image(absent))
    again = ConceptWorld(300, seed=7)  # intervening leaves the world as generated
    assert torch.equal(again.images, small_world.images)
    assert torch.equal(again.parts, small_world.parts)


def test_intervene_refuses_unknown_concepts_and_modes(small_world):
    with pytest.raises(ValueError, match="concept"):
        small_world.intervene(0, "colour:purple")
    with pytest.raises(ValueError, match="concept"):
        small_world.intervene(0, 16)
    with pytest.raises(ValueError, match="mode"):
        small_world.intervene(0, 0, mode="blur")
