"""The procedural task generator: determinism, mask/image consistency, train/held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.demo.synthetic import (
    HELDOUT_CLASSES,
    HELDOUT_SEED_BASE,
    TASK_KINDS,
    TRAIN_CLASSES,
    Task,
    _shape,
    heldout_seed,
    is_train_seed,
    make_task,
    paint,
    train_seed,
)

TRAIN_NAMES = {c.name for c in TRAIN_CLASSES}
HELDOUT_NAMES = {c.name for c in HELDOUT_CLASSES}


def _arrays(task: Task) -> list[np.ndarray]:
    return [*task.prompt_images, *task.prompt_masks, task.query_image, task.query_mask, task.colours]


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_same_seed_same_task_other_seed_other_task(kind: str) -> None:
    a, b = make_task(123, kind=kind, shots=2), make_task(123, kind=kind, shots=2)  # type: ignore[arg-type]
    assert a.labels == b.labels and a.kind == b.kind
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    c = make_task(124, kind=kind, shots=2)  # type: ignore[arg-type]
    assert not np.array_equal(a.query_image, c.query_image)


@pytest.mark.parametrize("seed", range(12))
def test_shapes_dtypes_and_non_empty_targets(seed: int) -> None:
    task = make_task(seed, size=(96, 120), query_size=(80, 64), shots=3)
    planes = len(task.labels)
    assert task.colours.shape == (planes, 3) and task.colours.dtype == np.uint8
    for img, masks in [*zip(task.prompt_images, task.prompt_masks, strict=True)]:
        assert img.shape == (96, 120, 3) and img.dtype == np.uint8
        assert masks.shape == (planes, 96, 120) and masks.dtype == bool
    assert task.query_image.shape == (80, 64, 3) and task.query_mask.shape == (planes, 80, 64)
    for masks in [*task.prompt_masks, task.query_mask]:
        assert masks.reshape(planes, -1).sum(axis=1).min() > 0  # every target visible
        assert masks.sum(axis=0).max() <= 1  # planes are disjoint (occlusion resolved)
        assert masks.any(axis=0).mean() < 0.9  # and not the whole image


@pytest.mark.parametrize("seed", range(6))
def test_instance_mask_covers_exactly_the_identity_colour(seed: int) -> None:
    """Solid-filled identity: every masked pixel is its fill colour (up to sensor noise, sigma <= 10),
    the same colour in prompt and query; the mask's border is where the colour changes."""
    task = make_task(seed, kind="instance", classes=("ball",))
    colours = []
    for img, masks in [(task.prompt_images[0], task.prompt_masks[0]), (task.query_image, task.query_mask)]:
        pix = img[masks[0]].astype(np.float32)
        colour = np.median(pix, axis=0)
        assert np.percentile(np.abs(pix - colour).max(axis=1), 95) < 30
        colours.append(colour)
        # the mask is not a blob of the right colour drawn anywhere: shifting it by its size
        # lands mostly on other colours
        ys, xs = np.nonzero(masks[0])
        shifted = img[(ys + (np.ptp(ys) + 3)) % img.shape[0], xs].astype(np.float32)
        assert np.mean(np.abs(shifted - colour).max(axis=1) < 30) < 0.9
    assert np.abs(colours[0] - colours[1]).max() < 12


def test_part_masks_are_parts_and_multiclass_has_one_colour_per_class() -> None:
    head = make_task(5, kind="part", classes=("arrow",))
    assert head.kind == "part" and head.labels[0] in ("arrow.head", "arrow.shaft")
    v, u = np.mgrid[-1.2:1.2:97j, -1.2:1.2:97j]
    for cls in (c for c in TRAIN_CLASSES if c.parts):
        parts = _shape(cls.shape, u, v, 1.0)
        a, b = (parts[name] for name in cls.parts)
        assert a.any() and b.any() and not (a & b).any()  # two non-empty disjoint parts
        np.testing.assert_array_equal(a | b, parts["all"])  # that make up the object
    multi = make_task(7, kind="multiclass")
    assert len(multi.labels) >= 2 and len(set(multi.labels)) == len(multi.labels)
    dist = np.abs(multi.colours[:, None].astype(int) - multi.colours[None].astype(int)).sum(-1)
    assert dist[~np.eye(len(dist), dtype=bool)].min() >= 150
    painted = paint(multi.query_mask, multi.colours)
    for plane, colour in zip(multi.query_mask, multi.colours, strict=True):
        assert (painted[plane] == colour).all()
    assert (painted[~multi.query_mask.any(axis=0)] == 0).all()


def test_train_and_heldout_seeds_are_disjoint() -> None:
    assert train_seed(0, 0) == 0
    assert train_seed(99, 10**7 - 1) == HELDOUT_SEED_BASE - 1 < heldout_seed(0)
    assert is_train_seed(train_seed(42, 123)) and not is_train_seed(heldout_seed(0))
    with pytest.raises(ValueError, match="train_seed"):
        train_seed(100, 0)
    with pytest.raises(ValueError, match="train_seed"):
        train_seed(0, 10**7)
    with pytest.raises(ValueError, match="not a training seed"):
        make_task(heldout_seed(1), split="train")
    with pytest.raises(ValueError, match="is a training seed"):
        make_task(5, split="heldout")
    with pytest.raises(ValueError, match="ood"):
        make_task(5, ood=True)


def test_heldout_classes_never_drawn_in_training_split() -> None:
    assert not TRAIN_NAMES & HELDOUT_NAMES
    seen: set[str] = set()
    for i in range(60):
        task = make_task(train_seed(3, i), kind=TASK_KINDS[i % 4], shots=2)
        seen |= set(task.meta["classes_drawn"])  # type: ignore[arg-type]
    assert seen <= TRAIN_NAMES and len(seen) == len(TRAIN_NAMES)
    ood = make_task(heldout_seed(10), split="heldout", kind="semantic", ood=True)
    assert ood.labels[0] in HELDOUT_NAMES
