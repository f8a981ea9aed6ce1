"""In-context tuning at the model level: the loss weighting options of ``tune_prompt``."""

from __future__ import annotations

import pytest
import torch

from seggpt_backend.model.checkpoint import build_model
from seggpt_backend.model.tuning import tune_prompt


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    model, _ = build_model("random:tiny@3")
    h, w = model.cfg.half_size
    gen = torch.Generator().manual_seed(0)
    black = torch.full((3,), -2.0)
    images = torch.randn(4, 3, h, w, generator=gen)
    targets = black.view(1, 3, 1, 1).repeat(4, 1, h, w)
    targets[:, :, : h // 4, : w // 4] = 2.0  # small foreground: balancing changes the loss
    return model, images[0], targets[0], images, targets


def test_plain_loss_needs_no_background_and_balance_changes_the_objective() -> None:
    model, img, tgt, images, targets = _problem()
    plain = tune_prompt(model, img, tgt, images, targets, steps=3, batch_size=4)
    black = torch.full((3,), -2.0)
    unbalanced = tune_prompt(model, img, tgt, images, targets, steps=3, batch_size=4, background=black)
    balanced = tune_prompt(
        model, img, tgt, images, targets, steps=3, batch_size=4, fg_balance=1.0, background=black
    )
    assert plain.losses == unbalanced.losses  # fg_balance 0 is the authors' loss, background unused
    assert balanced.losses[0] != pytest.approx(plain.losses[0])


def test_balance_without_background_is_refused() -> None:
    model, img, tgt, images, targets = _problem()
    with pytest.raises(ValueError, match="background"):
        tune_prompt(model, img, tgt, images, targets, steps=1, fg_balance=0.25)


def test_a_time_budget_ends_tuning_after_the_step_in_progress() -> None:
    model, img, tgt, images, targets = _problem()
    assert len(tune_prompt(model, img, tgt, images, targets, steps=10**6, time_budget_s=0.0).losses) == 1
    assert len(tune_prompt(model, img, tgt, images, targets, steps=4, time_budget_s=600).losses) == 4
