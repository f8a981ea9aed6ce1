"""Weights loading against the real checkpoint formats, built here with the real names and shapes.

The real checkpoints cannot be downloaded on the project machines, so every format is written
by the library that writes it in the wild: ``torch.save`` for the authors' ``.pth``,
``save_pretrained`` of a (tiny, random) ``transformers.SegGptForImageSegmentation`` for the
transformers directory, ``safetensors`` for a lone file, and the Hugging Face cache layout
(``models--org--name/snapshots/<hash>/`` symlinked to ``blobs/``). Each loaded model is run
and compared with the model the weights came from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from seggpt_backend.model.checkpoint import (
    CheckpointError,
    build_model,
    infer_config,
    load_state_strict,
    load_weights,
    to_authors_names,
    to_transformers_names,
)
from seggpt_backend.model.config import SegGptConfig, get_config
from seggpt_backend.model.seggpt import SegGpt

TINY = get_config("tiny")


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _inputs(cfg: SegGptConfig, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised image and target canvases ``(batch, 3, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, *cfg.image_size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@torch.inference_mode()
def _run(model: SegGpt, cfg: SegGptConfig) -> torch.Tensor:
    images, targets = _inputs(cfg)
    return model(images, targets)


@pytest.fixture(scope="module")
def tiny_source() -> tuple[SegGpt, torch.Tensor]:
    """The ``random:tiny`` model and its output on fixed inputs."""
    weights = load_weights("random:tiny")
    model = SegGpt(weights.config).eval()
    model.load_state_dict(weights.state)
    return model, _run(model, TINY)


def _tiny_transformers(seed: int = 3) -> transformers.SegGptForImageSegmentation:
    """A tiny transformers SegGPT (same sizes as our ``tiny``) with visibly random weights.

    transformers' own init (std 0.02) leaves tokens and relative positions nearly zero, which
    would let a mis-mapped tensor go unnoticed; every tensor gets an O(1)-output scale instead.
    """
    config = transformers.SegGptConfig(**TINY.to_transformers())
    model = transformers.SegGptForImageSegmentation(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.ndim > 1 and "token" not in name and "position" not in name else 1
                p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
    return model


@torch.inference_mode()
def _run_transformers(model: transformers.SegGptForImageSegmentation, cfg: SegGptConfig) -> torch.Tensor:
    """Query-half painting of transformers' model on the same canvases as :func:`_run`."""
    images, targets = _inputs(cfg)
    half = cfg.image_size[0] // 2
    out = model(
        pixel_values=images[:, :, half:],
        prompt_pixel_values=images[:, :, :half],
        prompt_masks=targets[:, :, :half],
    ).pred_masks
    return out[:, :, half:]


# ---------------------------------------------------------------------------- names and shapes
@pytest.fixture(scope="module")
def vit_large_states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ours, transformers') ViT-L state dicts on the meta device: real names and shapes, no data."""
    with torch.device("meta"):
        ours = SegGpt(get_config("vit-large")).state_dict()
        theirs = transformers.SegGptForImageSegmentation(transformers.SegGptConfig()).state_dict()
    return dict(ours), dict(theirs)


def test_vit_large_names_and_shapes_match_transformers(vit_large_states):
    ours, theirs = vit_large_states
    renamed = to_authors_names(theirs)
    assert _shapes(renamed) == _shapes(ours)
    assert len(ours) == 354
    assert sum(v.numel() for v in ours.values()) == 370_723_203
    assert ours["decoder_embed.weight"].numel() + ours["decoder_embed.bias"].numel() == 67_125_248
    # spot checks of the table in SEGGPT.md, both directions
    assert tuple(ours["pos_embed"].shape) == (1, 197, 1024)
    assert tuple(ours["blocks.0.attn.rel_pos_h"].shape) == (111, 64)
    assert tuple(ours["blocks.0.attn.rel_pos_w"].shape) == (55, 64)
    assert "segment_token_y" in renamed and "decoder_pred.3.weight" in renamed


def test_to_transformers_names_is_the_inverse(vit_large_states):
    ours, theirs = vit_large_states
    assert _shapes(to_transformers_names(ours)) == _shapes(theirs)
    assert list(to_transformers_names(to_authors_names(theirs))) == list(theirs)
    assert list(to_authors_names(to_transformers_names(ours))) == list(ours)
    # authors' names pass through to_authors_names untouched
    assert list(to_authors_names(ours)) == list(ours)


def test_infer_config_vit_large(vit_large_states):
    ours, theirs = vit_large_states
    assert infer_config(ours) == get_config("vit-large")
    assert infer_config(to_authors_names(theirs)) == get_config("vit-large")


def test_infer_config_tiny_builds_the_same_shapes():
    state = SegGpt(TINY).state_dict()
    inferred = infer_config(state)
    with torch.device("meta"):
        rebuilt = SegGpt(inferred).state_dict()
    assert _shapes(rebuilt) == _shapes(state)
    assert (inferred.grid, inferred.num_heads, inferred.out_indices) == (TINY.grid, TINY.num_heads, (1, 2, 3))


def test_infer_config_refuses_foreign_tensors():
    with pytest.raises(CheckpointError, match="cannot infer a SegGPT config"):
        infer_config({"fc.weight": torch.zeros(2, 2)})


# ---------------------------------------------------------------------------- formats
def test_authors_pth_with_model_key(tmp_path, tiny_source):
    model, expected = tiny_source
    path = tmp_path / "seggpt_vit_large.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded, version = build_model(str(path))
    assert torch.equal(_run(loaded, TINY), expected)
    assert version.startswith("seggpt_vit_large-")


def test_bare_state_dict_pth(tmp_path, tiny_source):
    model, expected = tiny_source
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded, _ = build_model(str(path))
    assert torch.equal(_run(loaded, TINY), expected)


def test_transformers_save_pretrained_directory(tmp_path):
    source = _tiny_transformers()
    source.save_pretrained(tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors"}
    weights = load_weights(str(tmp_path / "hf"))
    assert weights.config == SegGptConfig.from_transformers(source.config.to_dict())
    assert weights.config == TINY
    loaded, _ = build_model(str(tmp_path / "hf"))
    ours, theirs = _run(loaded, TINY), _run_transformers(source, TINY)
    assert theirs.abs().mean() > 0.1  # a real signal, not a near-zero output that matches anything
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_lone_safetensors_file_infers_config(tmp_path, tiny_source):
    model, expected = tiny_source
    for naming, name in ((dict, "authors.safetensors"), (to_transformers_names, "hf_names.safetensors")):
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in naming(model.state_dict()).items()}, str(path))
        weights = load_weights(str(path))
        assert weights.config == TINY
        loaded, _ = build_model(str(path))
        assert torch.equal(_run(loaded, TINY), expected), naming


def _hf_cache_snapshot(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """Lay ``files`` out as huggingface_hub does: blobs by content hash, snapshot symlinks."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for name, src in files.items():
        blob = repo_dir / "blobs" / f"blob-{name}"
        blob.write_bytes(src.read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_hugging_face_cache_layout_resolves_repo_id(tmp_path, monkeypatch):
    source = _tiny_transformers(seed=5)
    source.save_pretrained(tmp_path / "export")
    cache = tmp_path / "hub"
    _hf_cache_snapshot(
        cache,
        "BAAI/seggpt-vit-large",
        {n: tmp_path / "export" / n for n in ("config.json", "model.safetensors")},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded, version = build_model("BAAI/seggpt-vit-large")
    torch.testing.assert_close(_run(loaded, TINY), _run_transformers(source, TINY), rtol=1e-4, atol=1e-4)
    assert version.startswith("model-")


def test_hugging_face_cache_authors_repo(tmp_path, monkeypatch, tiny_source):
    model, expected = tiny_source
    torch.save({"model": model.state_dict()}, tmp_path / "seggpt_vit_large.pth")
    cache = tmp_path / "hub"
    _hf_cache_snapshot(cache, "BAAI/SegGPT", {"seggpt_vit_large.pth": tmp_path / "seggpt_vit_large.pth"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded, _ = build_model("BAAI/SegGPT")
    assert torch.equal(_run(loaded, TINY), expected)


def test_version_follows_content(tmp_path):
    for seed in (0, 1):
        model = SegGpt(TINY)
        model.init_weights(generator=torch.Generator().manual_seed(seed))
        torch.save({"model": model.state_dict()}, tmp_path / f"w{seed}.pth")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "w0.pth").write_bytes((tmp_path / "w0.pth").read_bytes())
    v0, v1 = (load_weights(str(tmp_path / f"w{s}.pth")).version for s in (0, 1))
    assert v0 != v1
    assert load_weights(str(tmp_path / "copy" / "w0.pth")).version == v0


# ---------------------------------------------------------------------------- refusals
def test_missing_unexpected_and_misshaped_listed_together(tmp_path):
    state = dict(SegGpt(TINY).state_dict())
    del state["blocks.0.mlp.fc1.bias"]
    state["head.weight"] = torch.zeros(10, 64)
    state["decoder_pred.3.weight"] = torch.zeros(4, 16, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        build_model(str(path))
    message = str(info.value)
    assert "missing: blocks.0.mlp.fc1.bias" in message
    assert "unexpected: head.weight" in message
    assert "mis-shaped: decoder_pred.3.weight: checkpoint (4, 16, 1, 1) vs model (3, 16, 1, 1)" in message


def test_long_mismatch_lists_are_counted():
    with pytest.raises(CheckpointError, match=r"mis-shaped: .*\(\d+ in all\)"):
        load_state_strict(SegGpt(get_config("demo")), SegGpt(TINY).state_dict())


class _Payload:
    """Unpickling this object opens (creates) ``path``: code execution on load."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_with_arbitrary_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    state = dict(SegGpt(TINY).state_dict())
    path = tmp_path / "evil.pth"
    torch.save({"model": state, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="not a loadable weights-only PyTorch checkpoint") as info:
        load_weights(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()
    # the payload is live: a plain unpickler does run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickle_without_tensors_is_refused(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        load_weights(str(path))


def test_unreachable_hub_fails_fast_and_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_weights("nobody-here/no-such-seggpt", download_dir=tmp_path / "downloads", timeout_s=2.0)
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "'nobody-here/no-such-seggpt'" in message
    assert "SEGGPT_WEIGHTS" in message and "huggingface-cli download" in message
    assert not (tmp_path / "downloads" / "nobody-here--no-such-seggpt").exists()  # nothing left behind


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("definitely not a spec!", "neither 'demo', 'random:<config>'"),
        ("random:enormous", "unknown SegGPT config 'enormous'"),
        ("random:tiny@seven", "seed"),
        ("weights/missing.pth", "no such file"),
    ],
)
def test_nonsense_specs(spec, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_weights(spec, download_dir=tmp_path / "downloads")
    assert needle in str(info.value)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors or \*\.pth file"):
        load_weights(str(tmp_path))


# ---------------------------------------------------------------------------- build_model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_build_model_eval_mode_and_dtype(dtype):
    model, version = build_model("random:tiny@2", dtype=dtype)
    assert version == "random-tiny-2"
    assert not any(m.training for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    reference = SegGpt(TINY)
    reference.init_weights(generator=torch.Generator().manual_seed(2))
    got = model.state_dict()
    assert all(torch.equal(got[k], v.to(dtype)) for k, v in reference.state_dict().items())
