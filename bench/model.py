"""Benchmark: our SegGPT forward vs transformers' ``SegGptForImageSegmentation``, same weights.

Both models hold the SAME random ViT-L tensors (ours initialised with ``SegGpt.init_weights()``
as ``random:vit-large`` does; transformers' parameters are ours, renamed with
``to_transformers_names`` and assigned without copying), run on the same device and the same
inputs, side by side in one process, repetitions interleaved so that background load hits both.

Measured per (dtype, ensemble k, batch of queries):
- predictions/s (one prediction = one query with its k prompts), best of ``--repeats``;
- model FLOP utilisation: ``cfg.flops_per_prediction(decode_query_only=False) * k`` (1.59 TFLOP
  for ViT-L, k = 1) per prediction against a dense matmul of the same dtype measured here;
- peak memory: CUDA ``max_memory_allocated`` above the weights; CPU peak RSS above the RSS
  before the call (``/proc/self/clear_refs`` resets the high-water mark; ``malloc_trim`` first
  returns memory the allocator kept from earlier calls);
- output agreement: ours vs transformers (fp32; k > 1 differs by design, see SEGGPT.md) and, on
  CUDA, our bf16 autocast vs our fp32.

What is timed is the forward call (inputs already on the device). Ours decodes only the query
half (its normal mode); transformers decodes the whole canvas. On CUDA, ``--end-to-end`` also
times ``SegGptEngine.paint`` (uint8 queries in, CPU paintings out).

Run: ``.venv/bin/python bench/model.py --batches 1 --ks 1 4 --repeats 2 --device cpu --dtype fp32``
(defaults depend on the device); appends a section to ``--out`` (``bench/results_model.md``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import cpu_name
from torch import Tensor, nn

from seggpt_backend.model.checkpoint import to_transformers_names
from seggpt_backend.model.config import SegGptConfig, get_config
from seggpt_backend.model.seggpt import SegGpt

RESULTS = Path(__file__).with_name("results_model.md")
CPU_TARGET_RATIO = 1.3


# ----------------------------------------------------------------------------- environment
def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of one call above what was live before it, in bytes (None if unavailable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc: ctypes.CDLL | None = None
        if device.type == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def __call__(self, fn: Callable[[], object]) -> tuple[object, int | None]:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            out = fn()
            _sync(self.device)
            return out, torch.cuda.max_memory_allocated(self.device) - before
        try:
            if self._libc is not None:
                self._libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before = self._status_kib("VmRSS")
        except (OSError, KeyError):
            return fn(), None
        out = fn()
        return out, (self._status_kib("VmHWM") - before) * 1024


# ----------------------------------------------------------------------------- models
def build_models(cfg: SegGptConfig, device: torch.device, seed: int) -> tuple[SegGpt, nn.Module]:
    """Ours with ``init_weights()`` (the ``random:<config>`` init) and transformers' model holding
    the very same tensors (``assign=True``: no copy)."""
    import transformers

    with torch.device("meta"):
        ours = SegGpt(cfg)
    ours = ours.to_empty(device="cpu")
    ours.init_weights(generator=torch.Generator().manual_seed(seed))
    ours = ours.to(device).eval().requires_grad_(False)
    with torch.device("meta"):
        theirs = transformers.SegGptForImageSegmentation(transformers.SegGptConfig(**cfg.to_transformers()))
    theirs.load_state_dict(to_transformers_names(ours.state_dict()), strict=True, assign=True)
    theirs = theirs.eval().requires_grad_(False)
    return ours, theirs


@dataclass
class Inputs:
    """Normalised canvases for ``batch`` queries x ``k`` prompts (rows grouped per query)."""

    prompt_images: Tensor  # (batch * k, 3, h, w)
    prompt_masks: Tensor  # (batch * k, 3, h, w)
    queries: Tensor  # (batch * k, 3, h, w), each query repeated k times

    @classmethod
    def random(cls, cfg: SegGptConfig, batch: int, k: int, device: torch.device) -> Inputs:
        g = torch.Generator().manual_seed(batch * 100 + k)
        h, w = cfg.half_size
        prompt_images = torch.randn(batch * k, 3, h, w, generator=g)
        # a white-on-black mask prompt (normalised), as the service sends
        fg = (torch.rand(batch * k, 1, h // 16, w // 16, generator=g) > 0.6).float()
        fg = nn.functional.interpolate(fg, size=(h, w), mode="nearest").expand(-1, 3, -1, -1)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        prompt_masks = (fg - mean) / std
        queries = torch.randn(batch, 3, h, w, generator=g).repeat_interleave(k, dim=0)
        return cls(prompt_images.to(device), prompt_masks.to(device), queries.to(device))


def _ours_name(variant: str) -> str:
    return "ours" if variant == "augmented" else f"ours ({variant})"


def run_ours(
    model: SegGpt, x: Inputs, k: int, autocast: torch.dtype | None, attention: str = "auto"
) -> Tensor:
    """Our forward exactly as the engine calls it: ``(batch, 3, h, w)`` query-half painting.
    ``attention`` picks the attention core for this call (``SegGpt.set_attention_impl``)."""
    model.set_attention_impl(attention)  # type: ignore[arg-type]
    images = torch.cat([x.prompt_images, x.queries], dim=2)
    targets = torch.cat([x.prompt_masks, torch.zeros_like(x.queries)], dim=2)
    device = images.device.type
    with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
        return model(images, targets, ensemble=k)


def run_theirs(model: nn.Module, x: Inputs, k: int, autocast: torch.dtype | None) -> Tensor:
    """transformers' forward; ``feature_ensemble`` averages over the whole batch (it has no
    groups), so for batch > 1 with k > 1 it costs the same but is not a per-query ensemble."""
    device = x.queries.device.type
    with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = model(
            pixel_values=x.queries,
            prompt_pixel_values=x.prompt_images,
            prompt_masks=x.prompt_masks,
            feature_ensemble=k > 1,
        ).pred_masks
    return out[:: max(k, 1), :, out.shape[2] // 2 :]


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Dense matmul throughput measured here: the denominator of the FLOP utilisation."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


# ----------------------------------------------------------------------------- measurement
@dataclass
class Row:
    dtype: str
    k: int
    batch: int
    times: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def best(self, name: str) -> float | None:
        return min(self.times[name]) if self.times.get(name) else None


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def measure(
    args: argparse.Namespace,
    cfg: SegGptConfig,
    device: torch.device,
    ours: SegGpt,
    theirs: nn.Module,
) -> list[Row]:
    rows: list[Row] = []
    peak = PeakMemory(device)
    warmed: set[str] = set()
    reference: dict[tuple[int, int], Tensor] = {}  # (k, batch) -> our fp32 output
    for dtype in args.dtype_list:
        autocast = None if dtype == "fp32" else torch.bfloat16
        for k in args.ks:
            for batch in args.batches:
                row = Row(dtype, k, batch)
                rows.append(row)
                x = Inputs.random(cfg, batch, k, device)
                runners: dict[str, Callable[[], object]] = {}
                for variant in args.attention:
                    runners[_ours_name(variant)] = lambda x=x, k=k, a=autocast, v=variant: run_ours(
                        ours, x, k, a, attention=v
                    )
                if not args.skip_transformers and (dtype == "fp32" or args.transformers_bf16):
                    runners["transformers"] = lambda x=x, k=k, a=autocast: run_theirs(theirs, x, k, a)
                if args.end_to_end:
                    runners["ours end-to-end"] = _engine_runner(ours, cfg, x, k, autocast)
                outputs: dict[str, Tensor] = {}
                for name, fn in runners.items():
                    try:
                        with torch.inference_mode():
                            warm = args.warmup if args.warmup_every_config or name not in warmed else 0
                            for _ in range(warm):
                                _timed(fn, device)
                            warmed.add(name)
                    except torch.OutOfMemoryError:
                        row.notes.append(f"{name}: out of memory")
                        torch.cuda.empty_cache()
                for rep in range(args.repeats):
                    for name, fn in runners.items():
                        if any(n.startswith(name + ":") for n in row.notes):
                            continue
                        try:
                            with torch.inference_mode():
                                if rep == 0:
                                    (out, dt_s), mem = peak(lambda fn=fn: _timed(fn, device))
                                    row.memory[name] = mem
                                    if isinstance(out, Tensor):
                                        outputs[name] = out.float().cpu()
                                else:
                                    _, dt_s = _timed(fn, device)
                        except torch.OutOfMemoryError:
                            row.notes.append(f"{name}: out of memory")
                            torch.cuda.empty_cache()
                            continue
                        row.times.setdefault(name, []).append(dt_s)
                        print(f"  {dtype} k={k} batch={batch} {name}: {dt_s:.3f} s", flush=True)
                for name in (n for n in outputs if n.startswith("ours") and "transformers" in outputs):
                    err = _rel_err(outputs[name], outputs["transformers"])
                    why = "" if k == 1 else " (k > 1: transformers' block-2 ensemble differs, expected ~1e-2)"
                    row.notes.append(f"{name} vs transformers rel. error {err:.1e}{why}")
                if dtype == "fp32" and "ours" in outputs:
                    reference[(k, batch)] = outputs["ours"]
                elif "ours" in outputs and (k, batch) in reference:
                    err = _rel_err(outputs["ours"], reference[(k, batch)])
                    row.notes.append(f"ours {dtype} vs fp32 rel. error {err:.1e}")
    return rows


def _engine_runner(
    model: SegGpt, cfg: SegGptConfig, x: Inputs, k: int, autocast: torch.dtype | None
) -> Callable[[], object]:
    """``SegGptEngine.paint``: uint8 queries in, (3, h, w) paintings on the CPU out."""
    from seggpt_backend.engine.engine import PromptSet, SegGptEngine

    engine = SegGptEngine(model, version="bench", autocast=autocast, max_batch=x.queries.shape[0])
    batch = x.queries.shape[0] // k
    g = torch.Generator().manual_seed(7)
    queries = [torch.randint(0, 256, (*cfg.half_size, 3), generator=g, dtype=torch.uint8).numpy()] * batch
    prompts = PromptSet(x.prompt_images[:k].cpu(), x.prompt_masks[:k].cpu())
    return lambda: engine.paint(queries, prompts)


# ----------------------------------------------------------------------------- profile
def module_breakdown(model: nn.Module, run: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Wall seconds per part of one forward, from forward hooks (synchronised on CUDA)."""
    parts = {
        "qkv + proj linears": ("attn.qkv", "attn.proj", "attention.qkv", "attention.proj"),
        "attention (whole module)": ("attn", "attention"),
        "MLP (fc1, GELU, fc2)": ("mlp",),
        "LayerNorms (blocks)": ("norm1", "norm2", "layernorm_before", "layernorm_after"),
        "decoder_embed linear": ("decoder_embed",),
        # children, not the container: ours calls decoder_pred's members one by one
        "decoder conv/LN/GELU head": tuple(f"decoder_pred.{c}" for c in ("0", "1", "2", "3"))
        + tuple(f"decoder_pred.{c}" for c in ("conv", "layernorm", "act_fct", "head")),
    }
    totals = dict.fromkeys(parts, 0.0)
    starts: dict[int, float] = {}
    handles = []
    for name, module in model.named_modules():
        # "blocks.3.attn.qkv" (ours) and "model.encoder.layers.3.attention.qkv" -> "attn.qkv" etc.
        leaf = re.sub(r"^(blocks|model\.encoder\.layers)\.\d+\.|^decoder\.", "", name)
        for part, suffixes in parts.items():
            if leaf in suffixes:

                def pre(mod: nn.Module, _inp: object) -> None:
                    _sync(device)
                    starts[id(mod)] = time.perf_counter()

                def post(mod: nn.Module, _inp: object, _out: object, part: str = part) -> None:
                    _sync(device)
                    totals[part] += time.perf_counter() - starts[id(mod)]

                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            _, total = _timed(run, device)
    finally:
        for h in handles:
            h.remove()
    totals["attention core (scores, rel-pos, softmax, AV)"] = (
        totals.pop("attention (whole module)") - totals["qkv + proj linears"]
    )
    totals["other (embeddings, merge, reshapes)"] = total - sum(totals.values())
    totals["total"] = total
    return totals


def op_profile(run: Callable[[], object], rows: int = 12) -> str:
    """torch.profiler table of one forward, sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _augmented_width(d: int, grid: tuple[int, int]) -> int:
    """Width of our augmented q/k: head dim + one-hot rows + cols, padded to a multiple of 8."""
    width = d + grid[0] + grid[1]
    return width + (-width % 8)


def attention_variants(device: torch.device, repeats: int = 4) -> str:
    """One ViT-L attention core (16 heads x 64, 56 x 28 grid, one row): ms per call."""
    from seggpt_backend.model import seggpt as S

    rows, cols, heads, d = 56, 28, 16, 64
    n = rows * cols
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, generator=g).to(device) for _ in range(3))
    table_h = S._relative_table(0.1 * torch.randn(2 * rows - 1, d, generator=g), rows).to(device)
    table_w = S._relative_table(0.1 * torch.randn(2 * cols - 1, d, generator=g), cols).to(device)
    q_grid = q.reshape(1, heads, rows, cols, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, table_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, table_w)

    def explicit() -> Tensor:  # transformers' way: scores + broadcast bias, softmax, @ v
        attn = (q * d**-0.5) @ k.transpose(-2, -1)
        attn = attn.view(1, heads, rows, cols, rows, cols) + rel_h[..., None] + rel_w[..., None, :]
        return attn.view(1, heads, n, n).softmax(-1) @ v

    width = _augmented_width(d, (rows, cols))
    variants = {
        f"impl='augmented' (q, k, v {width} wide)": lambda: S._attention(
            q, k, v, rel_h, rel_w, (rows, cols), "augmented"
        ),
        "impl='bias' (L x L bias as attn_mask)": lambda: S._attention(
            q, k, v, rel_h, rel_w, (rows, cols), "bias"
        ),
        "explicit (transformers-style)": explicit,
    }
    aug = q.new_zeros(1, heads, n, width)
    choice = dict(
        zip(
            variants,
            [
                torch._fused_sdp_choice(aug, aug, aug, scale=1.0),
                torch._fused_sdp_choice(q, k, v, attn_mask=q.new_zeros(1, heads, n, n)),
            ],
            strict=False,
        )
    )
    lines = [
        "### Attention core variants (one ViT-L layer, one row, fp32)",
        "",
        "| variant | SDPA backend | best ms | max abs diff vs explicit |",
        "|---|---|---|---|",
    ]
    with torch.inference_mode():
        ref = explicit()
        times = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                _, t = _timed(fn, device)
                times[name].append(t)
        backends = ["math", "flash", "efficient", "cudnn", "overrideable"]
        for name, fn in variants.items():
            backend = backends[choice[name]] if name in choice else "—"
            err = float((fn() - ref).abs().max())
            lines.append(f"| {name} | {backend} | {min(times[name]) * 1e3:.0f} | {err:.1e} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def _fmt_mem(b: int | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def report(
    args: argparse.Namespace,
    cfg: SegGptConfig,
    device: torch.device,
    rows: list[Row],
    peaks: dict[str, float],
    header: dict[str, str],
    profile_text: str,
) -> str:
    flops = cfg.flops_per_prediction(decode_query_only=False)
    lines = [
        f"## bench/model.py — {header['device']} — {header['date']}",
        "",
        f"- command: `{header['command']}`",
        f"- torch {torch.__version__}, transformers {header['transformers']}, {header['threads']}",
        f"- load before: `{header['load_before']}`; after: `{header['load_after']}`",
        "- ours: the shipped code (attention impl 'augmented'; 'bias' via set_attention_impl)",
        f"- config {args.config}: {flops / 1e9:,.1f} GFLOP per single-prompt prediction (full-canvas "
        "decode; x k for a k-prompt ensemble); dense matmul measured here: "
        + ", ".join(f"{d} {v:.2f} TFLOP/s" for d, v in peaks.items()),
        f"- times: best of {args.repeats} (warm-up {args.warmup}"
        f"{' per configuration' if args.warmup_every_config else ' per model, before the first configuration'}),"
        " ours and transformers interleaved; same random weights and inputs",
        "",
        "| dtype | k | batch | model | ours pred/s | transformers pred/s | ratio | ours MFU "
        "| transformers MFU | ours peak mem | transformers peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        t_theirs = r.best("transformers")
        ps_t = r.batch / t_theirs if t_theirs else None
        peak = peaks.get(r.dtype)

        def mfu(ps: float | None, peak: float | None = peak, k: int = r.k) -> str:
            return "—" if ps is None or not peak else f"{ps * flops * k / 1e12 / peak:.0%}"

        for variant in args.attention:
            name = _ours_name(variant)
            t_ours = r.best(name)
            ps_o = r.batch / t_ours if t_ours else None
            lines.append(
                f"| {r.dtype} | {r.k} | {r.batch} | {name} | {f'{ps_o:.4f}' if ps_o else '—'} | "
                f"{f'{ps_t:.4f}' if ps_t else '—'} | {f'{ps_o / ps_t:.2f}x' if ps_o and ps_t else '—'} | "
                f"{mfu(ps_o)} | {mfu(ps_t)} | {_fmt_mem(r.memory.get(name))} | "
                f"{_fmt_mem(r.memory.get('transformers'))} |"
            )
        e2e = r.best("ours end-to-end")
        if e2e:
            notes.append(
                f"{r.dtype} k={r.k} batch={r.batch}: ours end-to-end (engine.paint) {r.batch / e2e:.3f} pred/s"
            )
        notes += [f"{r.dtype} k={r.k} batch={r.batch}: {n}" for n in r.notes]
        times = "; ".join(f"{n} " + ", ".join(f"{t:.2f}" for t in ts) for n, ts in r.times.items())
        notes.append(f"{r.dtype} k={r.k} batch={r.batch} raw seconds: {times}")
    lines += ["", *[f"- {n}" for n in notes]]
    if profile_text:
        lines += ["", profile_text]
    return "\n".join(lines) + "\n"


def profile_section(cfg: SegGptConfig, device: torch.device, ours: SegGpt, theirs: nn.Module | None) -> str:
    x = Inputs.random(cfg, 1, 1, device)
    parts = {"ours": module_breakdown(ours, lambda: run_ours(ours, x, 1, None), device)}
    if theirs is not None:
        parts["transformers"] = module_breakdown(theirs, lambda: run_theirs(theirs, x, 1, None), device)
    names = list(parts["ours"])
    lines = [
        "### Where the time goes (fp32, batch 1, k = 1, one forward each, forward hooks)",
        "",
        "| part | " + " | ".join(f"{n} s" for n in parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{p[n]:.3f}" for p in parts.values()) + " |")
    table = op_profile(lambda: run_ours(ours, x, 1, None))
    lines += ["", "Ours, torch.profiler (self CPU time):", "", "```", table.rstrip(), "```"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="fp32, bf16 or both (auto: CPU fp32, CUDA both)")
    parser.add_argument("--config", default="vit-large", help="model config (tiny: a smoke test)")
    parser.add_argument("--batches", type=int, nargs="+", help="queries per forward (CPU 1; CUDA 1 8 32)")
    parser.add_argument("--ks", type=int, nargs="+", help="prompts per query (default 1 4)")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (CPU 2, CUDA 10)")
    parser.add_argument("--warmup", type=int, help="warm-up runs (CPU 1, CUDA 3)")
    parser.add_argument(
        "--warmup-every-config",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="warm up before every configuration (CUDA default) or once per model (CPU default)",
    )
    parser.add_argument("--transformers-bf16", action="store_true", help="also time transformers in bf16")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto")
    parser.add_argument(
        "--attention",
        choices=["augmented", "bias"],
        nargs="+",
        default=["augmented"],
        help="ours' attention impl(s), timed side by side (augmented = shipped)",
    )
    parser.add_argument(
        "--attention-variants", action="store_true", help="only time one attention core four ways"
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    args.dtype_list = {"auto": ["fp32", "bf16"] if cuda else ["fp32"], "both": ["fp32", "bf16"]}.get(
        args.dtype, [args.dtype]
    )
    if any(d not in ("fp32", "bf16") for d in args.dtype_list):
        parser.error(f"--dtype must be fp32, bf16, both or auto, got {args.dtype!r}")
    args.batches = args.batches or ([1, 8, 32] if cuda else [1])
    args.ks = args.ks or [1, 4]
    args.repeats = args.repeats or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.warmup_every_config = cuda if args.warmup_every_config is None else args.warmup_every_config
    args.end_to_end = cuda if args.end_to_end is None else args.end_to_end
    return args


def _append(out: Path, text: str) -> None:
    """Append a section to the results file (created with a title if missing)."""
    existing = out.read_text() if out.exists() else "# Model benchmark results\n"
    out.write_text(existing.rstrip("\n") + "\n\n" + text)
    print(f"appended to {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    device = torch.device(args.device)
    if args.attention_variants:
        text = f"{attention_variants(device)}\n\n({cpu_name() if device.type == 'cpu' else device}, "
        text += f"{torch.get_num_threads()} threads, load `{_uptime()}`)\n"
        print(text)
        if args.out:
            _append(args.out, text)
        return 0
    cfg = get_config(args.config)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/model.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "transformers": transformers.__version__,
        "threads": f"{torch.get_num_threads()} torch threads",
        "load_before": _uptime(),
    }
    print(f"{header['device']} | torch {torch.__version__} | {header['threads']} | {header['date']}")
    print(f"load: {header['load_before']}")
    peaks = {
        d: matmul_peak_tflops(device, torch.float32 if d == "fp32" else torch.bfloat16)
        for d in args.dtype_list
    }
    print("matmul peak TFLOP/s:", {d: round(v, 3) for d, v in peaks.items()}, flush=True)
    start = time.perf_counter()
    ours, theirs = build_models(cfg, device, args.seed)
    print(f"built both models in {time.perf_counter() - start:.1f} s", flush=True)
    rows = measure(args, cfg, device, ours, theirs)

    profile_text = ""
    first = next((r for r in rows if r.dtype == "fp32" and r.k == 1 and r.batch == 1), None)
    ratios: dict[str, float] = {}
    for variant in args.attention:
        t_ours = first.best(_ours_name(variant)) if first else None
        t_theirs = first.best("transformers") if first else None
        if t_ours and t_theirs:
            ratios[_ours_name(variant)] = t_theirs / t_ours
    below = device.type == "cpu" and ratios.get("ours", CPU_TARGET_RATIO) < CPU_TARGET_RATIO
    if args.profile == "always" or (args.profile == "auto" and below):
        print("profiling one forward of each model ...", flush=True)
        profile_text = profile_section(cfg, device, ours, None if args.skip_transformers else theirs)
    header["load_after"] = _uptime()
    text = report(args, cfg, device, rows, peaks, header, profile_text)
    if device.type == "cpu":
        for name, ratio in ratios.items():
            verdict = "meets" if ratio >= CPU_TARGET_RATIO else "is BELOW"
            text += (
                f"\nCPU fp32 batch 1, k = 1: {name} / transformers = {ratio:.2f}x, {verdict} the "
                f"{CPU_TARGET_RATIO}x target.\n"
            )
    print(text)
    if args.out:
        _append(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
