"""The concept world: a procedural image data set with per-pixel ground-truth concept masks.

Every image shows a few *parts* over a cluttered background. A part has three attributes — a
shape, a colour and a texture — each of which is a **concept** (16 in all). A class is *defined*
by one or two part specifications (e.g. "a red circle and a striped square"); the concepts those
specifications name are the class's defining concepts (``world.class_concepts``). Distractor
parts with random attributes appear too; scenes are rejection-sampled so that every image
satisfies exactly the specification of its own class. Ground truth per image: the mask of every
concept (the pixels of the parts carrying it) and the concept presence vector.

Generation is vectorised in torch (≥2,000 images/s on 2 cores at 64×64) and deterministic given
the seed. Images are stored as uint8 and part geometry is kept, so any image can be re-rendered
with parts added or removed (``render_parts``), which concept-editing tests need, and with one
concept changed or removed (``intervene``): the model's reaction is the ground truth of which
concepts it uses (``pyconcepts.metrics.ground_truth``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

# Bumped whenever generation changes, so models cached for an older world are retrained.
WORLD_VERSION = 2
SHAPES = ("circle", "square", "triangle", "cross", "ring", "crescent")
COLOURS = ("red", "green", "blue", "yellow", "magenta")
TEXTURES = ("solid", "stripes", "checker", "dots", "grid")
CONCEPTS = tuple(
    [f"shape:{s}" for s in SHAPES]
    + [f"colour:{c}" for c in COLOURS]
    + [f"texture:{t}" for t in TEXTURES]
)
_COLOUR_OFFSET = len(SHAPES)
_TEXTURE_OFFSET = len(SHAPES) + len(COLOURS)
_RGB = torch.tensor(
    [
        [0.90, 0.15, 0.15],
        [0.15, 0.80, 0.20],
        [0.15, 0.30, 0.95],
        [0.95, 0.85, 0.10],
        [0.85, 0.20, 0.85],
    ]
)

# A part specification: (shape, colour, texture), None = any. A class = 1–2 specifications,
# each to be matched by a distinct part.
PartSpec = tuple[Optional[str], Optional[str], Optional[str]]
DEFAULT_CLASSES: dict[str, tuple[PartSpec, ...]] = {
    "red-circle+striped-square": (("circle", "red", None), ("square", None, "stripes")),
    "green-triangle": (("triangle", "green", None),),
    "blue-square+yellow-dots": (("square", "blue", None), (None, "yellow", "dots")),
    "checker-cross": (("cross", None, "checker"),),
    "magenta-ring+triangle": (("ring", "magenta", None), ("triangle", None, None)),
    "yellow-striped-crescent": (("crescent", "yellow", "stripes"),),
    "blue-circle+cross": (("circle", "blue", None), ("cross", None, None)),
    "green-grid+ring": ((None, "green", "grid"), ("ring", None, None)),
    "red-checker-square": (("square", "red", "checker"),),
    "dotted-crescent+green-circle": (("crescent", None, "dots"), ("circle", "green", None)),
}


@dataclass(frozen=True)
class _Part:
    shape: int
    colour: int
    texture: int
    cx: float
    cy: float
    radius: float
    angle: float


def _spec_ids(spec: PartSpec) -> tuple[int, int, int]:
    shape, colour, texture = spec
    return (
        -1 if shape is None else SHAPES.index(shape),
        -1 if colour is None else COLOURS.index(colour),
        -1 if texture is None else TEXTURES.index(texture),
    )


def _matches(part: tuple[int, int, int], spec: tuple[int, int, int]) -> bool:
    return all(s < 0 or s == a for a, s in zip(part, spec))


def _satisfies(
    parts: Sequence[tuple[int, int, int]], specs: Sequence[tuple[int, int, int]]
) -> bool:
    """True when distinct parts match every spec (specs ≤ 2, so a tiny search is exact)."""
    if len(specs) == 1:
        return any(_matches(p, specs[0]) for p in parts)
    return any(
        _matches(p, specs[0]) and _matches(q, specs[1])
        for i, p in enumerate(parts)
        for j, q in enumerate(parts)
        if i != j
    )


class ConceptWorld(Dataset):
    """A seeded, procedural data set of ``n_images`` images with concept ground truth.

    Items are ``(image, label, concept_masks, concept_presence)``: image float32 ``[3,H,W]`` in
    [0, 1], label int64, masks bool ``[K,H,W]`` and presence float32 ``[K]`` over the K=16
    concepts of ``world.concepts``.

    Args:
        n_images: number of images (≥ 1).
        image_size: side in pixels (≥ 32), or ``(height, width)`` for non-square images; parts
            scale with the shorter side.
        seed: the whole data set is a function of the seed.
        n_distractors: inclusive range of random distractor parts per image.
        classes: class name → part specifications; the default has 10 classes.
    """

    def __init__(
        self,
        n_images: int = 2000,
        image_size: int | tuple[int, int] = 64,
        seed: int = 0,
        n_distractors: tuple[int, int] = (0, 2),
        classes: Optional[dict[str, tuple[PartSpec, ...]]] = None,
    ) -> None:
        if not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images: expected an int >= 1, got {n_images!r}")
        height, width = _image_shape(image_size)
        lo, hi = n_distractors
        if not 0 <= lo <= hi <= 4:
            raise ValueError(f"n_distractors: expected 0 <= lo <= hi <= 4, got {n_distractors!r}")
        self.classes = dict(DEFAULT_CLASSES if classes is None else classes)
        self.class_names = tuple(self.classes)
        self.concepts = CONCEPTS
        self.image_size = image_size
        self.height, self.width = height, width
        self.seed = seed
        self._specs = [[_spec_ids(s) for s in specs] for specs in self.classes.values()]
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(self.classes), size=n_images)
        scenes = [self._sample_scene(int(c), rng, (lo, hi)) for c in labels]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.parts = _pack_parts(scenes)  # float32 [N, P, 7]
        self.backgrounds = torch.as_tensor(
            rng.normal(0.0, 1.0, size=(n_images, 4, 8, 8)), dtype=torch.float32
        )
        self.images = torch.empty(n_images, 3, height, width, dtype=torch.uint8)
        self.owner = torch.empty(n_images, height, width, dtype=torch.int8)
        for start in range(0, n_images, 512):
            stop = min(n_images, start + 512)
            img, own = render(self.parts[start:stop], self.backgrounds[start:stop], self.shape)
            self.images[start:stop] = (img * 255).round().to(torch.uint8)
            self.owner[start:stop] = own

    # ---- ground truth ------------------------------------------------------------------
    @property
    def class_concepts(self) -> dict[str, tuple[str, ...]]:
        """Class name → the concepts its definition names (its defining concepts)."""
        out = {}
        for name, specs in self.classes.items():
            names: list[str] = []
            for shape, colour, texture in specs:
                for kind, value in (("shape", shape), ("colour", colour), ("texture", texture)):
                    if value is not None and f"{kind}:{value}" not in names:
                        names.append(f"{kind}:{value}")
            out[name] = tuple(names)
        return out

    def class_concept_matrix(self) -> torch.Tensor:
        """Bool ``[n_classes, n_concepts]``: True where the concept defines the class."""
        m = torch.zeros(len(self.classes), len(self.concepts), dtype=torch.bool)
        for c, names in enumerate(self.class_concepts.values()):
            for name in names:
                m[c, self.concepts.index(name)] = True
        return m

    def concept_ids_of_parts(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """Concept ids ``[..., P, 3]`` (shape, colour, texture) of each part; -1 for no part."""
        p = self.parts[index]
        ids = torch.stack(
            [p[..., 0], p[..., 1] + _COLOUR_OFFSET, p[..., 2] + _TEXTURE_OFFSET], dim=-1
        ).long()
        return torch.where(p[..., :1] < 0, torch.full_like(ids, -1), ids)

    def concept_masks(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """Bool masks ``[..., K, H, W]`` of every concept for the indexed images."""
        owner = self.owner[index].long()  # [..., H, W], -1 = background
        ids = self.concept_ids_of_parts(index)  # [..., P, 3]
        k = len(self.concepts)
        # part -> concept membership [..., P+1, K] (row P = background: no concept)
        member = torch.zeros(*ids.shape[:-1], k, dtype=torch.bool)
        member.scatter_(-1, ids.clamp(min=0), (ids >= 0))
        member = torch.cat([member, torch.zeros_like(member[..., :1, :])], dim=-2)
        own = torch.where(owner < 0, torch.full_like(owner, member.shape[-2] - 1), owner)
        flat = own.flatten(-2)  # [..., HW]
        gathered = torch.gather(member, -2, flat.unsqueeze(-1).expand(*flat.shape, k))
        return gathered.transpose(-1, -2).reshape(*owner.shape[:-2], k, *owner.shape[-2:])

    def concept_presence(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """Float ``[..., K]``: 1 where the concept is visible in the image."""
        return self.concept_masks(index).flatten(-2).any(-1).float()

    @property
    def shape(self) -> tuple[int, int]:
        """Image ``(height, width)`` in pixels."""
        return self.height, self.width

    # ---- Dataset protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a ConceptWorld of {len(self)} images")
        masks = self.concept_masks(i)
        return self.image(i), self.labels[i], masks, masks.flatten(-2).any(-1).float()

    def image(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """Float32 image(s) in [0, 1]."""
        return self.images[index].float() / 255.0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (float32 ``[N,3,H,W]``) and labels — for training loops."""
        return self.image(slice(None)), self.labels

    # ---- editing -----------------------------------------------------------------------
    def render_parts(
        self, index: int, keep: Optional[torch.Tensor] = None, extra: Sequence[_Part] = ()
    ) -> torch.Tensor:
        """Re-render image ``index`` keeping the parts where ``keep`` is True, adding ``extra``.

        Returns a float32 ``[3,H,W]`` image on the same background, so a concept can be removed
        from or added to a real image and the model's reaction measured.
        """
        parts = self.parts[index].clone()
        if keep is not None:
            parts[~keep.bool()] = -1.0
        if extra:
            parts = torch.cat([parts, _pack_parts([list(extra)])[0]], dim=0)
        img, _ = render(parts[None], self.backgrounds[index][None], self.shape)
        return img[0]

    def intervene(
        self, index: torch.Tensor | slice | int, concept: str | int, mode: str = "change"
    ) -> torch.Tensor:
        """Image(s) ``index`` re-rendered with ``concept`` taken out: float32 ``[..., 3, H, W]``
        in [0, 1], quantised like the stored images; pixels the edit does not touch are those
        of ``image(index)``, byte for byte.

        ``mode="change"`` gives every part carrying the concept the next value of the same kind
        instead (shapes, colours and textures in the order of ``SHAPES``, ``COLOURS``,
        ``TEXTURES``, cyclically): the part stays, with its other two attributes, its place and
        size, so only that concept changes (a colour or texture change repaints the part's own
        pixels only; a shape change also repaints the pixels the old and new outlines do not
        share). ``mode="remove"`` deletes those parts (and so their other concepts too).
        Images without the concept are returned unchanged.

        Why: the model's reaction to the edit (the drop of its class logit, a flipped
        prediction) is the ground truth of how much it *uses* the concept in that image, which
        explanations are scored against (``pyconcepts.metrics.ground_truth``).
        """
        cid = self.concepts.index(concept) if concept in self.concepts else concept
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < len(self.concepts):
            raise ValueError(
                f"concept: expected a name in world.concepts or an id in [0, "
                f"{len(self.concepts)}), got {concept!r}"
            )
        if mode not in ("change", "remove"):
            raise ValueError(f"mode: expected 'change' or 'remove', got {mode!r}")
        parts = self.parts[index].clone()
        backgrounds = self.backgrounds[index]
        single = parts.dim() == 2
        if single:
            parts, backgrounds = parts[None], backgrounds[None]
        kind = 0 if cid < _COLOUR_OFFSET else 1 if cid < _TEXTURE_OFFSET else 2
        offset, n_values = ((0, len(SHAPES)), (_COLOUR_OFFSET, len(COLOURS)),
                            (_TEXTURE_OFFSET, len(TEXTURES)))[kind]  # fmt: skip
        carrying = (parts[..., 0] >= 0) & (parts[..., kind] == cid - offset)
        if mode == "remove":
            parts[carrying] = -1.0
        else:
            parts[..., kind] = torch.where(
                carrying, (parts[..., kind] + 1).remainder(n_values), parts[..., kind]
            )
        img, owner = render(parts, backgrounds, self.shape)
        stored, before = self.images[index], self.owner[index]
        if single:
            stored, before = stored[None], before[None]
        # the pixels of edited parts, before or after the edit: the only ones that may change
        slots = torch.arange(parts.shape[1])
        touched = torch.zeros_like(owner, dtype=torch.bool)
        for own in (before.long(), owner.long()):
            hit = (own[..., None] == slots) & carrying[:, None, None, :]
            touched |= hit.any(-1)
        out = torch.where(touched[:, None], (img * 255).round(), stored.float()) / 255
        return out[0] if single else out

    def blank(self, index: int = 0) -> torch.Tensor:
        """The background of image ``index`` with no parts."""
        return self.render_parts(index, keep=torch.zeros(self.parts.shape[1], dtype=torch.bool))

    def part(self, shape: str, colour: str, texture: str, cx: float, cy: float) -> _Part:
        """A part of the given attributes at relative position (cx, cy) ∈ [0,1]², mean size."""
        return _Part(
            SHAPES.index(shape), COLOURS.index(colour), TEXTURES.index(texture),
            cx * self.width, cy * self.height, 0.14 * min(self.shape), 0.0,
        )  # fmt: skip

    # ---- sampling ----------------------------------------------------------------------
    def _sample_scene(
        self, label: int, rng: np.random.Generator, n_distr: tuple[int, int]
    ) -> list[_Part]:
        specs = self._specs[label]
        others = [s for c, s in enumerate(self._specs) if c != label]
        for _ in range(200):
            attrs = [_fill(spec, rng) for spec in specs]
            if any(_satisfies(attrs, o) for o in others):
                continue
            for _ in range(int(rng.integers(n_distr[0], n_distr[1] + 1))):
                for _ in range(20):
                    cand = _fill((-1, -1, -1), rng)
                    if not any(_satisfies([*attrs, cand], o) for o in others):
                        attrs.append(cand)
                        break
            order = rng.permutation(len(attrs))
            geometry = _place(len(attrs), self.shape, rng)
            if geometry is None:
                continue
            parts = []
            for i, (cx, cy, r, a) in zip(order, geometry):
                shape, colour, texture = attrs[i]
                parts.append(_Part(shape, colour, texture, cx, cy, r, a))
            return parts
        raise RuntimeError(f"could not sample a scene for class {self.class_names[label]!r}")


def _fill(spec: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    sizes = (len(SHAPES), len(COLOURS), len(TEXTURES))
    return tuple(int(rng.integers(n)) if s < 0 else s for s, n in zip(spec, sizes))  # type: ignore[return-value]


def _image_shape(image_size: object) -> tuple[int, int]:
    """``(height, width)`` of an ``image_size`` argument: a side, or a (height, width) pair."""
    sides = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    if len(sides) != 2 or not all(isinstance(v, int) and v >= 32 for v in sides):
        raise ValueError(
            f"image_size: expected an int >= 32 or a (height, width) pair of them, "
            f"got {image_size!r}"
        )
    return int(sides[0]), int(sides[1])


def _place(
    n: int, shape: tuple[int, int], rng: np.random.Generator
) -> Optional[list[tuple[float, float, float, float]]]:
    """Centres, radii and angles of n parts that overlap at most slightly (None if it fails).
    Radii scale with the shorter side of the ``(height, width)`` image."""
    height, width = shape
    out: list[tuple[float, float, float, float]] = []
    for _ in range(n):
        for _ in range(60):
            r = float(rng.uniform(0.13, 0.19)) * min(shape)
            margin = r * 0.9
            cx, cy = (float(v) for v in rng.uniform(margin, (width - margin, height - margin)))
            if all(math.hypot(cx - x, cy - y) >= 0.85 * (r + q) for x, y, q, _ in out):
                out.append((cx, cy, r, float(rng.uniform(0, 2 * math.pi))))
                break
        else:
            return None
    return out


def _pack_parts(scenes: Sequence[Sequence[_Part]]) -> torch.Tensor:
    n_max = max(1, max(len(s) for s in scenes))
    table = np.full((len(scenes), n_max, 7), -1.0, dtype=np.float32)
    for i, scene in enumerate(scenes):
        for j, p in enumerate(scene):
            table[i, j] = (p.shape, p.colour, p.texture, p.cx, p.cy, p.radius, p.angle)
    return torch.from_numpy(table)


def _shape_mask(u: torch.Tensor, v: torch.Tensor, shape: int) -> torch.Tensor:
    """Inside-mask of one shape; u, v are part-frame coordinates in units of the radius."""
    if shape == 0:  # circle
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if shape == 2:  # triangle: three half-planes at inradius 0.5
        edges = [
            u * math.cos(a) + v * math.sin(a)
            for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)
        ]
        return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2]) <= 0.5
    if shape == 3:  # cross
        au, av = u.abs(), v.abs()
        return torch.minimum(torch.maximum(au, av / 2.5), torch.maximum(av, au / 2.5)) <= 0.38
    r2 = u * u + v * v
    if shape == 4:  # ring
        return (r2 <= 1.0) & (r2 >= 0.2)
    return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.55)  # crescent


def _texture_on(u: torch.Tensor, v: torch.Tensor, texture: int) -> torch.Tensor:
    """Bright-pixel mask of one texture; u, v in pixels of the part frame (period 5 px)."""
    if texture == 0:  # solid
        return torch.ones_like(u, dtype=torch.bool)
    if texture == 1:  # stripes
        return torch.sin(u * (2 * math.pi / 5)) > 0
    if texture == 2:  # checker, 4 px cells
        return (torch.floor(u / 4) + torch.floor(v / 4)).remainder(2) == 0
    du = u - 5.0 * torch.round(u / 5.0)
    dv = v - 5.0 * torch.round(v / 5.0)
    if texture == 3:  # dots
        return du * du + dv * dv < 2.2
    return torch.minimum(du.abs(), dv.abs()) < 0.8  # grid


def _upsample_matrix(size: int, n: int = 8) -> torch.Tensor:
    """[size, n] bilinear interpolation weights (align_corners=False), as a matrix."""
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * n / size - 0.5).clamp(0, n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    frac = pos - lo
    m = torch.zeros(size, n)
    m[torch.arange(size), lo] = 1 - frac
    m[torch.arange(size), lo + 1] += frac
    return m


def render(
    parts: torch.Tensor, backgrounds: torch.Tensor, image_shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``parts`` [N,P,7] over ``backgrounds`` [N,4,8,8] at ``image_shape`` = (H, W) →
    (images [N,3,H,W], owner [N,H,W]).

    Owner holds the index of the part visible at each pixel (later parts occlude earlier ones),
    -1 for background. Each part is rasterised in its own bounding patch (only its own shape
    and texture are evaluated), then pasted in order.
    """
    n, p_max, _ = parts.shape
    height, width = image_shape
    up_h = _upsample_matrix(height, backgrounds.shape[-2])
    up_w = _upsample_matrix(width, backgrounds.shape[-1])
    noise = up_h @ backgrounds @ up_w.T  # smooth noise [N,4,H,W]
    image = (0.45 + 0.10 * noise[:, :1] + 0.04 * noise[:, 1:]).clamp(0, 1).flatten(2)
    owner = torch.full((n, height * width), -1, dtype=torch.int8)
    flat = parts.reshape(n * p_max, 7)
    real = (flat[:, 0] >= 0).nonzero().squeeze(1)
    if real.numel() == 0:
        return image.view(n, 3, height, width), owner.view(n, height, width)
    shape, colour, texture = (flat[real, i].long() for i in range(3))
    cx, cy, radius, angle = (flat[real, i].view(-1, 1, 1) for i in range(3, 7))
    half = math.ceil(float(radius.max())) + 1
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    px = torch.floor(cx) + offsets.view(1, 1, -1)  # pixel columns of each patch
    py = torch.floor(cy) + offsets.view(1, -1, 1)  # pixel rows
    dx, dy = px + 0.5 - cx, py + 0.5 - cy
    cos, sin = torch.cos(angle), torch.sin(angle)
    u_px, v_px = cos * dx + sin * dy, cos * dy - sin * dx
    inside = torch.zeros(u_px.shape, dtype=torch.bool)
    bright = torch.empty(u_px.shape)
    for s in range(len(SHAPES)):
        sel = (shape == s).nonzero().squeeze(1)
        if sel.numel():
            inside[sel] = _shape_mask(u_px[sel] / radius[sel], v_px[sel] / radius[sel], s)
    for t in range(len(TEXTURES)):
        sel = (texture == t).nonzero().squeeze(1)
        if sel.numel():
            bright[sel] = torch.where(_texture_on(u_px[sel], v_px[sel], t), 1.0, 0.35)
    inside &= (px >= 0) & (px < width) & (py >= 0) & (py < height)
    fill = _RGB[colour][:, :, None] * bright.flatten(1)[:, None]  # [R,3,h*w]
    flat_index = (py.clamp(0, height - 1) * width + px.clamp(0, width - 1)).long().flatten(1)
    image_of, slot_of = real // p_max, real % p_max
    for j in range(p_max):  # paste slot by slot so later parts occlude earlier ones
        rows = (slot_of == j).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        imgs, idx, m = image_of[rows], flat_index[rows], inside[rows].flatten(1)
        idx3 = idx[:, None].expand(-1, 3, -1)
        sub = image[imgs]
        sub.scatter_(2, idx3, torch.where(m[:, None], fill[rows], sub.gather(2, idx3)))
        image[imgs] = sub
        own = owner[imgs]
        own.scatter_(1, idx, torch.where(m, torch.tensor(j, dtype=torch.int8), own.gather(1, idx)))
        owner[imgs] = own
    return image.view(n, 3, height, width), owner.view(n, height, width)


def train_test(
    n_train: int = 6000, n_test: int = 1000, image_size: int | tuple[int, int] = 64, seed: int = 0
) -> tuple[ConceptWorld, ConceptWorld]:
    """The standard pair of disjointly seeded train and test worlds."""
    return (
        ConceptWorld(n_train, image_size, seed=seed),
        ConceptWorld(n_test, image_size, seed=seed + 1_000_003),
    )
