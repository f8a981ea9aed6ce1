"""The evaluation-only task family: deterministic, well formed, varied, and kept out of training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from seggpt_backend.demo import synthetic
from seggpt_backend.demo.eval_tasks import EVAL_CLASSES, SIZES, make_eval_task


def test_same_seed_same_task_other_seed_other_task() -> None:
    a, b, c = make_eval_task(7, shots=2), make_eval_task(7, shots=2), make_eval_task(8, shots=2)
    assert a.labels == b.labels
    for x, y in zip([*a.prompt_images, a.query_image], [*b.prompt_images, b.query_image], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.query_mask, b.query_mask)
    assert not np.array_equal(a.query_image, c.query_image)


@pytest.mark.parametrize("seed", range(10))
def test_shapes_dtypes_and_visible_targets(seed: int) -> None:
    task = make_eval_task(seed, shots=3)
    assert task.kind == "semantic" and task.seg_type == "semantic" and task.meta["family"] == "eval"
    assert task.labels[0] in {c.name for c in EVAL_CLASSES}
    for img, masks in [
        *zip(task.prompt_images, task.prompt_masks, strict=True),
        (task.query_image, task.query_mask),
    ]:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[:2] in SIZES
        assert masks.dtype == bool and masks.shape == (1, *img.shape[:2])
        assert 0 < masks.mean() < 0.8


def test_family_varies_sizes_aspect_and_touches_the_border() -> None:
    tasks = [make_eval_task(i, shots=1) for i in range(40)]
    sizes = {img.shape[:2] for t in tasks for img in (*t.prompt_images, t.query_image)}
    aspects = {w / h for h, w in sizes}
    assert min(aspects) <= 0.5 and max(aspects) >= 2.0
    border = 0
    for t in tasks:
        m = t.query_mask[0]
        border += bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    assert border >= 10  # objects cut by the border are common
    assert len({t.labels[0] for t in tasks}) == len(EVAL_CLASSES)


def test_family_is_independent_of_the_training_generator() -> None:
    """No class name or shape in common with training or its held-out classes, and training
    never imports the module."""
    trained = synthetic.TRAIN_CLASSES + synthetic.HELDOUT_CLASSES
    assert not {c.name for c in EVAL_CLASSES} & {c.name for c in trained}
    assert not {c.shape for c in EVAL_CLASSES} & {c.shape for c in trained}
    code = "import sys, seggpt_backend.demo.train; print('seggpt_backend.demo.eval_tasks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
