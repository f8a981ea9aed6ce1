"""Procedural in-context segmentation tasks for training and benchmarking the demo SegGPT.

Every image is a textured background with several flat objects drawn on it. An object's *class*
is a (shape, fill texture) pair, never a colour: each image draws its object colours from a small
shared palette, so targets and distractors share colours and colour alone cannot solve a task.

Task kinds (one prompt set and one query, same task on both):

- ``semantic``: every object of the prompt's class (``seg_type="semantic"``);
- ``instance``: one object *identity* (class + colours + texture phase/aspect) among same-class
  objects of other colours and other-class objects of the same colours (``seg_type="instance"``);
- ``part``: one part (arrow head/shaft, bullseye centre/rim) of every object of a class;
- ``multiclass``: 2-3 classes at once, each painted with its own colour (``seg_type="semantic"``).

Images are ``(H, W, 3) uint8`` RGB, masks ``(K, H, W) bool`` (one plane per target, K = 1 except
for ``multiclass``), in the image's pixel grid (row-major, H x W). Object sizes scale with
``min(H, W)``, so tasks may be rendered at any size (128 x 128 for training).

Seed scheme (reproducible, train and held-out disjoint by construction): a task is a pure function
of ``(split, seed)``; its RNG is ``np.random.default_rng(seed)``. Training uses seeds
``train_seed(run, i) = run * 10**7 + i`` (``run`` in 0..99, ``i`` < 10**7), i.e. ``[0, 10**9)``;
held-out sets use ``heldout_seed(i) = 10**9 + i``. Held-out *classes* (:data:`HELDOUT_CLASSES`) are
never drawn, not even as distractors, by the training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Split = Literal["train", "heldout"]
TaskKind = Literal["semantic", "instance", "part", "multiclass"]
TASK_KINDS: tuple[TaskKind, ...] = ("semantic", "instance", "part", "multiclass")

TRAIN_RUNS = 100
SEEDS_PER_RUN = 10**7
HELDOUT_SEED_BASE = TRAIN_RUNS * SEEDS_PER_RUN  # 10**9
_MAX_TRIES = 8


@dataclass(frozen=True)
class ObjectClass:
    """A class of objects: a shape and a fill texture; ``parts`` names its segmentable parts."""

    name: str
    shape: str
    texture: str
    parts: tuple[str, ...] = ()


TRAIN_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("ball", "ellipse", "solid"),
    ObjectClass("dotted_ball", "ellipse", "dots"),
    ObjectClass("star", "star", "solid"),
    ObjectClass("ring", "ring", "solid"),
    ObjectClass("cross", "cross", "solid"),
    ObjectClass("triangle", "triangle", "gradient"),
    ObjectClass("striped_box", "rect", "stripes"),
    ObjectClass("checker_box", "rect", "checker"),
    ObjectClass("arrow", "arrow", "solid", parts=("head", "shaft")),
    ObjectClass("bullseye", "bullseye", "solid", parts=("centre", "rim")),
)
# Out-of-domain: new shapes and one new (shape, texture) pairing; never rendered in training.
HELDOUT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("hexagon", "hexagon", "solid"),
    ObjectClass("crescent", "crescent", "solid"),
    ObjectClass("heart", "heart", "checker"),
    ObjectClass("striped_star", "star", "stripes"),
)
CLASSES: dict[str, ObjectClass] = {c.name: c for c in TRAIN_CLASSES + HELDOUT_CLASSES}


def train_seed(run: int, index: int) -> int:
    """Seed of the ``index``-th training task of training run ``run`` (see module docstring)."""
    if not 0 <= run < TRAIN_RUNS or not 0 <= index < SEEDS_PER_RUN:
        raise ValueError(f"train_seed needs 0 <= run < {TRAIN_RUNS} and 0 <= index < {SEEDS_PER_RUN}")
    return run * SEEDS_PER_RUN + index


def heldout_seed(index: int) -> int:
    """Seed of the ``index``-th held-out (benchmark/test) task; never used by training."""
    if index < 0:
        raise ValueError("heldout_seed index must be >= 0")
    return HELDOUT_SEED_BASE + index


def is_train_seed(seed: int) -> bool:
    return 0 <= seed < HELDOUT_SEED_BASE


@dataclass
class Task:
    """One in-context task: ``shots`` prompts and one query, sharing the task.

    ``prompt_images[i]``: ``(H, W, 3) uint8``; ``prompt_masks[i]``: ``(K, H, W) bool``; the query
    likewise. ``colours``: ``(K, 3) uint8``, a random target colour per mask plane (the paper's
    random colouring), used to paint training targets. ``labels``: one name per plane.
    """

    kind: TaskKind
    seg_type: Literal["instance", "semantic"]
    labels: tuple[str, ...]
    prompt_images: list[np.ndarray]
    prompt_masks: list[np.ndarray]
    query_image: np.ndarray
    query_mask: np.ndarray
    colours: np.ndarray
    seed: int = 0
    split: Split = "train"
    meta: dict[str, object] = field(default_factory=dict)  # "ood", "classes_drawn" (all images)


@dataclass
class _Obj:
    cls: ObjectClass
    colours: tuple[np.ndarray, np.ndarray]  # fill colour, second texture colour (float32 RGB 0..255)
    aspect: float
    phase: float
    freq: float
    target: int = -1  # mask plane this object belongs to, -1 for a distractor
    part: str | None = None  # only this part goes to the mask plane


# ---------------------------------------------------------------- shapes (object frame, radius 1)


def _polygon(u: np.ndarray, v: np.ndarray, n: int, rot: float = 0.0) -> np.ndarray:
    """Regular n-gon of circumradius 1: inside iff every edge half-plane holds."""
    apothem = np.cos(np.pi / n)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(n):
        a = rot + (2 * k + 1) * np.pi / n
        inside &= u * np.cos(a) + v * np.sin(a) <= apothem
    return inside


def _shape(name: str, u: np.ndarray, v: np.ndarray, aspect: float) -> dict[str, np.ndarray]:
    """Part name -> boolean mask in object coordinates; key ``"all"`` is the whole object."""
    r = np.hypot(u, v)
    if name == "ellipse":
        return {"all": (u / aspect) ** 2 + v**2 <= 1.0}
    if name == "ring":
        rr = np.hypot(u / aspect, v)
        return {"all": (rr <= 1.0) & (rr >= 0.55)}
    if name == "bullseye":
        centre, rim = r <= 0.38, (r >= 0.62) & (r <= 1.0)
        return {"all": centre | rim, "centre": centre, "rim": rim}
    if name == "star":
        theta = np.arctan2(v, u)
        tri = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) * 2 - 1)  # 1 at tips, 0 between
        return {"all": r <= 0.42 + 0.58 * tri}
    if name == "cross":
        w = 0.32
        return {"all": ((np.abs(u) <= w) & (np.abs(v) <= 1)) | ((np.abs(v) <= w) & (np.abs(u) <= 1))}
    if name == "triangle":
        return {"all": _polygon(u, v / aspect, 3, rot=np.pi / 6)}
    if name == "rect":
        return {"all": (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95 * aspect)}
    if name == "arrow":
        shaft = (u >= -1.0) & (u <= 0.15) & (np.abs(v) <= 0.2)
        head = (u > 0.15) & (u <= 1.0) & (np.abs(v) <= (1.0 - u) * 0.75)
        return {"all": shaft | head, "head": head, "shaft": shaft}
    if name == "hexagon":
        return {"all": _polygon(u, v, 6)}
    if name == "crescent":
        return {"all": (r <= 1.0) & (np.hypot(u - 0.45, v) > 0.78)}
    if name == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.15
        return {"all": (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0}
    raise ValueError(f"unknown shape {name!r}")


def _texture(name: str, u: np.ndarray, v: np.ndarray, obj: _Obj) -> np.ndarray:
    """Blend weight of the second colour in ``[0, 1]`` for each pixel (object coordinates)."""
    f, ph = obj.freq, obj.phase
    if name == "solid":
        return np.zeros(u.shape, dtype=np.float32)
    if name == "stripes":
        return (np.sin((u * np.cos(ph) + v * np.sin(ph)) * f * np.pi) > 0).astype(np.float32)
    if name == "checker":
        return ((np.floor(u * f * 0.5 + ph) + np.floor(v * f * 0.5 + ph)) % 2).astype(np.float32)
    if name == "dots":
        fu, fv = (u * f * 0.5 + ph) % 1.0 - 0.5, (v * f * 0.5 + ph) % 1.0 - 0.5
        return (fu**2 + fv**2 <= 0.09).astype(np.float32)
    if name == "gradient":
        return np.clip((u * np.cos(ph) + v * np.sin(ph) + 1) * 0.5, 0, 1).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


# ---------------------------------------------------------------- backgrounds


def _bilinear(low: np.ndarray, h: int, w: int) -> np.ndarray:
    """Upsample ``(h0, w0, C)`` to ``(h, w, C)`` bilinearly (align-corners)."""
    h0, w0 = low.shape[:2]
    ys = np.linspace(0, h0 - 1, h, dtype=np.float32)
    xs = np.linspace(0, w0 - 1, w, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), h0 - 2), np.minimum(xs.astype(int), w0 - 2)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    rows = low[y0] * (1 - wy) + low[y0 + 1] * wy  # separable: rows first, on the small grid
    return rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx


_NOISE_BANK: np.ndarray | None = None


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``(h, w, 3) float32`` standard normal sensor noise: a random crop of a fixed bank (drawing
    fresh normals per image was the generator's single largest cost)."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(0).standard_normal((512, 512, 3), dtype=np.float32)
    bank = _NOISE_BANK
    if h > bank.shape[0] or w > bank.shape[1]:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(bank.shape[0] - h + 1)), int(rng.integers(bank.shape[1] - w + 1))
    return bank[y : y + h, x : x + w]


def _far_colour(rng: np.random.Generator, palette: np.ndarray, min_l1: float = 120.0) -> np.ndarray:
    """A random colour at sum-|dRGB| >= ``min_l1`` from every palette colour when one is found in
    a few draws: objects must stay visible on the background (colour ambiguity comes from
    distractors sharing the palette, not from invisible targets)."""
    colour = rng.uniform(0, 255, 3)
    for _ in range(16):
        if np.abs(palette - colour).sum(axis=1).min() >= min_l1:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def _background(rng: np.random.Generator, h: int, w: int, palette: np.ndarray) -> np.ndarray:
    """``(h, w, 3) float32`` background: value noise, stripes or a gradient, in colours away from
    the object palette."""
    kind = rng.integers(3)
    c1, c2 = _far_colour(rng, palette), _far_colour(rng, palette)
    if kind == 0:
        n = int(rng.integers(3, 10))
        low = rng.uniform(0, 1, (n, n, 1)) * (c2 - c1) + c1
        img = _bilinear(low.astype(np.float32), h, w)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / min(h, w)
        a = rng.uniform(0, np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        if kind == 1:
            period = rng.uniform(0.05, 0.2)
            wgt = (np.sin(t / period * 2 * np.pi) > 0).astype(np.float32) * rng.uniform(0.3, 1.0)
        else:
            wgt = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = c1 + wgt[..., None] * (c2 - c1)
    return img.astype(np.float32)


# ---------------------------------------------------------------- scenes


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _new_obj(rng: np.random.Generator, cls: ObjectClass, palette: np.ndarray) -> _Obj:
    i, j = rng.choice(len(palette), 2, replace=False)
    return _Obj(
        cls=cls,
        colours=(palette[i], palette[j]),
        aspect=float(rng.uniform(0.6, 1.0)),
        phase=float(rng.uniform(0, np.pi)),
        freq=float(rng.uniform(3.0, 5.0)),
    )


def _render(
    rng: np.random.Generator, h: int, w: int, objs: list[_Obj], planes: int, palette: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``objs`` in order (later ones occlude earlier ones) on a background.

    Returns ``(image (h, w, 3) uint8, masks (planes, h, w) bool)``; a target's visible pixels go
    to its plane and are removed from every plane by objects drawn over them.
    """
    img = _background(rng, h, w, palette)
    masks = np.zeros((planes, h, w), dtype=bool)
    side = min(h, w)
    for obj in objs:
        radius = rng.uniform(0.09, 0.2) * side
        cy, cx = rng.uniform(radius * 0.5, h - radius * 0.5), rng.uniform(radius * 0.5, w - radius * 0.5)
        y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
        x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = (yy + 0.5 - cy) / radius, (xx + 0.5 - cx) / radius
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        parts = _shape(obj.cls.shape, u, v, obj.aspect)
        inside = parts["all"]
        wgt = _texture(obj.cls.texture, u, v, obj)[..., None]
        fill = obj.colours[0] * (1 - wgt) + obj.colours[1] * wgt
        if "head" in parts:  # the arrow's head in its second colour so parts are visible
            fill = np.where(parts["head"][..., None], obj.colours[1], fill)
        region = img[y0:y1, x0:x1]
        region[inside] = fill[inside]
        masks[:, y0:y1, x0:x1][:, inside] = False
        if obj.target >= 0:
            sel = parts[obj.part] if obj.part else inside
            masks[obj.target, y0:y1, x0:x1] |= sel
    img += _noise(rng, h, w) * np.float32(rng.uniform(2, 10))
    return np.clip(img, 0, 255).astype(np.uint8), masks


def _palette(rng: np.random.Generator) -> np.ndarray:
    return np.stack([_random_colour(rng) for _ in range(int(rng.integers(3, 5)))])


def _distractors(
    rng: np.random.Generator, pool: tuple[ObjectClass, ...], exclude: set[str], palette: np.ndarray, n: int
) -> list[_Obj]:
    choices = [c for c in pool if c.name not in exclude]
    return [_new_obj(rng, choices[rng.integers(len(choices))], palette) for _ in range(n)]


def _scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    kind: TaskKind,
    targets: list[ObjectClass],
    pool: tuple[ObjectClass, ...],
    part: str | None,
    identity: _Obj | None,
    drawn: set[str],
) -> tuple[np.ndarray, np.ndarray]:
    """One image of the task: targets (per plane), distractors, shuffled draw order. Adds the
    names of the classes it draws to ``drawn``."""
    h, w = size
    palette = _palette(rng)
    objs: list[_Obj] = []
    if kind == "instance":
        assert identity is not None
        palette[:2] = identity.colours  # other objects reuse the identity's colours
        objs.append(_Obj(identity.cls, identity.colours, identity.aspect, identity.phase, identity.freq, 0))
        for _ in range(int(rng.integers(1, 3))):  # same class, other colours
            other = _new_obj(rng, identity.cls, np.stack([_random_colour(rng) for _ in range(2)]))
            objs.append(other)
        objs += _distractors(rng, pool, {identity.cls.name}, palette, int(rng.integers(1, 4)))
    else:
        for plane, cls in enumerate(targets):
            for _ in range(int(rng.integers(1, 3 if kind == "multiclass" else 4))):
                obj = _new_obj(rng, cls, palette)
                obj.target, obj.part = plane, part
                objs.append(obj)
        n_distract = int(rng.integers(1, 3 if kind == "multiclass" else 5))
        objs += _distractors(rng, pool, {c.name for c in targets}, palette, n_distract)
    drawn.update(o.cls.name for o in objs)
    min_pixels = max(16, h * w // 400)
    for _ in range(_MAX_TRIES):  # re-draw the layout until no target is (nearly) fully occluded
        order = rng.permutation(len(objs))
        image, masks = _render(rng, h, w, [objs[i] for i in order], len(targets), palette)
        if masks.reshape(len(masks), -1).sum(axis=1).min() >= min_pixels:
            break
    return image, masks


def make_task(
    seed: int,
    *,
    split: Split = "train",
    kind: TaskKind | None = None,
    size: tuple[int, int] = (128, 128),
    query_size: tuple[int, int] | None = None,
    shots: int = 1,
    ood: bool = False,
    classes: tuple[str, ...] | None = None,
) -> Task:
    """Generate one task, a pure function of the arguments.

    ``split="train"`` draws only :data:`TRAIN_CLASSES` and requires a training seed;
    ``split="heldout"`` requires a held-out seed; ``ood=True`` (held-out only) takes the target
    class(es) from :data:`HELDOUT_CLASSES` (distractors from all classes). ``kind=None`` picks a
    kind at random (training mix). ``size``/``query_size``: ``(H, W)`` of prompts / query.
    ``classes`` forces the target class names (for tests).
    """
    if split == "train" and not is_train_seed(seed):
        raise ValueError(f"seed {seed} is not a training seed (must be < {HELDOUT_SEED_BASE})")
    if split == "heldout" and is_train_seed(seed):
        raise ValueError(f"seed {seed} is a training seed; held-out seeds start at {HELDOUT_SEED_BASE}")
    if ood and split != "heldout":
        raise ValueError("ood=True needs split='heldout' (held-out classes never appear in training)")
    rng = np.random.default_rng(seed)
    pool = TRAIN_CLASSES if split == "train" else TRAIN_CLASSES + HELDOUT_CLASSES
    candidates = HELDOUT_CLASSES if ood else TRAIN_CLASSES
    if kind is None:
        kind = TASK_KINDS[int(rng.choice(4, p=[0.35, 0.25, 0.15, 0.25]))]
    part: str | None = None
    if classes is not None:
        targets = [CLASSES[c] for c in classes]
    elif kind == "multiclass":
        idx = rng.choice(len(candidates), int(rng.integers(2, 4)), replace=False)
        targets = [candidates[i] for i in idx]
    elif kind == "part":
        with_parts = [c for c in candidates if c.parts] or [c for c in TRAIN_CLASSES if c.parts]
        targets = [with_parts[rng.integers(len(with_parts))]]
    else:
        targets = [candidates[rng.integers(len(candidates))]]
    if kind == "part":
        part = targets[0].parts[rng.integers(len(targets[0].parts))]
    identity = _new_obj(rng, targets[0], _palette(rng)) if kind == "instance" else None
    drawn: set[str] = set()
    prompts = [_scene(rng, size, kind, targets, pool, part, identity, drawn) for _ in range(shots)]
    query = _scene(rng, query_size or size, kind, targets, pool, part, identity, drawn)
    colours = _target_colours(rng, len(targets))
    label_names = tuple(f"{c.name}.{part}" if part else c.name for c in targets)
    return Task(
        kind=kind,
        seg_type="instance" if kind == "instance" else "semantic",
        labels=label_names,
        prompt_images=[p[0] for p in prompts],
        prompt_masks=[p[1] for p in prompts],
        query_image=query[0],
        query_mask=query[1],
        colours=colours,
        seed=seed,
        split=split,
        meta={"ood": ood, "classes_drawn": sorted(drawn)},
    )


def _target_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3) uint8`` random painting colours (the paper's random colouring), far from black
    (the background) and from each other; the first is white a third of the time, as the
    authors' binary prompts are white on black."""
    out: list[np.ndarray] = []
    while len(out) < n:
        if not out and rng.random() < 1 / 3:
            colour: np.ndarray = np.full(3, 255.0)
        else:
            colour = rng.uniform(0, 255, 3)
            colour[rng.integers(3)] = rng.uniform(160, 255)
        if all(np.abs(colour - c).sum() >= 150 for c in out):
            out.append(colour)
    return np.stack(out).astype(np.uint8)


def paint(masks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``(K, H, W) bool`` planes -> ``(H, W, 3) uint8`` painting on black (later planes on top)."""
    out = np.zeros((*masks.shape[1:], 3), dtype=np.uint8)
    for plane, colour in zip(masks, colours, strict=True):
        out[plane] = colour
    return out
