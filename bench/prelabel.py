"""Whole-project pre-labelling at scale: the real Label Studio, serve, RQ workers and the CLI.

What it measures, in one run on one machine:

1. the **bare engine**: the same queries segmented in this process by the same model with the
   same examples (k, feature ensemble), chunk by chunk, decoded images in memory: tasks per second;
2. **end to end**, for each worker count in ``--workers``: a fresh Label Studio project with
   ``--tasks`` generated images (local-files storage) and ``--examples`` labelled ones, connected
   to ``seggpt-backend serve`` (Redis mode) with N ``seggpt-backend worker`` processes, then
   ``seggpt-backend prelabel --project ID --wait`` timed from start to its last write-back:
   tasks per second and its ratio to the bare engine; the resident memory (RSS) of serve and each
   worker sampled every 2 s (first sample after warm-up, peak, last); the number of Redis keys
   under the backend's prefix (peak, and what is left an hour from now: keys without a TTL);
   and Label Studio's own count of predictions (each unlabelled task exactly once).

    .venv/bin/python bench/prelabel.py --tasks 2000 --workers 1 2
    .venv/bin/python bench/prelabel.py --tasks 300 --workers 1 2      # what fits a shared 2-core VM

Images are 96 x 128 synthetic scenes (tests.fixtures.scene); weights ``demo`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seggpt_backend.engine.engine import load_engine  # noqa: E402
from seggpt_backend.engine.interface import Example, SegmentRequest  # noqa: E402
from tests.fixtures import scene, write_png  # noqa: E402
from tests.labelstudio_server import LabelStudio, running_label_studio  # noqa: E402
from tests.service_support import LABEL_CONFIG, brush_result, wait_for  # noqa: E402
from tests.test_e2e import Backend, _command, running_backend  # noqa: E402

H, W = 96, 128


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """RSS of the backend's processes and its Redis key count, every ``interval_s`` seconds."""

    def __init__(self, backend: Backend, interval_s: float = 2.0) -> None:
        import redis

        self.backend = backend
        self.interval_s = interval_s
        self.redis = redis.Redis.from_url(backend.env["REDIS_URL"])
        self.prefix = backend.env["SEGGPT_KEY_PREFIX"]
        self.rss: dict[str, list[float]] = {}
        self.keys: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def key_count(self) -> int:
        return sum(1 for _ in self.redis.scan_iter(match=f"*{self.prefix}*", count=1000))

    def persistent_keys(self) -> list[str]:
        """Keys that would outlive the run (no TTL), queue bookkeeping excluded."""
        out = []
        for key in self.redis.scan_iter(match=f"*{self.prefix}*", count=1000):
            if self.redis.ttl(key) == -1:
                out.append(key.decode())
        return sorted(out)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, (proc, _log) in self.backend.procs.items():
                value = _rss_mib(proc.pid)
                if value is not None:
                    self.rss.setdefault(name, []).append(value)
            self.keys.append(self.key_count())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.redis.close()


def make_images(tmp: Path, n: int, seed: int) -> list[tuple[Path, dict[str, np.ndarray], np.ndarray]]:
    out = []
    for i in range(n):
        pixels, masks = scene(H, W, seed=seed + i)
        out.append((write_png(tmp / f"s{seed + i}.png", pixels), masks, pixels))
    return out


def bare_engine(
    examples: list[tuple[Path, dict[str, np.ndarray], np.ndarray]],
    queries: list[np.ndarray],
    *,
    chunk: int,
    k: int,
) -> float:
    """Tasks per second of the engine alone on ``queries`` (both labels, as the backend does)."""
    engine = load_engine("demo", device="cpu")
    exs = [Example(f"ex{i}", pixels, masks) for i, (_, masks, pixels) in enumerate(examples[:k])]
    by_label = {label: exs for label in ("Cat", "Dog")}
    engine.segment([SegmentRequest(queries[0], by_label)], ensemble="feature")  # warm-up
    started = time.perf_counter()
    for i in range(0, len(queries), chunk):
        engine.segment([SegmentRequest(q, by_label) for q in queries[i : i + chunk]], ensemble="feature")
    return len(queries) / (time.perf_counter() - started)


def project_predictions(ls: LabelStudio, project: int) -> tuple[int, int]:
    """(tasks with at least one prediction, predictions in all) as Label Studio counts them."""
    total = int(ls.api.get(f"/api/projects/{project}/").json().get("total_predictions_number") or 0)
    page, with_pred = 1, 0
    while True:
        r = ls.api.get("/api/tasks/", params={"project": project, "page": page, "page_size": 500})
        if r.status_code != 200:
            break
        tasks = r.json().get("tasks", [])
        if not tasks:
            break
        with_pred += sum(1 for t in tasks if int(t.get("total_predictions") or 0) > 0)
        page += 1
    return with_pred, total


def run_one(
    ls: LabelStudio,
    tmp: Path,
    images: list[tuple[Path, dict[str, np.ndarray], np.ndarray]],
    *,
    workers: int,
    examples: int,
    chunk: int,
) -> dict[str, Any]:
    env_extra = {
        "SEGGPT_CHUNK_SIZE": str(chunk),
        "SEGGPT_NUM_EXAMPLES": str(examples),
        "LOG_LEVEL": "WARNING",
    }
    run_dir = tmp / f"w{workers}"
    run_dir.mkdir()
    with running_backend("redis", ls, run_dir, worker=False, env_extra=env_extra) as backend:
        for i in range(workers):
            backend.start_worker(f"worker{i}")
        project = ls.create_project(LABEL_CONFIG, title=f"bench-prelabel-{workers}w")
        ids = ls.add_local_files(project, [p for p, _, _ in images])
        for tid, (_, masks, _) in zip(ids[:examples], images[:examples], strict=True):
            ls.annotate(tid, brush_result(masks))
        ls.connect_ml_backend(project, backend.url, is_interactive=False)
        wait_for(lambda: backend.http.get("/health").json().get("workers") == workers, timeout=300)
        cmd = [*_command(), "prelabel", "--project", str(project), "--wait", "--timeout", "7200"]
        with Sampler(backend) as sampler:
            started = time.perf_counter()
            done = subprocess.run(cmd, env=backend.env, cwd=REPO, capture_output=True, text=True)
            elapsed = time.perf_counter() - started
            peak_keys = max(sampler.keys, default=sampler.key_count())
            end_keys = sampler.key_count()
            persistent = sampler.persistent_keys()
        with_pred, total = project_predictions(ls, project)
        rss = {
            name: {"first": v[0], "peak": max(v), "last": v[-1], "samples": len(v)}
            for name, v in sampler.rss.items()
            if v
        }
    unlabelled = len(images) - examples
    return {
        "workers": workers,
        "tasks": unlabelled,
        "seconds": elapsed,
        "tasks_per_s": unlabelled / elapsed,
        "exit_code": done.returncode,
        "summary": done.stdout.strip().splitlines()[-3:],
        "stderr_tail": done.stderr.strip().splitlines()[-3:],
        "tasks_with_prediction": with_pred,
        "predictions": total,
        "rss_mib": rss,
        "redis_keys_peak": peak_keys,
        "redis_keys_end": end_keys,
        "redis_keys_without_ttl": persistent,
    }


def report(args: argparse.Namespace, bares: tuple[float, float], runs: list[dict[str, Any]]) -> str:
    load = os.getloadavg()
    bare = (bares[0] + bares[1]) / 2
    lines = [
        "# Whole-project pre-labelling (`bench/prelabel.py`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
        f"`bench/prelabel.py --tasks {args.tasks} --workers {' '.join(map(str, args.workers))}`",
        f"- Device: {platform.machine()}, {os.cpu_count()} CPUs, no GPU; load average at the end "
        f"{load[0]:.1f}; weights `demo`; {H} x {W} images; k = {args.examples} examples "
        f"(feature ensemble), 2 labels; chunk size {args.chunk_size}",
        "- Everything real: Label Studio 1.23 (local-files storage), `seggpt-backend serve`, "
        "`seggpt-backend worker` processes, Redis, `seggpt-backend prelabel --wait`.",
        "",
        f"Bare engine, same queries and examples, in-process: {bares[0]:.2f} tasks/s before the "
        f"end-to-end runs, {bares[1]:.2f} after; ratios below are against the mean, **{bare:.2f} tasks/s**.",
        "",
        "| workers | tasks | seconds | tasks/s | vs bare engine | exit | tasks with a prediction | "
        "predictions | serve RSS MiB (first/peak/last) | worker RSS MiB (first/peak/last) | "
        "Redis keys peak / end / without TTL |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in runs:
        serve = r["rss_mib"].get("serve", {})
        worker = r["rss_mib"].get("worker0", {})

        def fmt(d: dict[str, float]) -> str:
            return f"{d['first']:.0f} / {d['peak']:.0f} / {d['last']:.0f}" if d else "-"

        lines.append(
            f"| {r['workers']} | {r['tasks']} | {r['seconds']:.1f} | {r['tasks_per_s']:.2f} | "
            f"**{r['tasks_per_s'] / bare:.2f}x** | {r['exit_code']} | {r['tasks_with_prediction']} | "
            f"{r['predictions']} | {fmt(serve)} | {fmt(worker)} | {r['redis_keys_peak']} / "
            f"{r['redis_keys_end']} / {len(r['redis_keys_without_ttl'])} |"
        )
    lines += ["", "Keys without a TTL at the end (bounded by design: one per store, not per task):", ""]
    for r in runs:
        lines.append(f"- {r['workers']} worker(s): {', '.join(r['redis_keys_without_ttl']) or 'none'}")
    lines += ["", "Summary lines of `prelabel --wait`:", ""]
    for r in runs:
        lines.append(f"- {r['workers']} worker(s): " + " / ".join(r["summary"] + r["stderr_tail"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per project, examples included")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "bench" / "results_prelabel.md"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seggpt-bench-prelabel-") as d:
        tmp = Path(d)
        (tmp / "img").mkdir()
        images = make_images(tmp / "img", args.tasks, seed=5000)
        bare = bare_engine(
            images, [px for _, _, px in images[args.examples :]], chunk=args.chunk_size, k=args.examples
        )
        print(f"bare engine: {bare:.2f} tasks/s", flush=True)
        runs = []
        with running_label_studio(tmp / "ls") as ls:
            for n in args.workers:
                runs.append(
                    run_one(ls, tmp, images, workers=n, examples=args.examples, chunk=args.chunk_size)
                )
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "rss_mib"}), flush=True)
        # Again after the end-to-end runs: the machine is shared, so its load drifts; the ratio
        # is taken against the mean of both and the table shows both.
        after = bare_engine(
            images, [px for _, _, px in images[args.examples :]], chunk=args.chunk_size, k=args.examples
        )
        print(f"bare engine (after): {after:.2f} tasks/s", flush=True)
    text = report(args, (bare, after), runs)
    Path(args.out).write_text(text)
    print(text)
    if args.json:
        print(json.dumps({"bare_tasks_per_s": [bare, after], "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
