"""Benchmark: does learning from corrections work? A simulated annotation session per project.

Each project is one held-out synthetic in-context task (:mod:`seggpt_backend.demo.synthetic`,
in-domain classes, held-out seeds never used in training) with ``--images`` images to annotate
and ``--queries`` test images. The simulated annotator accepts the ground truth of one image
after another; after n = 1, 2, 4, 8, 16, 32 accepted images the bench asks for a tuning run
(as Start Training does) and measures suggestion mIoU on the test images with

- (i) examples only (what the backend served before tuning existed), and
- (ii) examples plus the prompts the service's own loop promoted (none promoted: same as (i)).

It drives the real service code, embedded mode: annotations enter through the webhook handler
(``service.http.webhooks.handle``) into the example store, tuning is requested through
``service.http.training.request_tuning`` and runs as a ``TuneJob`` on the in-process ``tune``
queue (``service.jobs.entry.execute_tune`` -> ``service.jobs.tuning``: split, tuning,
validation gate, promotion into ``service.store.prompts``), and suggestions are computed by the
worker pipeline (``service.jobs.pipeline.ChunkRunner``) with the worker's promoted prompts
(``WorkerContext.served_prompts``). Images are served to the Label Studio client from a loopback
HTTP server.

    .venv/bin/python bench/learning.py                         # demo weights, CPU
    .venv/bin/python bench/learning.py --weights BAAI/seggpt-vit-large --device cuda

Writes ``bench/results_learning.md`` and ``bench/results_learning.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_name
from PIL import Image, ImageDraw

from seggpt_backend.demo.synthetic import Task, heldout_seed, make_task
from seggpt_backend.labelstudio import rle
from seggpt_backend.service.contract import JobTask, Target
from seggpt_backend.service.http import training, webhooks
from seggpt_backend.service.http.protocol import WebhookEvent
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.jobs.entry import WorkerContext
from seggpt_backend.service.jobs.pipeline import Chunk
from seggpt_backend.service.server import make_runtime
from seggpt_backend.settings import Settings

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results_learning.md"
PLOT = HERE / "results_learning.png"
SEED_OFFSET = 600_000  # disjoint from bench/quality.py's sets (0..599_999) and tests (>= 900_000)
TARGET_GAIN, TARGET_FLOOR = 0.05, 0.01


class Files:
    """Loopback HTTP server answering ``GET <path>`` from a dict: the images of the project."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, image: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        self.files[path] = buf.getvalue()
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def label_config(label: str) -> str:
    return (
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        f'<Label value="{label}"/></BrushLabels></View>'
    )


def annotation_event(project: int, index: int, url: str, label: str, mask: np.ndarray) -> dict[str, Any]:
    """An ANNOTATION_CREATED webhook body as Label Studio 1.23 sends it (fields the backend reads)."""
    h, w = mask.shape
    stamp = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=index)).isoformat()
    region = {
        "id": f"r{index}",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project, "label_config": label_config(label)},
        "annotation": {"id": 1000 + index, "result": [region], "updated_at": stamp, "was_cancelled": False},
        "task": {"id": 1000 + index, "data": {"image": url}},
    }


def predicted_mask(entry: dict[str, Any], label: str, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for region in entry.get("result") or []:
        value = region["value"]
        if label in value.get("brushlabels", []):
            out |= rle.decode(value["rle"], region["original_height"], region["original_width"]) >= 128
    return out


def suggest(
    ctx: WorkerContext, project: str, label: str, queries: list[tuple[int, str]], *, learned: bool
) -> dict[int, dict[str, Any]]:
    """The worker pipeline's suggestions for ``queries`` (task id, URL), with or without the
    promoted prompts."""
    targets = [Target("tag", "image", "image", (label,))]
    tasks = [JobTask(tid, {"image": url}) for tid, url in queries]
    chunk = Chunk(
        project=project,
        model_version=ctx.model_version(project),
        targets=targets,
        tasks=tasks,
        records=ctx.examples.records(project),
        learned=ctx.served_prompts(project) if learned else {},
    )
    outcome = ctx.runner.run(chunk, ctx.options())
    ctx.prefetcher.release(url for _, url in queries)
    return {tid: entry.to_json() for tid, entry in outcome.entries.items()}


def miou(entries: dict[int, dict[str, Any]], truths: dict[int, np.ndarray], label: str) -> float:
    """Accumulated IoU of ``label`` over the test images (one class per project)."""
    inter = union = 0
    for tid, truth in truths.items():
        pred = predicted_mask(entries.get(tid, {}), label, truth.shape)
        inter += int((pred & truth).sum())
        union += int((pred | truth).sum())
    return inter / max(union, 1)


def wait_idle(rt: Runtime, job_id: str, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while rt.queue.status(job_id) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"tuning job {job_id} still running after {timeout} s")
        time.sleep(0.2)


def run_project(
    index: int, args: argparse.Namespace, settings: Settings, checkpoints: Sequence[int]
) -> dict[str, Any]:
    seed = heldout_seed(SEED_OFFSET + index)
    task: Task = make_task(
        seed,
        split="heldout",
        kind=args.kind,
        size=(args.size, args.size),
        shots=max(checkpoints) + args.queries,
    )
    label = task.labels[0]
    files = Files()
    rt = make_runtime(
        Settings.from_env(
            {}, **{**settings.__dict__, "label_studio_url": files.url, "label_studio_api_key": "bench"}
        )
    )
    ctx: WorkerContext = rt.worker_context
    project = str(index + 1)
    rt.kv.hset(f"ex:{project}:state", {"populated": repr(time.time())})  # no Label Studio API to fill from
    n_train = max(checkpoints)
    urls = [files.add(f"/data/upload/{project}/{i}.png", img) for i, img in enumerate(task.prompt_images)]
    queries = [(5000 + i, urls[n_train + i]) for i in range(args.queries)]
    truths = {5000 + i: task.prompt_masks[n_train + i][0] for i in range(args.queries)}
    rows = []
    accepted = 0
    try:
        rt.queue.ready.wait()  # type: ignore[attr-defined]
        for n in checkpoints:
            while accepted < n:
                event = annotation_event(
                    int(project), accepted, urls[accepted], label, task.prompt_masks[accepted][0]
                )
                webhooks.handle(rt, WebhookEvent(**event))
                accepted += 1
            t0 = time.monotonic()
            request = training.request_tuning(rt, project, trigger="train")
            wait_idle(rt, request["job"])
            tune_s = time.monotonic() - t0
            run = ctx.prompts.runs(project)[0]
            lr = run.labels[0] if run.labels else None
            plain = miou(suggest(ctx, project, label, queries, learned=False), truths, label)
            tuned = miou(suggest(ctx, project, label, queries, learned=True), truths, label)
            served = ctx.prompts.served(project, ctx.engine.model_version).get(label)
            row = {
                "n": n,
                "examples_only": plain,
                "with_prompts": tuned,
                "decision": lr.decision if lr else "none",
                "reason": lr.reason if lr else run.error or "",
                "val": lr.miou if lr else {},
                "steps": lr.steps if lr else 0,
                "served": f"v{served.version} ({served.mode})" if served else "-",
                "tune_s": tune_s,
            }
            rows.append(row)
            print(
                f"project {project} ({label}) n={n}: (i) {plain:.3f} (ii) {tuned:.3f} "
                f"[{row['decision']}: {row['reason']}] {tune_s:.0f} s",
                flush=True,
            )
    finally:
        rt.close()
        files.close()
    return {"project": project, "label": label, "seed": seed, "rows": rows}


def plot(checkpoints: Sequence[int], plain: list[float], tuned: list[float], title: str) -> None:
    """Both curves with Pillow (no plotting dependency): mIoU against n on a log2 axis."""
    w, h, m = 720, 440, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    lo = max(0.0, min(plain + tuned) - 0.05)
    hi = min(1.0, max(plain + tuned) + 0.05)
    xs = [m + (w - 2 * m) * i / max(1, len(checkpoints) - 1) for i in range(len(checkpoints))]

    def y(v: float) -> float:
        return h - m - (h - 2 * m) * (v - lo) / max(hi - lo, 1e-6)

    d.line([(m, h - m), (w - m, h - m)], fill="black")
    d.line([(m, m), (m, h - m)], fill="black")
    for x, n in zip(xs, checkpoints, strict=True):
        d.text((x - 6, h - m + 8), str(n), fill="black")
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        d.text((8, y(v) - 6), f"{v:.2f}", fill="black")
        d.line([(m - 4, y(v)), (m, y(v))], fill="black")
    for values, colour in ((plain, (60, 90, 200)), (tuned, (220, 80, 30))):
        pts = [(x, y(v)) for x, v in zip(xs, values, strict=True)]
        d.line(pts, fill=colour, width=3)
        for px, py in pts:
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    d.text((m, 16), title, fill="black")
    d.text((w - m - 260, m), "(i) examples only", fill=(60, 90, 200))
    d.text((w - m - 260, m + 16), "(ii) examples + promoted prompts", fill=(220, 80, 30))
    d.text((w // 2 - 80, h - 24), "accepted images n (log2 scale)", fill="black")
    d.text((8, m - 20), "mIoU", fill="black")
    img.save(PLOT)


def report(
    args: argparse.Namespace, settings: Settings, projects: list[dict[str, Any]], seconds: float
) -> str:
    checkpoints = [r["n"] for r in projects[0]["rows"]]
    mean = {
        key: [float(np.mean([p["rows"][i][key] for p in projects])) for i in range(len(checkpoints))]
        for key in ("examples_only", "with_prompts")
    }
    device = torch.cuda.get_device_name() if settings.device.startswith("cuda") else cpu_name()
    lines = [
        "# Learning from corrections (`bench/learning.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {seconds:.0f} s in all",
        f"- Weights: `{settings.seggpt_weights}`; device: {device}; {torch.get_num_threads()} torch thread(s)",
        f"- Command: `{' '.join(sys.argv)}`",
        f"- {len(projects)} held-out in-domain `{args.kind}` projects (seeds {projects[0]['seed']}..., "
        f"never used in training), {args.size}x{args.size} images, {args.queries} test images each; "
        f"seg_type `{settings.seg_type}`, k = {settings.num_examples} retrieved examples, feature ensemble.",
        f"- Tuning: {settings.tune_steps} steps, lr {settings.tune_lr}, batch {settings.tune_batch}, "
        f"budget {settings.tune_budget_s:g} s per run, promotion margin {settings.tune_margin}; "
        "validation >= 2 images and >= 20 % (so n < 3 never tunes).",
        "- mIoU: accumulated IoU of the project's label over its test images, then the mean over projects.",
        "",
        "| n accepted | (i) examples only | (ii) + promoted prompts | (ii) - (i) | promoted in |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, n in enumerate(checkpoints):
        promoted = sum(1 for p in projects if p["rows"][i]["decision"] == "promoted")
        a, b = mean["examples_only"][i], mean["with_prompts"][i]
        lines.append(f"| {n} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {promoted}/{len(projects)} |")
    lines += ["", "Per project (validation mIoU of the run: served / alone / ensemble):", ""]
    lines += ["| project | label | n | (i) | (ii) | decision | validation | served after | tuning s |"]
    lines += ["|---|---|---:|---:|---:|---|---|---|---:|"]
    for p in projects:
        for r in p["rows"]:
            v = r["val"]
            val = " / ".join(f"{v[k]:.3f}" for k in ("served", "alone", "ensemble") if k in v) or "-"
            lines.append(
                f"| {p['project']} | {p['label']} | {r['n']} | {r['examples_only']:.3f} | "
                f"{r['with_prompts']:.3f} | {r['decision']} | {val} | {r['served']} | {r['tune_s']:.0f} |"
            )
    big = [i for i, n in enumerate(checkpoints) if n >= 16]
    gain_ok = bool(big) and all(
        mean["with_prompts"][i] >= mean["examples_only"][i] + TARGET_GAIN for i in big
    )
    floor = min(b - a for a, b in zip(mean["examples_only"], mean["with_prompts"], strict=True))
    lines += [
        "",
        "Targets (demo model, mean over projects):",
        "",
        f"- (ii) >= (i) + {TARGET_GAIN} at n >= 16: "
        + (
            ", ".join(
                f"n={checkpoints[i]}: {mean['with_prompts'][i] - mean['examples_only'][i]:+.3f}" for i in big
            )
            or "not measured (no n >= 16 in this run)"
        )
        + (" -> met" if gain_ok else " -> NOT met"),
        f"- (ii) never below (i) by more than {TARGET_FLOOR}: worst {floor:+.3f} -> "
        + ("met" if floor >= -TARGET_FLOOR else "NOT met"),
        "",
        f"![learning curves]({PLOT.name})",
        "",
        "Raw rows (JSON):",
        "",
        "```json",
        json.dumps(projects, default=str),
        "```",
        "",
    ]
    plot(
        checkpoints,
        mean["examples_only"],
        mean["with_prompts"],
        f"{settings.seggpt_weights}: mean mIoU over {len(projects)} projects",
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--projects", type=int, default=3)
    p.add_argument("--checkpoints", default="1,2,4,8,16,32", help="comma-separated n")
    p.add_argument("--queries", type=int, default=12, help="test images per project")
    p.add_argument("--kind", default="semantic", choices=["semantic", "instance", "part"])
    p.add_argument("--size", type=int, default=128, help="image side")
    p.add_argument("--steps", type=int, default=None, help="SEGGPT_TUNE_STEPS (default: the setting)")
    p.add_argument("--lr", type=float, default=None, help="SEGGPT_TUNE_LR (default: the setting)")
    p.add_argument("--budget", type=float, default=None, help="SEGGPT_TUNE_BUDGET_S")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoints = [int(x) for x in args.checkpoints.split(",") if x.strip()]
    over: dict[str, Any] = {
        "seggpt_weights": args.weights,
        "device": args.device,
        "seg_type": "instance" if args.kind == "instance" else "semantic",
        "log_level": "WARNING",
    }
    for name, value in (("tune_steps", args.steps), ("tune_lr", args.lr), ("tune_budget_s", args.budget)):
        if value is not None:
            over[name] = value
    settings = Settings.from_env({}, **over)
    started = time.monotonic()
    projects = [run_project(i, args, settings, checkpoints) for i in range(args.projects)]
    text = report(args, settings, projects, time.monotonic() - started)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
