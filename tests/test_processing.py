"""Pre/post-processing against the authors' semantics (transformers' PIL processor as oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seggpt_backend.engine import processing as P

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def oracle() -> object:
    from transformers.models.seggpt.image_processing_pil_seggpt import SegGptImageProcessorPil

    return SegGptImageProcessorPil(size={"height": 48, "width": 40})


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_preprocessing_matches_oracle(oracle: object) -> None:
    image = _rgb(61, 97, 0)
    ours = P.preprocess_image(image, (48, 40))
    ref = oracle(images=image, return_tensors="pt")["pixel_values"][0]  # type: ignore[operator]
    assert ours.shape == (3, 48, 40)
    assert (ours - ref).abs().max() <= 1e-5


def test_mask_preprocessing_is_nearest_and_matches_oracle(oracle: object) -> None:
    mask = np.zeros((61, 97), dtype=bool)
    mask[10:40, 20:70] = True
    rgb = P.colour_masks([mask], P.palette(1))
    ours = P.preprocess_target(rgb, (48, 40))
    ref = oracle(images=None, prompt_masks=rgb, do_convert_rgb=False, return_tensors="pt")  # type: ignore[operator]
    ref = ref["prompt_masks"][0]
    assert (ours - ref).abs().max() <= 1e-5
    # nearest: only the two normalised values of black and white occur
    assert torch.unique(ours[0]).numel() == 2


def test_denormalize_inverts_normalize_and_clips() -> None:
    image = _rgb(8, 8, 1)
    back = P.denormalize(P.normalize(image))
    assert (back - torch.from_numpy(image).permute(2, 0, 1).float()).abs().max() <= 1e-3
    assert P.denormalize(torch.full((3, 2, 2), 50.0)).max() == 255.0
    assert P.denormalize(torch.full((3, 2, 2), -50.0)).min() == 0.0


def test_binary_decision_is_channel_mean_above_128_at_original_size() -> None:
    painting = torch.zeros(3, 4, 4)
    painting[:, :2] = 200.0  # top half bright
    painting[0, 2:] = 255.0  # bottom half: mean 85 -> background
    soft, mask = P.binary_from_painting(painting, (8, 6))
    assert soft.shape == mask.shape == (8, 6)
    assert soft.dtype == np.float32 and soft.min() >= 0.0 and soft.max() <= 1.0
    assert mask[:3].all() and not mask[5:].any()


def test_palette_decoding_several_classes_in_one_pass() -> None:
    colours = P.palette(3)
    truth = np.random.default_rng(2).integers(0, 4, (20, 30))  # 0 = background
    rgb = np.zeros((20, 30, 3), dtype=np.float32)
    for i in range(3):
        rgb[truth == i + 1] = colours[i]
    noisy = rgb + np.random.default_rng(3).normal(0, 30, rgb.shape)
    painting = torch.from_numpy(np.clip(noisy, 0, 255)).permute(2, 0, 1).float()
    decoded = P.palette_from_painting(painting, (20, 30), colours, ["a", "b", "c"])
    for i, label in enumerate(["a", "b", "c"]):
        soft, mask = decoded[label]
        assert np.array_equal(mask, truth == i + 1)
        assert np.array_equal(soft > 0.5, mask)


def test_palette_colours_are_distinct_and_far_from_black() -> None:
    colours = P.palette(12).astype(int)
    assert len({tuple(c) for c in colours}) == 12
    assert colours.sum(axis=1).min() >= 120
    assert tuple(colours[0]) == (255, 255, 255)


def test_spatial_tiling_places_every_example() -> None:
    images = [np.full((30, 20, 3), 50 * (i + 1), dtype=np.uint8) for i in range(4)]
    masks = [P.colour_masks([np.ones((30, 20), bool)], P.palette(1)) for _ in range(4)]
    tiled_img, tiled_mask = P.tile_examples(images, masks, (48, 40))
    assert tiled_img.shape == tiled_mask.shape == (48, 40, 3)
    quadrants = [tiled_img[:24, :20], tiled_img[:24, 20:], tiled_img[24:, :20], tiled_img[24:, 20:]]
    assert [int(q.mean()) for q in quadrants] == [50, 100, 150, 200]
    assert tiled_mask.min() == 255


def test_score_is_mean_soft_inside_mask() -> None:
    soft = np.array([[0.9, 0.7], [0.2, 0.1]], dtype=np.float32)
    assert P.mask_score(soft, soft > 0.5) == pytest.approx(0.8)
    assert P.mask_score(soft, np.zeros_like(soft, dtype=bool)) == 0.0


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        P.preprocess_image(np.zeros((4, 4), np.uint8), (8, 8))
    with pytest.raises(ValueError, match="mask shapes differ"):
        P.colour_masks([np.zeros((2, 2), bool), np.zeros((3, 3), bool)], P.palette(2))
