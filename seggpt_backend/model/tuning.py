"""In-context tuning (paper 3.3): learn a prompt with the model frozen.

The learnable prompt is the top half of both canvases: an image tensor and a target (mask)
tensor, each ``(3, h, w)`` in ImageNet-normalised space, initialised from a real example. It is
optimised with Adam against ``(image, mask)`` pairs with the training loss (smooth-L1 on the
query half). The result is used exactly like an example and can join a feature ensemble.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from seggpt_backend.model.seggpt import SegGpt, SegTypeArg, balanced_weight, seggpt_loss


@dataclass(frozen=True)
class TunedPrompt:
    """``image``/``target``: ``(3, h, w) float32`` normalised tensors (CPU); ``losses``: one per step."""

    image: Tensor
    target: Tensor
    losses: list[float]


def tune_prompt(
    model: SegGpt,
    init_image: Tensor,
    init_target: Tensor,
    images: Tensor,
    targets: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.01,
    batch_size: int = 4,
    seg_type: SegTypeArg = "instance",
    tune_image: bool = True,
    autocast_dtype: torch.dtype | None = None,
    checkpointing: bool = False,
    seed: int = 0,
    fg_balance: float = 0.0,
    background: Tensor | None = None,
    time_budget_s: float | None = None,
) -> TunedPrompt:
    """Optimise a prompt so that the frozen ``model`` paints ``targets`` for ``images``.

    ``init_*``: ``(3, h, w)``; ``images``/``targets``: ``(N, 3, h, w)``, all normalised, at the
    model's half size. ``lr`` is in normalised units per step (pixel-space parameters need far
    larger rates than weights). The model's weights and ``requires_grad`` flags are left as
    they were; only the two prompt tensors change. ``fg_balance`` > 0 weights the loss with
    :func:`balanced_weight` (``background``: the ``(3,)`` normalised background colour): use the
    balance the model was trained with (0 for the authors' weights). ``time_budget_s``: stop
    after the step during which this many seconds of wall time have passed (``len(losses)``
    tells how many steps ran; at least one always does).
    """
    if fg_balance > 0 and background is None:
        raise ValueError("fg_balance needs the normalised background colour")
    device = next(model.parameters()).device
    background = background.to(device) if background is not None and fg_balance > 0 else None
    flags = [p.requires_grad for p in model.parameters()]
    was_training, was_ckpt = model.training, model.gradient_checkpointing
    model.eval().requires_grad_(False)
    model.gradient_checkpointing = checkpointing
    prompt_img = init_image.detach().clone().to(device).requires_grad_(tune_image)
    prompt_tgt = init_target.detach().clone().to(device).requires_grad_(True)
    params = [prompt_tgt] + ([prompt_img] if tune_image else [])
    optimiser = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    images, targets = images.to(device), targets.to(device)
    losses: list[float] = []
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    try:
        for _ in range(steps):
            if deadline is not None and losses and time.monotonic() >= deadline:
                break
            idx = torch.randperm(images.shape[0], generator=gen)[:batch_size].to(device)
            n = idx.numel()
            canvas_img = torch.cat([prompt_img.expand(n, -1, -1, -1), images[idx]], dim=2)
            canvas_tgt = torch.cat([prompt_tgt.expand(n, -1, -1, -1), torch.zeros_like(targets[idx])], dim=2)
            with autocast:
                pred = model(canvas_img, canvas_tgt, seg_type=seg_type)
            weight = balanced_weight(targets[idx], background, fg_balance) if background is not None else None
            loss = seggpt_loss(pred.float(), targets[idx], weight=weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
        model.gradient_checkpointing = was_ckpt
    return TunedPrompt(prompt_img.detach().cpu(), prompt_tgt.detach().cpu(), losses)
