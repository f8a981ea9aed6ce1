"""SegGPT architecture hyper-parameters and the small registry of named configs.

A config fully determines the module's tensor names and shapes. ``image_size`` is the size of
ONE canvas, ``(H, W)`` in pixels, holding the prompt (top half) over the query (bottom half);
``vit-large`` uses 896 x 448, i.e. two 448 x 448 halves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SegGptConfig:
    """Hyper-parameters of a SegGPT model (defaults: the authors' ViT-L)."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 16
    image_size: tuple[int, int] = (896, 448)
    pretrain_grid: int = 14
    decoder_hidden_size: int = 64
    merge_index: int = 2
    out_indices: tuple[int, ...] = (5, 11, 17, 23)
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        h, w = self.image_size
        problems = []
        if h % (2 * self.patch_size) or w % self.patch_size:
            problems.append(f"image_size {self.image_size} must split into two halves of whole patches")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if not 0 <= self.merge_index < self.num_layers:
            problems.append(f"merge_index {self.merge_index} outside 0..{self.num_layers - 1}")
        if any(not self.merge_index <= i < self.num_layers for i in self.out_indices):
            problems.append(f"out_indices {self.out_indices} must lie in merge_index..num_layers-1")
        if problems:
            raise ValueError("invalid SegGptConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid of one canvas, ``(rows, cols)``."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def half_size(self) -> tuple[int, int]:
        """Pixel size ``(H, W)`` of one half (the prompt or the query), e.g. 448 x 448."""
        return self.image_size[0] // 2, self.image_size[1]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        out["out_indices"] = list(self.out_indices)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegGptConfig:
        """Build from our own ``config.json`` or from a transformers ``SegGptConfig`` dict."""
        if data.get("model_type") == "seggpt" or "num_hidden_layers" in data:
            return cls.from_transformers(data)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("image_size", "out_indices"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_transformers(cls, data: Mapping[str, Any]) -> SegGptConfig:
        """Map a transformers ``SegGptConfig.to_dict()`` onto ours."""
        image_size = data.get("image_size", (896, 448))
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        patch = data.get("patch_size", 16)
        hidden = data.get("hidden_size", 1024)
        return cls(
            hidden_size=hidden,
            num_layers=data.get("num_hidden_layers", 24),
            num_heads=data.get("num_attention_heads", 16),
            mlp_dim=data.get("mlp_dim") or 4 * hidden,
            patch_size=patch if isinstance(patch, int) else patch[0],
            image_size=tuple(image_size),
            pretrain_grid=data.get("pretrain_image_size", 224)
            // (patch if isinstance(patch, int) else patch[0]),
            decoder_hidden_size=data.get("decoder_hidden_size", 64),
            merge_index=data.get("merge_index", 2),
            out_indices=tuple(data.get("intermediate_hidden_state_indices", (5, 11, 17, 23))),
            layer_norm_eps=data.get("layer_norm_eps", 1e-6),
            qkv_bias=data.get("qkv_bias", True),
        )

    def to_transformers(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.SegGptConfig`` describing the same model."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "patch_size": self.patch_size,
            "image_size": list(self.image_size),
            "pretrain_image_size": self.pretrain_grid * self.patch_size,
            "decoder_hidden_size": self.decoder_hidden_size,
            "merge_index": self.merge_index,
            "intermediate_hidden_state_indices": list(self.out_indices),
            "layer_norm_eps": self.layer_norm_eps,
            "qkv_bias": self.qkv_bias,
            "drop_path_rate": 0.0,
        }

    def flops_per_prediction(self, *, decode_query_only: bool = True) -> float:
        """Forward FLOPs (multiply-add = 2) of one single-prompt prediction; 1.59e12 for ViT-L."""
        rows, cols = self.grid
        tokens = rows * cols
        c, m = self.hidden_size, self.mlp_dim
        linear = 2 * tokens * (4 * c * c + 2 * c * m)
        attention = 4 * tokens * tokens * c
        block = linear + attention
        encoder = block * (self.num_layers + self.merge_index + 1)
        dec_rows = rows // 2 + 1 if decode_query_only else rows
        dec_tokens = dec_rows * cols
        p2d = self.patch_size**2 * self.decoder_hidden_size
        decoder = 2 * dec_tokens * len(self.out_indices) * c * p2d
        decoder += 2 * dec_tokens * p2d * self.decoder_hidden_size * 9
        return float(encoder + decoder)


def evenly_spaced_out_indices(num_layers: int, count: int = 4) -> tuple[int, ...]:
    """The authors' choice of decoder taps (5, 11, 17, 23 for 24 layers) for other depths."""
    step = num_layers / count
    return tuple(math.ceil(step * (i + 1)) - 1 for i in range(count))


CONFIGS: dict[str, SegGptConfig] = {
    "vit-large": SegGptConfig(),
    # Unit-test size: every code path of the real model, milliseconds per forward on a CPU.
    "tiny": SegGptConfig(
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        mlp_dim=128,
        patch_size=8,
        image_size=(64, 32),
        pretrain_grid=4,
        decoder_hidden_size=16,
        merge_index=1,
        out_indices=(1, 2, 3),
    ),
    # The in-house demo model (seggpt_backend/demo): small enough to train on a laptop CPU.
    "demo": SegGptConfig(
        hidden_size=192,
        num_layers=6,
        num_heads=6,
        mlp_dim=768,
        patch_size=16,
        image_size=(256, 128),
        pretrain_grid=8,
        decoder_hidden_size=16,
        merge_index=1,
        out_indices=(2, 3, 4, 5),
    ),
}


def get_config(name: str) -> SegGptConfig:
    """Look up a named config (``vit-large``, ``tiny``, ``demo``)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown SegGPT config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None
