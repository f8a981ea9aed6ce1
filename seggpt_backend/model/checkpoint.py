"""Loading SegGPT weights: the authors' ``.pth``, transformers' safetensors, our demo model.

A *weights spec* is one of:

- ``demo``: the small model trained in-house, shipped in ``seggpt_backend/demo/weights/``;
- ``random:<config>`` (e.g. ``random:tiny``, ``random:vit-large``): seeded random weights;
- a local path: an authors' ``.pth``/``.pt`` (weights under ``"model"``), a ``.safetensors``
  file (either naming), or a directory with ``config.json`` + ``model.safetensors``;
- a Hugging Face repo id (``BAAI/seggpt-vit-large``, ``BAAI/SegGPT``): taken from the local
  Hugging Face cache, else downloaded when the hub is reachable.

Loading is strict: a mismatch raises :class:`CheckpointError` listing missing, unexpected and
mis-shaped tensors. Pickled files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seggpt_backend.model.config import SegGptConfig, evenly_spaced_out_indices, get_config
from seggpt_backend.model.seggpt import SegGpt

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "weights"
HF_FILES = {"BAAI/SegGPT": ("seggpt_vit_large.pth",)}
HF_DEFAULT_FILES = ("config.json", "model.safetensors")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class CheckpointError(ValueError):
    """A weights spec or file that cannot be turned into a SegGPT model."""


# (transformers name, authors' name): a trailing "." marks a prefix, "{i}" a block index.
_NAME_PAIRS: tuple[tuple[str, str], ...] = (
    ("model.embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("model.embeddings.mask_token", "mask_token"),
    ("model.embeddings.segment_token_input", "segment_token_x"),
    ("model.embeddings.segment_token_prompt", "segment_token_y"),
    ("model.embeddings.type_token_semantic", "type_token_cls"),
    ("model.embeddings.type_token_instance", "type_token_ins"),
    ("model.embeddings.position_embeddings", "pos_embed"),
    ("model.encoder.layers.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("model.encoder.layers.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("model.encoder.layers.{i}.attention.", "blocks.{i}.attn."),
    ("model.encoder.layers.{i}.mlp.lin1.", "blocks.{i}.mlp.fc1."),
    ("model.encoder.layers.{i}.mlp.lin2.", "blocks.{i}.mlp.fc2."),
    ("model.encoder.layernorm.", "norm."),
    ("decoder.decoder_embed.", "decoder_embed."),
    ("decoder.decoder_pred.conv.", "decoder_pred.0."),
    ("decoder.decoder_pred.layernorm.", "decoder_pred.1."),
    ("decoder.decoder_pred.head.", "decoder_pred.3."),
)


def _rename(state: Mapping[str, Tensor], pairs: list[tuple[str, str]]) -> dict[str, Tensor]:
    rules: list[tuple[re.Pattern[str], str]] = []
    for src, dst in pairs:
        source = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((re.compile(source), dst))
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        for pattern, dst in rules:
            if m := pattern.match(name):
                name = dst.replace("{i}", m.group(1) if m.groups() else "") + name[m.end() :]
                break
        out[name] = tensor
    return out


def to_authors_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ``SegGptForImageSegmentation`` state dict to the authors' names.
    Authors' names pass through unchanged."""
    return _rename(state, list(_NAME_PAIRS))


def to_transformers_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`to_authors_names` (for exporting or feeding the transformers oracle)."""
    return _rename(state, [(dst, src) for src, dst in _NAME_PAIRS])


def infer_config(state: Mapping[str, Tensor]) -> SegGptConfig:
    """Derive depth, width, heads, patch and input size from the tensors' shapes (authors' names)."""
    try:
        proj = state["patch_embed.proj.weight"]
        rel_h, rel_w = state["blocks.0.attn.rel_pos_h"], state["blocks.0.attn.rel_pos_w"]
        hidden, patch = proj.shape[0], proj.shape[-1]
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        n_out = state["decoder_embed.weight"].shape[1] // hidden
        out_indices = evenly_spaced_out_indices(depth, n_out)
        return SegGptConfig(
            hidden_size=hidden,
            num_layers=depth,
            num_heads=hidden // rel_h.shape[1],
            mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
            patch_size=patch,
            image_size=((rel_h.shape[0] + 1) // 2 * patch, (rel_w.shape[0] + 1) // 2 * patch),
            pretrain_grid=round((state["pos_embed"].shape[1] - 1) ** 0.5),
            decoder_hidden_size=state["decoder_pred.0.weight"].shape[0],
            merge_index=min(2, out_indices[0]),
            out_indices=out_indices,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer a SegGPT config from these tensors: {exc}") from exc


def load_state_strict(model: SegGpt, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or mis-shaped tensor is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError("checkpoint does not match the SegGPT model; " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)


@dataclass(frozen=True)
class LoadedWeights:
    """Tensors (authors' names, CPU), the config they describe, and a short content hash."""

    state: dict[str, Tensor]
    config: SegGptConfig
    version: str


def _read_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects: say so clearly
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch checkpoint ({exc})") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'model')")
    return dict(obj)


def _file_version(path: Path) -> str:
    digest = hashlib.sha256()
    stat = path.stat()
    digest.update(f"{path.name}:{stat.st_size}".encode())
    with path.open("rb") as fh:  # head and tail: cheap and changes with any re-export
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:12]


def _load_path(path: Path) -> LoadedWeights:
    config_data = None
    if path.is_dir():
        config_path = path / "config.json"
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors or *.pth file in this directory")
        if config_path.exists():
            config_data = json.loads(config_path.read_text())
        path = files[0]
    elif path.with_suffix(".json").exists():
        config_data = json.loads(path.with_suffix(".json").read_text())
    state = to_authors_names(_read_file(path))
    config = SegGptConfig.from_dict(config_data) if config_data else infer_config(state)
    return LoadedWeights(state, config, f"{path.stem}-{_file_version(path)}")


def _hf_cache_dirs() -> list[Path]:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [Path(os.environ.get("HF_HUB_CACHE", home / "hub"))]


def _resolve_hf(repo_id: str, download_dir: Path | None, timeout_s: float) -> Path:
    files = HF_FILES.get(repo_id, HF_DEFAULT_FILES)
    for cache in _hf_cache_dirs():
        snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        for snap in sorted(snapshots.glob("*"), reverse=True):
            if all((snap / f).exists() for f in files):
                return snap if len(files) > 1 else snap / files[0]
    target = (download_dir or Path.home() / ".cache" / "seggpt-backend") / repo_id.replace("/", "--")
    if all((target / f).exists() for f in files):
        return target if len(files) > 1 else target / files[0]
    import httpx

    target.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout_s, read=120.0), follow_redirects=True) as client:
            for name in files:
                url = f"https://huggingface.co/{repo_id}/resolve/main/{name}"
                with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise CheckpointError(f"{url}: HTTP {resp.status_code}")
                    partial = target / (name + ".part")
                    with partial.open("wb") as fh:
                        for chunk in resp.iter_bytes(1 << 20):
                            fh.write(chunk)
                    partial.rename(target / name)
    except (httpx.HTTPError, CheckpointError) as exc:
        for leftover in target.glob("*.part"):
            leftover.unlink()
        if not any(target.iterdir()):
            target.rmdir()
        raise CheckpointError(
            f"cannot get weights {repo_id!r} from the Hugging Face hub ({exc}). Download them on a "
            f"machine with access (e.g. `huggingface-cli download {repo_id}`) and set SEGGPT_WEIGHTS "
            "to the downloaded file or directory, or copy them into the Hugging Face cache "
            f"({_hf_cache_dirs()[0]}). Offline, SEGGPT_WEIGHTS=demo uses the bundled demo model."
        ) from exc
    return target if len(files) > 1 else target / files[0]


def load_weights(spec: str, *, download_dir: Path | None = None, timeout_s: float = 5.0) -> LoadedWeights:
    """Resolve a weights spec (see module docstring) into tensors and their config."""
    if spec == "demo":
        if not (DEMO_DIR / "config.json").exists():
            raise CheckpointError(f"the demo weights are missing from {DEMO_DIR} (reinstall the package)")
        return _load_path(DEMO_DIR)
    if spec.startswith("random:"):
        name, _, seed = spec.removeprefix("random:").partition("@")
        try:
            config = get_config(name)
        except KeyError as exc:
            raise CheckpointError(f"weights spec {spec!r}: {exc.args[0]}") from None
        if not (seed or "0").isdigit():
            raise CheckpointError(f"weights spec {spec!r}: the seed after '@' must be an integer")
        model = SegGpt(config)
        model.init_weights(generator=torch.Generator().manual_seed(int(seed or 0)))
        return LoadedWeights(dict(model.state_dict()), config, f"random-{name}-{seed or 0}")
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path)
    # "weights/model.pth" also fits the repo-id pattern; a weights suffix means a missing file.
    if path.suffix in _WEIGHT_SUFFIXES or spec.startswith(("/", "./", "../", "~")):
        raise CheckpointError(f"weights spec {spec!r}: no such file or directory ({path.resolve()})")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return _load_path(_resolve_hf(spec, download_dir, timeout_s))
    raise CheckpointError(
        f"weights spec {spec!r} is neither 'demo', 'random:<config>', an existing path nor a "
        "Hugging Face repo id like 'BAAI/seggpt-vit-large'"
    )


def build_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    download_dir: Path | None = None,
) -> tuple[SegGpt, str]:
    """Load weights into a fresh eval-mode model on ``device``; returns it and its version.
    Weights fetched from the hub are kept in ``download_dir`` (default ``~/.cache/seggpt-backend``)."""
    weights = load_weights(spec, download_dir=download_dir)
    with torch.device("meta"):
        model = SegGpt(weights.config)
    model = model.to_empty(device="cpu")
    load_state_strict(model, weights.state)
    return model.to(device=device, dtype=dtype).eval(), weights.version
