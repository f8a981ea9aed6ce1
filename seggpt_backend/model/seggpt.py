"""SegGPT (Wang et al., 2023) in plain PyTorch, with the authors' tensor names.

Input layout (all ``float`` tensors, ImageNet-normalised RGB, NCHW):

- ``images``: ``(B, 3, H, W)`` image canvas: prompt image (top ``H/2`` rows) over the query image.
- ``targets``: ``(B, 3, H, W)`` target canvas: prompt mask (top half) over anything (the bottom
  half is replaced by ``mask_token`` through ``bool_masked_pos``).

With a feature ensemble of ``k`` prompts, the batch holds ``G`` groups of ``k`` consecutive rows
(prompt_i over the same query); row 0 of each group carries the group's prediction.

Attention is global in every block with decomposed relative positions (MViTv2). The bias is
never materialised as an ``L x L`` tensor: it is folded into the dot product by appending the
per-query relative terms to ``q`` and one-hot row/column codes to ``k`` (exact, see
:func:`_attention`), so ``scaled_dot_product_attention`` can use its fused kernels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from seggpt_backend.model.config import SegGptConfig

SegTypeArg = Literal["instance", "semantic"]
DecodeArg = Literal["query", "full"]


def _relative_table(table: Tensor, size: int) -> Tensor:
    """``(size, size, D)`` embeddings ``table[q - k + size - 1]``; resized linearly if the table
    was trained for another grid (as transformers and the authors do)."""
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t()[None], size=length, mode="linear")[0].t()
    idx = torch.arange(size, device=table.device)
    return table[idx[:, None] - idx[None, :] + size - 1]


def _attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor,
    rel_w: Tensor,
    grid: tuple[int, int],
    impl: str = "augmented",
) -> Tensor:
    """Softmax(q k^T / sqrt(d) + Rh[qh, kh] + Rw[qw, kw]) v for ``(B, heads, L, d)`` inputs.

    ``rel_h[b, n, (qh, qw), kh] = q . table_h[qh - kh]`` (unscaled q, as the authors).

    ``impl="augmented"`` (default): appending ``rel_h`` and ``rel_w`` to the scaled ``q`` and
    matching one-hot codes of each key's row and column to ``k`` makes ``q' . k'`` equal to the
    biased logit, so no ``L x L`` bias is ever built. ``v`` is zero-padded to the same width
    (a multiple of 8) because SDPA's fused kernels need equal head widths; without that they
    fall back to the unfused path that materialises the scores (bench/RESULTS.md).
    ``impl="bias"``: SDPA with the materialised additive bias (``B x heads x L x L``); slower
    than ``augmented`` on CPU too (bench/results_model.md) and far heavier in memory.
    """
    rows, cols = grid
    length = rows * cols
    if impl == "bias":
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(*q.shape[:2], length, length)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    d = q.shape[-1]
    width = d + rows + cols
    pad = -width % 8
    eye_h = torch.eye(rows, dtype=q.dtype, device=q.device).repeat_interleave(cols, dim=0)  # (L, rows)
    eye_w = torch.eye(cols, dtype=q.dtype, device=q.device).repeat(rows, 1)  # (L, cols)
    codes = torch.cat([eye_h, eye_w, eye_w.new_zeros(length, pad)], dim=-1).expand(*k.shape[:2], -1, -1)
    q_aug = torch.cat(
        [q * d**-0.5, rel_h.flatten(2, 3), rel_w.flatten(2, 3), q.new_zeros(*q.shape[:3], pad)], -1
    )
    k_aug = torch.cat([k, codes], dim=-1)
    v_aug = F.pad(v, (0, width + pad - d))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :d]


class Attention(nn.Module):
    """Multi-head global attention with decomposed relative position (tables per axis)."""

    def __init__(self, cfg: SegGptConfig) -> None:
        super().__init__()
        rows, cols = cfg.grid
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rows - 1, cfg.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * cols - 1, cfg.head_dim))
        self.impl = "augmented"  # or "bias"; see _attention

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, rows, cols, C)`` -> ``(B, rows, cols, C)``."""
        b, rows, cols, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, rows * cols, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        table_h = _relative_table(self.rel_pos_h, rows).to(q.dtype)
        table_w = _relative_table(self.rel_pos_w, cols).to(q.dtype)
        q_grid = q.reshape(b, heads, rows, cols, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, table_h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, table_w)
        out = _attention(q, k, v, rel_h, rel_w, (rows, cols), self.impl)
        out = out.transpose(1, 2).reshape(b, rows, cols, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, cfg: SegGptConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def ensemble_query_half(x: Tensor, group: int) -> Tensor:
    """Average the query half (bottom rows) of ``x`` over consecutive groups of ``group`` rows.

    ``x``: ``(B, rows, cols, C)`` with ``B`` a multiple of ``group``. Before the stream merge the
    batch is ``[image stream; target stream]`` and every group lies inside one stream, so the
    same reshape averages "within each stream" there and "across the prompts" after it.
    """
    if group <= 1:
        return x
    half = x.shape[1] // 2
    top, bottom = x[:, :half], x[:, half:]
    mean = bottom.unflatten(0, (-1, group)).mean(dim=1, keepdim=True)
    bottom = mean.expand(-1, group, *bottom.shape[1:]).flatten(0, 1)
    return torch.cat([top, bottom], dim=1)


class Block(nn.Module):
    def __init__(self, cfg: SegGptConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor, ensemble: int = 1) -> Tensor:
        x = x + ensemble_query_half(self.attn(self.norm1(x)), ensemble)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SegGptConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, H/p, W/p, C)``."""
        return self.proj(x).permute(0, 2, 3, 1)


class SegGpt(nn.Module):
    """The SegGPT network: encoder, stream merge, multi-level decoder.

    State-dict names are the authors' (``blocks.3.attn.qkv.weight``, ``decoder_pred.0.weight``),
    so their checkpoint loads as is; see :mod:`seggpt_backend.model.checkpoint` for transformers'.
    """

    def __init__(self, cfg: SegGptConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.segment_token_x = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.segment_token_y = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.type_token_cls = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.type_token_ins = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pretrain_grid**2 + 1, c))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        p2d = cfg.patch_size**2 * cfg.decoder_hidden_size
        self.decoder_embed = nn.Linear(c * len(cfg.out_indices), p2d)
        d = cfg.decoder_hidden_size
        self.decoder_pred = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=3, padding=1),
            _LayerNorm2d(d, eps=cfg.layer_norm_eps),
            nn.GELU(),
            nn.Conv2d(d, 3, kernel_size=1),
        )
        self.gradient_checkpointing = False

    def init_weights(self, std: float | None = None, generator: torch.Generator | None = None) -> None:
        """Random initialisation: zero biases, unit norm weights, and normal weights with
        ``std`` (0.02 is the usual ViT training init) or, with ``std=None``, variance-preserving
        ``1/sqrt(fan_in)``: the test-weights regime where every path (relative positions,
        tokens, ensemble) visibly moves the output."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" in name or name.startswith("decoder_pred.1"):
                    p.fill_(1.0)
                else:
                    fan_in = p[0].numel() if p.ndim > 1 and "token" not in name and "pos" not in name else 1
                    scale = std if std is not None else fan_in**-0.5
                    p.copy_(torch.randn(p.shape, generator=generator).clamp_(-3, 3) * scale)

    def set_attention_impl(self, impl: Literal["augmented", "bias"]) -> None:
        """Choose how the relative-position bias enters SDPA in every block (see ``_attention``)."""
        if impl not in ("augmented", "bias"):
            raise ValueError(f"unknown attention implementation {impl!r}")
        for block in self.blocks:
            assert isinstance(block, Block)
            block.attn.impl = impl

    def position_embedding(self) -> Tensor:
        """The 2-D absolute table (cls row dropped) resized bicubically to the canvas grid:
        ``(1, rows, cols, C)``."""
        rows, cols = self.cfg.grid
        n = self.cfg.pretrain_grid
        table = self.pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        if (n, n) != (rows, cols):
            table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1)

    def default_masked_pos(self, device: torch.device) -> Tensor:
        """``(1, rows * cols) bool``: the query half (bottom rows) is masked."""
        rows, cols = self.cfg.grid
        masked = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        masked[rows // 2 :] = True
        return masked.reshape(1, -1)

    def embed(
        self, images: Tensor, targets: Tensor, bool_masked_pos: Tensor | None, seg_type: SegTypeArg
    ) -> Tensor:
        """Both streams stacked along the batch: ``(2B, rows, cols, C)`` = [image; target]."""
        if images.shape != targets.shape or tuple(images.shape[-2:]) != self.cfg.image_size:
            raise ValueError(
                f"expected images and targets of shape (B, 3, {self.cfg.image_size[0]}, "
                f"{self.cfg.image_size[1]}), got {tuple(images.shape)} and {tuple(targets.shape)}"
            )
        if seg_type not in ("instance", "semantic"):
            raise ValueError(f"seg_type must be 'instance' or 'semantic', got {seg_type!r}")
        x = self.patch_embed(images)
        y = self.patch_embed(targets)
        if bool_masked_pos is None:
            bool_masked_pos = self.default_masked_pos(images.device)
        w = bool_masked_pos.reshape(-1, *x.shape[1:3], 1).to(y.dtype)
        y = y * (1 - w) + self.mask_token.to(y.dtype) * w
        pos = self.position_embedding().to(x.dtype)
        type_token = self.type_token_ins if seg_type == "instance" else self.type_token_cls
        x = x + self.segment_token_x + pos + type_token
        y = y + self.segment_token_y + pos + type_token
        return torch.cat([x, y], dim=0)

    def encode(self, tokens: Tensor, ensemble: int = 1) -> list[Tensor]:
        """Run the blocks; returns the normed features of ``out_indices``, each ``(B, rows, cols, C)``."""
        x = tokens
        feats = []
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, ensemble, use_reentrant=False)
            else:
                x = block(x, ensemble)
            if i == self.cfg.merge_index:
                n = x.shape[0] // 2
                x = (x[:n] + x[n:]) * 0.5
            if i in self.cfg.out_indices:
                feats.append(self.norm(x))
        return feats

    def decode(self, feats: list[Tensor], region: DecodeArg = "query") -> Tensor:
        """Multi-level features -> RGB painting (ImageNet-normalised).

        ``region="query"`` decodes only the query half plus the one token row of halo that the
        3x3 conv reads, giving exactly the bottom half of the full decode: ``(B, 3, H/2, W)``.
        ``region="full"`` returns the whole canvas ``(B, 3, H, W)``.
        """
        p, d = self.cfg.patch_size, self.cfg.decoder_hidden_size
        x = torch.cat(feats, dim=-1)
        rows = x.shape[1]
        halo = 0
        if region == "query":
            halo = 1
            x = x[:, rows // 2 - halo :]
        b, r, c, _ = x.shape
        x = self.decoder_embed(x).reshape(b, r, c, p, p, d)
        x = x.permute(0, 5, 1, 3, 2, 4).reshape(b, d, r * p, c * p)
        conv, norm, act, head = self.decoder_pred
        x = conv(x)[:, :, halo * p :]
        return head(act(norm(x)))

    def forward(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        bool_masked_pos: Tensor | None = None,
        seg_type: SegTypeArg = "instance",
        ensemble: int = 1,
        region: DecodeArg = "query",
    ) -> Tensor:
        """Predict the painting of the masked half.

        ``ensemble=k`` treats the batch as groups of ``k`` prompts for one query (authors'
        feature ensemble) and decodes only row 0 of each group: output batch ``B / k``.
        Returns ``(B/k, 3, H/2, W)`` for ``region="query"`` or ``(B/k, 3, H, W)`` for ``"full"``.
        """
        if ensemble < 1 or images.shape[0] % ensemble:
            raise ValueError(f"batch {images.shape[0]} is not a multiple of ensemble={ensemble}")
        feats = self.encode(self.embed(images, targets, bool_masked_pos, seg_type), ensemble)
        if ensemble > 1:
            feats = [f[::ensemble] for f in feats]
        return self.decode(feats, region)


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (``weight``/``bias`` as in the checkpoint)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def balanced_weight(
    target: Tensor, background: Tensor, balance: float, region: Tensor | None = None
) -> Tensor:
    """``(B, 1, H, W)`` pixel weights for :func:`seggpt_loss`: a blend (``balance`` in [0, 1]) of
    uniform weights and equal total weight on each image's foreground and background.

    ``target``: ``(B, 3, H, W)`` normalised painting; ``background``: ``(3,)`` its normalised
    background (black) colour; ``region``: optional ``(B, 1, H, W)`` 0/1 mask of the pixels the
    loss covers. Where the region holds both foreground and background the weights sum to its
    pixel count per image whatever ``balance`` is (where it holds one of them, the balanced part
    sums to half of it). Why: smooth-L1 is a median regressor, so
    with uniform weights an uncertain pixel stays background until the model is > 50 % sure; the
    balanced part pays for painting thin, rare foreground from lower certainty."""
    b, _, h, w = target.shape
    region = torch.ones(b, 1, h, w, device=target.device) if region is None else region.float()
    if balance <= 0:
        return region
    fg = ((target - background.view(1, 3, 1, 1)).abs().amax(dim=1, keepdim=True) > 0.1).float()
    n = region.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    fg_w = fg * region / (fg * region).sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    bg_w = (1 - fg) * region / ((1 - fg) * region).sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    return balance * 0.5 * (fg_w + bg_w) * n + (1 - balance) * region


def seggpt_loss(pred: Tensor, target: Tensor, *, beta: float = 0.01, weight: Tensor | None = None) -> Tensor:
    """Smooth-L1 (beta 0.01) averaged over the predicted pixels: the authors' training loss on
    the masked query half. ``pred``/``target``: ``(B, 3, h, w)`` normalised RGB; optional
    ``weight`` ``(B, 1 or 3, h, w)`` restricts the mean to masked pixels."""
    loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if weight is None:
        return loss.mean()
    weight = weight.expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)
