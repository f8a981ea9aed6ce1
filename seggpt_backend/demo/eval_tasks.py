"""An evaluation-only family of in-context segmentation tasks, independent of the training generator.

**Never used for training or for choosing a training recipe**: :mod:`seggpt_backend.demo.train`
does not import this module (``tests/test_eval_tasks.py`` checks it) and ``bench/quality.py``
reports it as its own column. It was written separately from :mod:`seggpt_backend.demo.synthetic`
and shares none of its drawing code; what it shares is only the principle that makes a task
in-context rather than colour matching: an object's *class* is a (shape, fill texture) pair and
targets and distractors take their colours from one small palette per image.

What differs from the training generator:

- shapes: capsule, rhombus, irregular blob (random radial harmonics), L-block, square frame,
  half-disc, plus two pairs that differ only by texture (capsule, rhombus);
- textures: speckle (random per-pixel mix), concentric rings, two-tone halves, outline;
- backgrounds: colour tiles, sine plasma, random thin scribbles, each under a smooth lighting
  gradient;
- layouts: object sizes from 6 % to 40 % of the short side, anisotropic stretch, centres
  anywhere in the image so objects are cut by the border, sometimes a cluster of targets;
- rendering: 2 x supersampled (anti-aliased) edges, the mask being coverage >= 1/2;
- images: each prompt and the query gets its own size, aspect ratios from 1:2 to 2:1.

Every task is binary ``semantic`` (segment every object of the prompt's class) and returned as a
:class:`~seggpt_backend.demo.synthetic.Task` (``split="heldout"``, ``meta["family"] = "eval"``),
a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seggpt_backend.demo.synthetic import Task

FAMILY = "eval"
SIZES: tuple[tuple[int, int], ...] = (
    (96, 192),
    (192, 96),
    (128, 176),
    (176, 128),
    (160, 160),
    (112, 224),
    (224, 112),
    (144, 144),
)
_SS = 2  # supersampling factor


@dataclass(frozen=True)
class EvalClass:
    name: str
    shape: str
    texture: str


EVAL_CLASSES: tuple[EvalClass, ...] = (
    EvalClass("capsule", "capsule", "flat"),
    EvalClass("speckled_capsule", "capsule", "speckle"),
    EvalClass("rhombus", "rhombus", "flat"),
    EvalClass("ringed_rhombus", "rhombus", "rings"),
    EvalClass("blob", "blob", "halves"),
    EvalClass("l_block", "lblock", "flat"),
    EvalClass("frame", "frame", "flat"),
    EvalClass("half_disc", "halfdisc", "outline"),
)


@dataclass
class _Thing:
    cls: EvalClass
    fill: np.ndarray
    second: np.ndarray
    harmonics: np.ndarray  # blob outline: (k, 2) amplitude, phase
    target: bool


def _shape(name: str, u: np.ndarray, v: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """Inside test in the object's frame (extent about [-1, 1]^2)."""
    if name == "capsule":
        x = np.clip(u, -0.55, 0.55)
        return np.hypot(u - x, v) <= 0.42
    if name == "rhombus":
        return np.abs(u) / 1.0 + np.abs(v) / 0.62 <= 1.0
    if name == "blob":
        theta = np.arctan2(v, u)
        r = 0.72 + sum(a * np.cos((k + 2) * theta + ph) for k, (a, ph) in enumerate(harmonics))
        return np.hypot(u, v) <= r
    if name == "lblock":
        vert = (u >= -0.8) & (u <= -0.2) & (np.abs(v) <= 0.9)
        foot = (u >= -0.8) & (u <= 0.8) & (v >= 0.3) & (v <= 0.9)
        return vert | foot
    if name == "frame":
        outer = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
        inner = (np.abs(u) <= 0.55) & (np.abs(v) <= 0.55)
        return outer & ~inner
    if name == "halfdisc":
        return (np.hypot(u, v) <= 0.95) & (v <= 0.1)
    raise ValueError(f"unknown shape {name!r}")


def _texture(
    name: str, u: np.ndarray, v: np.ndarray, inside: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Weight of the second colour per (supersampled) pixel."""
    if name == "flat":
        return np.zeros(u.shape, dtype=np.float32)
    if name == "speckle":
        return (rng.random(u.shape) < 0.4).astype(np.float32)
    if name == "rings":
        return (np.cos(np.hypot(u, v) * 9 * np.pi) > 0).astype(np.float32)
    if name == "halves":
        return (u > 0).astype(np.float32)
    if name == "outline":  # second colour on the object's own boundary band
        pad = np.pad(inside, 3, constant_values=False)
        eroded = np.ones_like(inside)
        h, w = inside.shape
        for dy in (-3, 0, 3):
            for dx in (-3, 0, 3):
                eroded &= pad[3 + dy : 3 + dy + h, 3 + dx : 3 + dx + w]
        return (inside & ~eroded).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # colour tiles
        th, tw = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        tiles = rng.uniform(0, 255, ((h // th) + 2, (w // tw) + 2, 3)).astype(np.float32)
        img = tiles[(yy // th).astype(int), (xx // tw).astype(int)]
    elif kind == 1:  # sine plasma
        img = np.zeros((h, w, 3), dtype=np.float32)
        for c in range(3):
            f1, f2 = rng.uniform(0.01, 0.08, 2)
            p1, p2 = rng.uniform(0, 2 * np.pi, 2)
            img[..., c] = 127 + 60 * np.sin(xx * f1 + p1) + 60 * np.sin(yy * f2 + p2)
    else:  # scribbles: thin random segments on a flat colour (thin: thicker ones look like capsules)
        img = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (h, w, 3)).copy()
        for _ in range(int(rng.integers(4, 12))):
            (y0, y1), (x0, x1) = rng.uniform(0, h, 2), rng.uniform(0, w, 2)
            d = np.array([y1 - y0, x1 - x0], dtype=np.float32)
            t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
            dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
            img[dist <= rng.uniform(0.6, 1.5)] = rng.uniform(0, 255, 3)
    return img


def _render(rng: np.random.Generator, h: int, w: int, things: list[_Thing]) -> tuple[np.ndarray, np.ndarray]:
    img = _background(rng, h, w)
    mask = np.zeros((h, w), dtype=bool)
    side = min(h, w)
    cluster = rng.random() < 0.3
    anchor = rng.uniform([0, 0], [h, w])
    for t in things:
        radius = (
            float(rng.uniform(0.06, 0.4) * side)
            if rng.random() < 0.85
            else float(rng.uniform(0.3, 0.5) * side)
        )
        if cluster and t.target:
            cy, cx = anchor + rng.normal(0, 0.15 * side, 2)
        else:
            cy, cx = rng.uniform(-0.15 * h, 1.15 * h), rng.uniform(-0.15 * w, 1.15 * w)
        y0, y1 = max(int(cy - 1.5 * radius), 0), min(int(cy + 1.5 * radius) + 1, h)
        x0, x1 = max(int(cx - 1.5 * radius), 0), min(int(cx + 1.5 * radius) + 1, w)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        ys = y0 + (np.arange((y1 - y0) * _SS, dtype=np.float32) + 0.5) / _SS
        xs = x0 + (np.arange((x1 - x0) * _SS, dtype=np.float32) + 0.5) / _SS
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        ang = rng.uniform(0, 2 * np.pi)
        stretch = rng.uniform(0.7, 1.4)
        dy, dx = (yy - cy) / radius, (xx - cx) / radius
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / stretch
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) * stretch
        inside = _shape(t.cls.shape, u, v, t.harmonics)
        wgt = _texture(t.cls.texture, u, v, inside, rng)
        colour = t.fill * (1 - wgt[..., None]) + t.second * wgt[..., None]
        hh, ww = y1 - y0, x1 - x0
        cover = inside.reshape(hh, _SS, ww, _SS).mean(axis=(1, 3))
        paint = (colour * inside[..., None]).reshape(hh, _SS, ww, _SS, 3).sum(axis=(1, 3))
        paint = paint / np.maximum(inside.reshape(hh, _SS, ww, _SS).sum(axis=(1, 3)), 1)[..., None]
        region = img[y0:y1, x0:x1]
        region[:] = region * (1 - cover[..., None]) + paint * cover[..., None]
        covered = cover >= 0.5
        mask[y0:y1, x0:x1] = np.where(covered, t.target, mask[y0:y1, x0:x1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.35) * ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a))
    img = img * light[..., None] + rng.normal(0, rng.uniform(1, 6), (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _scene(
    rng: np.random.Generator, size: tuple[int, int], target: EvalClass, min_pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    palette = rng.uniform(0, 255, (int(rng.integers(2, 4)), 3)).astype(np.float32)
    others = [c for c in EVAL_CLASSES if c != target]

    def thing(cls: EvalClass, is_target: bool) -> _Thing:
        i, j = rng.choice(len(palette), 2, replace=False)
        harmonics = np.stack([rng.uniform(0, 0.18, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
        return _Thing(cls, palette[i], palette[j], harmonics, is_target)

    for _ in range(10):
        things = [thing(target, True) for _ in range(int(rng.integers(1, 4)))]
        things += [
            thing(others[int(rng.integers(len(others)))], False) for _ in range(int(rng.integers(1, 5)))
        ]
        order = rng.permutation(len(things))
        image, mask = _render(rng, h, w, [things[i] for i in order])
        if mask.sum() >= min_pixels and mask.mean() < 0.8:
            break
    return image, mask


def make_eval_task(seed: int, *, shots: int = 1, classes: tuple[str, ...] | None = None) -> Task:
    """Task ``seed`` of the evaluation family: ``shots`` prompts and one query, each image at
    its own size from :data:`SIZES`; ``classes`` (one name) forces the target class."""
    rng = np.random.default_rng([0xE7A1, seed])
    if classes is not None:
        target = next(c for c in EVAL_CLASSES if c.name == classes[0])
    else:
        target = EVAL_CLASSES[int(rng.integers(len(EVAL_CLASSES)))]
    scenes = []
    for _ in range(shots + 1):
        size = SIZES[int(rng.integers(len(SIZES)))]
        scenes.append(_scene(rng, size, target, max(24, size[0] * size[1] // 300)))
    colours = np.full((1, 3), 255, dtype=np.uint8)
    return Task(
        kind="semantic",
        seg_type="semantic",
        labels=(target.name,),
        prompt_images=[s[0] for s in scenes[:shots]],
        prompt_masks=[s[1][None] for s in scenes[:shots]],
        query_image=scenes[-1][0],
        query_mask=scenes[-1][1][None],
        colours=colours,
        seed=seed,
        split="heldout",
        meta={"family": FAMILY, "ood": True},
    )
