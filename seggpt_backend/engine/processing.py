"""Pre- and post-processing with the authors' semantics.

- Image prompt/query: RGB ``uint8`` resized to the model's half size with Pillow BICUBIC (aspect
  not kept), ``/255``, ImageNet mean/std. Mask prompt: RGB colour image (white foreground on
  black, or one colour per class), NEAREST resize, same normalisation.
- Output: de-normalise, ``x255``, clip to ``[0, 255]``, bilinear resize to the query's original
  ``H x W``. Binary decision: channel mean ``> 128``. Several classes: nearest palette colour
  (sum of ``|dRGB|``), black being the background.

Arrays are ``(H, W, 3) uint8`` or ``(H, W) bool``; tensors are ``(3, h, w) float32`` CHW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
BINARY_THRESHOLD = 128.0

# Well separated colours for multi-label prompts (sum-|dRGB| distance >= 255 between any two
# and from black); beyond this list colours come from a seeded generator.
_PALETTE = [
    (255, 255, 255),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (128, 128, 255),
    (255, 128, 0),
]


def palette(n: int) -> np.ndarray:
    """``(n, 3) uint8`` distinct foreground colours (index 0 is white, the binary colour)."""
    if n <= len(_PALETTE):
        return np.array(_PALETTE[:n], dtype=np.uint8)
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 256, size=(n - len(_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([np.array(_PALETTE, dtype=np.uint8), extra])


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")


def normalize(rgb: np.ndarray) -> Tensor:
    """``(h, w, 3) uint8`` -> ``(3, h, w) float32`` ImageNet-normalised."""
    if not rgb.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        rgb = rgb.copy()
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    return (t - IMAGENET_MEAN) / IMAGENET_STD


def preprocess_image(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Query or prompt image -> normalised ``(3, h, w)`` at ``size = (h, w)`` (bicubic)."""
    _check_image(image)
    if image.shape[:2] != size:
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return normalize(image)


def colour_masks(masks: Sequence[np.ndarray], colours: np.ndarray) -> np.ndarray:
    """Paint ``(H, W) bool`` masks with ``colours[i]`` on black (later masks win on overlap):
    ``(H, W, 3) uint8``."""
    out = np.zeros((*masks[0].shape, 3), dtype=np.uint8)
    for mask, colour in zip(masks, colours, strict=True):
        if mask.shape != masks[0].shape:
            raise ValueError(f"mask shapes differ: {mask.shape} vs {masks[0].shape}")
        out[mask.astype(bool)] = colour
    return out


def preprocess_target(rgb_mask: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Colour mask prompt ``(H, W, 3) uint8`` -> normalised ``(3, h, w)`` (nearest resize)."""
    _check_image(rgb_mask)
    if rgb_mask.shape[:2] != size:
        rgb_mask = np.asarray(Image.fromarray(rgb_mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return normalize(rgb_mask)


def denormalize(pred: Tensor) -> Tensor:
    """Model output ``(..., 3, h, w)`` -> RGB in ``[0, 255]`` float32."""
    pred = pred.float()
    mean, std = IMAGENET_MEAN.to(pred.device), IMAGENET_STD.to(pred.device)
    return ((pred * std + mean) * 255.0).clamp_(0.0, 255.0)


def resize_to(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(C, h, w)`` to ``size = (H, W)`` (identity when equal)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


def binary_from_painting(painting: Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Painting ``(3, h, w)`` in ``[0, 255]`` -> (soft ``(H, W) float32`` in [0, 1], mask bool).

    The channel mean is taken before resizing (bilinear resize commutes with the mean), so one
    channel is resized instead of three."""
    mean = resize_to(painting.mean(dim=0, keepdim=True), size)[0]
    soft = (mean / 255.0).cpu().numpy().astype(np.float32)
    return soft, (mean > BINARY_THRESHOLD).cpu().numpy()


def palette_from_painting(
    painting: Tensor, size: tuple[int, int], colours: np.ndarray, labels: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Nearest-palette decoding of one painting for several labels at once.

    ``colours[i]`` is the prompt colour of ``labels[i]``; black is the background. Each label
    gets ``soft = d_other / (d_label + d_other)`` in [0, 1] (> 0.5 exactly where the label's
    colour is the nearest) and its mask (``argmin`` of the distances == label)."""
    rgb = resize_to(painting, size)  # (3, H, W)
    ref = torch.cat([torch.zeros(1, 3), torch.from_numpy(colours).float()]).to(rgb.device)
    dist = (rgb[None] - ref[:, :, None, None]).abs().sum(dim=1)  # (1 + n, H, W)
    nearest = dist.argmin(dim=0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, label in enumerate(labels):
        d_label = dist[i + 1]
        others = torch.cat([dist[: i + 1], dist[i + 2 :]]).amin(dim=0)
        soft = others / (d_label + others).clamp_min(1e-6)
        out[label] = (soft.cpu().numpy().astype(np.float32), (nearest == i + 1).cpu().numpy())
    return out


def mask_score(soft: np.ndarray, mask: np.ndarray) -> float:
    """Confidence of a mask: mean soft value inside it (0 for an empty mask)."""
    return float(soft[mask].mean()) if mask.any() else 0.0


def tile_examples(
    images: Sequence[np.ndarray], rgb_masks: Sequence[np.ndarray], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial ensemble (paper 3.2): ``k`` examples tiled in an ``n x n`` grid (``n = ceil(sqrt
    k)``) at ``size`` -> one prompt image and one prompt mask, both ``(h, w, 3) uint8``."""
    n = int(np.ceil(np.sqrt(len(images))))
    h, w = size
    out_img = np.zeros((h, w, 3), dtype=np.uint8)
    out_msk = np.zeros((h, w, 3), dtype=np.uint8)
    rows = np.linspace(0, h, n + 1).astype(int)
    cols = np.linspace(0, w, n + 1).astype(int)
    for i, (img, msk) in enumerate(zip(images, rgb_masks, strict=True)):
        r, c = divmod(i, n)
        th, tw = rows[r + 1] - rows[r], cols[c + 1] - cols[c]
        out_img[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = np.asarray(
            Image.fromarray(img).resize((tw, th), Image.Resampling.BICUBIC)
        )
        out_msk[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = np.asarray(
            Image.fromarray(msk).resize((tw, th), Image.Resampling.NEAREST)
        )
    return out_img, out_msk


def masks_for_labels(
    masks: Mapping[str, np.ndarray], labels: Sequence[str], shape: tuple[int, int]
) -> list[np.ndarray]:
    """The masks of ``labels`` in order; an absent label is an empty mask of ``shape``."""
    return [masks[label] if label in masks else np.zeros(shape, dtype=bool) for label in labels]
