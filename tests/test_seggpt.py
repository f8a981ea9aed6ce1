"""The SegGPT module against the transformers oracle and the authors' ensemble semantics."""

from __future__ import annotations

import pytest
import torch

from seggpt_backend.model.checkpoint import to_transformers_names
from seggpt_backend.model.config import SegGptConfig, get_config
from seggpt_backend.model.seggpt import SegGpt, balanced_weight, ensemble_query_half, seggpt_loss

transformers = pytest.importorskip("transformers")  # a test dependency: always installed by scripts/test.sh


def _models(cfg: SegGptConfig, seed: int = 0) -> tuple[SegGpt, torch.nn.Module]:
    ours = SegGpt(cfg).eval()
    ours.init_weights(generator=torch.Generator().manual_seed(seed))  # variance-preserving
    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig(**cfg.to_transformers())).eval()
    ref.load_state_dict(to_transformers_names(ours.state_dict()), strict=True)
    return ours, ref


def _canvases(cfg: SegGptConfig, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, *cfg.image_size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _reference(
    ref: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, **kw: object
) -> torch.Tensor:
    half = images.shape[2] // 2
    out = ref(
        pixel_values=images[:, :, half:],
        prompt_pixel_values=images[:, :, :half],
        prompt_masks=targets[:, :, :half],
        **kw,
    )
    return out.pred_masks


@pytest.mark.parametrize("seg_type", ["instance", "semantic"])
def test_matches_transformers_single_prompt(seg_type: str) -> None:
    cfg = get_config("tiny")
    ours, ref = _models(cfg)
    images, targets = _canvases(cfg, batch=3)
    with torch.no_grad():
        expected = _reference(ref, images, targets, embedding_type=seg_type)
        full = ours(images, targets, seg_type=seg_type, region="full")
        query = ours(images, targets, seg_type=seg_type)
    assert expected.std() > 0.1  # a meaningful output, not a near-constant
    assert (full - expected).abs().max() <= 1e-4
    # Decoding only the query half (+ halo) is exactly the bottom half of the full decode.
    half = cfg.image_size[0] // 2
    assert torch.equal(query, full[:, :, half:])


def test_every_input_path_matters() -> None:
    """Guards the parity test: relative positions, tokens and the prompt all move the output."""
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=1)
    with torch.no_grad():
        base = ours(images, targets)
        assert (ours(images, targets, seg_type="semantic") - base).abs().max() > 1e-3
        other = targets.clone()
        other[:, :, : cfg.image_size[0] // 2] *= -1
        assert (ours(images, other) - base).abs().max() > 1e-3
        table = ours.blocks[0].attn.rel_pos_h
        table.add_(torch.randn_like(table) * 0.1)
        assert (ours(images, targets) - base).abs().max() > 1e-3


def test_full_size_target_half_is_ignored() -> None:
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=2)
    noisy = targets.clone()
    noisy[:, :, cfg.image_size[0] // 2 :] = torch.randn_like(noisy[:, :, cfg.image_size[0] // 2 :])
    with torch.no_grad():
        assert torch.equal(ours(images, targets), ours(images, noisy))


@pytest.mark.slow
def test_matches_transformers_vit_large() -> None:
    """Once at the real ViT-L size (896 x 448, 24 blocks): <= 1e-4 max abs in fp32."""
    cfg = get_config("vit-large")
    ours, ref = _models(cfg, seed=3)
    images, targets = _canvases(cfg, batch=1)
    with torch.no_grad():
        expected = _reference(ref, images, targets)[:, :, cfg.image_size[0] // 2 :]
        del ref
        got = ours(images, targets)
    assert expected.std() > 0.1
    assert (got - expected).abs().max() <= 1e-4


# ---------------------------------------------------------------- feature ensemble (authors)


def _ensemble_rows(images: torch.Tensor, targets: torch.Tensor, order: list[int]) -> tuple[torch.Tensor, ...]:
    """Rows = prompts ``order`` over the query of row 0."""
    half = images.shape[2] // 2
    query = images[:1, :, half:].expand(len(order), -1, -1, -1)
    imgs = torch.cat([images[order, :, :half], query], dim=2)
    return imgs, targets[order]


def test_identical_prompts_give_the_single_prompt_output() -> None:
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=1)
    with torch.no_grad():
        single = ours(images, targets)
        imgs, tgts = _ensemble_rows(images, targets, [0, 0, 0, 0])
        ensembled = ours(imgs, tgts, ensemble=4)
    assert ensembled.shape == single.shape
    assert (ensembled - single).abs().max() <= 1e-5


def test_ensemble_is_permutation_invariant_and_uses_every_prompt() -> None:
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=3)
    # every prompt over the query of row 0
    half = cfg.image_size[0] // 2
    images[:, :, half:] = images[:1, :, half:]
    with torch.no_grad():
        a = ours(*_ensemble_rows(images, targets, [0, 1, 2]), ensemble=3)
        b = ours(*_ensemble_rows(images, targets, [2, 0, 1]), ensemble=3)
        singles = [ours(images[i : i + 1], targets[i : i + 1]) for i in range(3)]
    # The query-half tokens are identical in every row; only the 3x3 conv's one-pixel halo
    # reads row 0's own prompt half, so the first output row follows the first prompt (as in
    # the authors' code, which decodes row 0 of the full canvas).
    assert (a - b)[:, :, 1:].abs().max() <= 1e-5
    for single in singles:
        assert (a - single).abs().max() > 1e-3


def test_groups_in_one_batch_are_independent() -> None:
    """Two queries x 2 prompts in one batch give the same as each group alone."""
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=4)
    with torch.no_grad():
        together = ours(images, targets, ensemble=2)
        first = ours(images[:2], targets[:2], ensemble=2)
        second = ours(images[2:], targets[2:], ensemble=2)
    assert (together - torch.cat([first, second])).abs().max() <= 1e-5


def test_ensemble_stays_within_stream_before_the_merge() -> None:
    """Authors: blocks <= merge_index average image rows among image rows and target rows
    among target rows (transformers mixes the streams at the merge block)."""
    x = torch.arange(4 * 2 * 2 * 1, dtype=torch.float32).reshape(4, 2, 2, 1)  # [img0, img1, tgt0, tgt1]
    out = ensemble_query_half(x, 2)
    assert torch.equal(out[:, :1], x[:, :1])  # prompt half untouched
    assert torch.equal(out[0, 1:], (x[0, 1:] + x[1, 1:]) / 2)
    assert torch.equal(out[2, 1:], (x[2, 1:] + x[3, 1:]) / 2)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=2)
    grads = []
    for flag in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = flag
        loss = seggpt_loss(ours(images, targets), targets[:, :, cfg.image_size[0] // 2 :])
        loss.backward()
        grads.append(ours.patch_embed.proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_inputs_are_refused_clearly() -> None:
    cfg = get_config("tiny")
    ours = SegGpt(cfg)
    images, targets = _canvases(cfg, batch=3)
    with pytest.raises(ValueError, match="multiple of ensemble"):
        ours(images, targets, ensemble=2)
    with pytest.raises(ValueError, match="expected images and targets"):
        ours(images[:, :, :8], targets[:, :, :8])
    with pytest.raises(ValueError, match="seg_type"):
        ours(images, targets, seg_type="panoptic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid SegGptConfig"):
        SegGptConfig(hidden_size=100, num_heads=3)


def test_flops_match_the_reference_count() -> None:
    cfg = get_config("vit-large")
    assert cfg.flops_per_prediction(decode_query_only=False) == pytest.approx(1.59e12, rel=0.01)
    assert cfg.flops_per_prediction() < cfg.flops_per_prediction(decode_query_only=False)


def test_attention_implementations_agree() -> None:
    cfg = get_config("tiny")
    ours, _ = _models(cfg)
    images, targets = _canvases(cfg, batch=2)
    with torch.no_grad():
        ours.set_attention_impl("augmented")
        augmented = ours(images, targets)
        ours.set_attention_impl("bias")
        bias = ours(images, targets)
    assert (augmented - bias).abs().max() <= 1e-4


def test_balanced_weight_gives_foreground_and_background_equal_totals() -> None:
    black = torch.tensor([-2.0, -1.5, -1.0])
    target = black.view(1, 3, 1, 1).repeat(2, 1, 8, 8)
    target[0, :, :2, :2] = 1.0  # 4 foreground pixels of 64
    region = torch.ones(2, 1, 8, 8)
    region[1, :, 4:] = 0  # second image: loss on the top half only, all background
    w = balanced_weight(target, black, 1.0, region=region)
    fg = torch.zeros(8, 8, dtype=torch.bool)
    fg[:2, :2] = True
    torch.testing.assert_close(w[0, 0, fg].sum(), w[0, 0, ~fg].sum())
    torch.testing.assert_close(w[0].sum(), torch.tensor(64.0))
    torch.testing.assert_close(w[1].sum(), torch.tensor(16.0))  # no foreground: half of 32
    assert (w[1, :, 4:] == 0).all()
    torch.testing.assert_close(balanced_weight(target, black, 0.0, region=region), region)
    half = balanced_weight(target, black, 0.5, region=region)
    torch.testing.assert_close(half, 0.5 * w + 0.5 * region)
