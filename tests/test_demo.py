"""The shipped demo weights segment from examples through the public engine, and training runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seggpt_backend.demo.synthetic import heldout_seed, make_task
from seggpt_backend.demo.train import _MEAN, _STD, binary_iou, sample_batch, train
from seggpt_backend.engine.engine import load_engine
from seggpt_backend.engine.interface import Example, SegmentRequest
from seggpt_backend.model.checkpoint import DEMO_DIR, build_model
from seggpt_backend.model.config import SegGptConfig, get_config

# Fresh held-out tasks (a seed range no benchmark or training uses), rendered at sizes other
# than the model's so both resizes (in and out) are on the path.
TEST_SEEDS = range(950_000, 950_012)
# The shipped model (stage 6) scores 0.39 mean IoU on these 12 tasks (see
# bench/results_quality.md for the benchmark's figures); a broken loader, wrong normalisation or a
# transposed resize scores near 0 (an empty or garbage mask), as does the right query with another
# task's example (0.05 here). The floor leaves room for float differences across CPUs.
IOU_FLOOR = 0.32


def test_shipped_weights_are_small_and_match_the_registry() -> None:
    size = sum(p.stat().st_size for p in DEMO_DIR.iterdir())
    assert size <= 20 * 2**20
    shipped = SegGptConfig.from_dict(json.loads((DEMO_DIR / "config.json").read_text()))
    assert shipped == get_config("demo")


def test_demo_one_shot_segments_fresh_tasks_through_the_engine() -> None:
    engine = load_engine("demo", device="cpu", dtype="fp32")
    tasks = [
        make_task(heldout_seed(i), split="heldout", kind="semantic", size=(160, 144), query_size=(112, 176))
        for i in TEST_SEEDS
    ]
    requests = [
        SegmentRequest(
            t.query_image,
            {t.labels[0]: [Example(f"ex{t.seed}", t.prompt_images[0], {t.labels[0]: t.prompt_masks[0][0]})]},
        )
        for t in tasks
    ]
    results = engine.segment(requests, ensemble="none", seg_type="semantic")
    ious = []
    for t, res in zip(tasks, results, strict=True):
        pred = res[t.labels[0]]
        assert pred.mask.shape == t.query_image.shape[:2]
        ious.append(binary_iou(pred.mask, t.query_mask[0]))
    assert float(np.mean(ious)) >= IOU_FLOOR, ious
    # the prompt matters: the same queries with each other's examples do clearly worse
    shuffled = [
        SegmentRequest(r.query, {tasks[i].labels[0]: next(iter(requests[i - 1].examples.values()))})
        for i, r in enumerate(requests)
    ]
    wrong = engine.segment(shuffled, ensemble="none", seg_type="semantic")
    wrong_ious = [binary_iou(w[t.labels[0]].mask, t.query_mask[0]) for t, w in zip(tasks, wrong, strict=True)]
    assert np.mean(wrong_ious) < np.mean(ious) - 0.1


@pytest.mark.slow
def test_training_smoke_loss_decreases_and_checkpoint_loads(tmp_path: Path) -> None:
    cfg = get_config("tiny")
    losses = train(cfg, steps=40, batch=4, minutes=None, lr=2e-3, warmup=0.1, out=tmp_path, threads=None)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])
    model, _ = build_model(str(tmp_path))
    assert model.cfg == cfg
    task = make_task(heldout_seed(950_100), split="heldout", kind="semantic", size=cfg.half_size)
    images = torch.zeros(1, 3, *cfg.image_size)
    images[..., : cfg.half_size[0], :] = torch.from_numpy(task.prompt_images[0]).permute(2, 0, 1) / 255.0
    out = model(images, images)
    assert out.shape == (1, 3, *cfg.half_size) and torch.isfinite(out).all()


def test_training_is_reproducible_from_its_arguments(tmp_path: Path) -> None:
    """Step-based schedule, seeded init, data and masking: two runs write identical weights."""
    digests = []
    for name in ("a", "b"):
        train(get_config("tiny"), steps=3, batch=4, minutes=None, lr=2e-3, out=tmp_path / name, threads=1)
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    train(get_config("tiny"), steps=3, batch=4, minutes=None, lr=2e-3, out=tmp_path / "c", threads=1, seed=1)
    assert hashlib.sha256((tmp_path / "c" / "model.safetensors").read_bytes()).hexdigest() != digests[0]
    # Batches built by worker processes are the same batches: the same weights.
    train(
        get_config("tiny"),
        steps=3,
        batch=4,
        minutes=None,
        lr=2e-3,
        out=tmp_path / "d",
        threads=1,
        data_workers=2,
    )
    assert hashlib.sha256((tmp_path / "d" / "model.safetensors").read_bytes()).hexdigest() == digests[0]


def test_fixed_colour_batches_paint_binary_targets_white() -> None:
    size = (32, 32)
    fixed = sample_batch(0, 0, 8, size, fixed_colour_p=1.0)
    random = sample_batch(0, 0, 8, size, fixed_colour_p=0.0)
    torch.testing.assert_close(fixed.images, random.images)  # same tasks, only the paint differs
    white = (torch.tensor([255.0, 255.0, 255.0]) - torch.from_numpy(_MEAN)) / torch.from_numpy(_STD)
    for label, masks in zip(fixed.label, fixed.query_masks, strict=True):
        if masks.shape[0] == 1 and masks[0].any():
            painted = label[:, torch.from_numpy(masks[0])]
            torch.testing.assert_close(painted, white[:, None].expand_as(painted))


@pytest.mark.slow
def test_the_prepared_device_script_trains_and_benchmarks(tmp_path: Path) -> None:
    """``scripts/train-demo-gpu.sh`` end to end, shrunk to seconds on the CPU: what a session
    lent a GPU runs in one call must not fail on a typo after minutes of device time."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "DEVICE": "cpu",
        "MINUTES": "0.02",
        "BATCH": "2",
        "WORKERS": "1",
        "PYTHON": sys.executable,
        "BENCH_ARGS": "--n 1 --n-multi 1 --n-family 1 --tune-steps 1 --tune-pairs 2 --threads 1",
    }
    script = Path(__file__).resolve().parents[1] / "scripts" / "train-demo-gpu.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, _ = build_model(str(tmp_path / "weights"))
    assert model.cfg == get_config("demo")
    assert "done steps" in (tmp_path / "train.log").read_text()
    assert "| one-shot |" in (tmp_path / "results_quality.md").read_text()
