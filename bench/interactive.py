"""Interactive latency while a batch runs: real uvicorn server, real Redis, real RQ worker processes.

What it measures: the wall time of ``POST /predict`` with a smart-tool context (one keypoint),
as Label Studio's editor would send it, (a) on an idle deployment and (b) while a large
"Retrieve Predictions" batch is being computed. Interactive jobs go to the ``interactive`` queue,
which a worker serves before ``batch``; a worker finishes its current job first, so the waiting
part of the latency is bounded by one batch job (``SEGGPT_CHUNK_SIZE`` tasks). With
``--dedicated``, a second worker listens only to ``interactive``.

``--concurrency 10 50``: for each level, a fresh batch is started and N simulated annotators
click concurrently while it runs, each sending ``--clicks`` interactive requests (each on a new
task, or with ``--same-task`` all on one task, as an annotator refining it does) with
``--think-s`` seconds between its answer and its next click (an annotator looks at the result).

Model: ``--weights`` (default ``demo``, what the issue's targets use; ``random:tiny`` shows the
queueing and protocol overhead alone) on CPU. Images: synthetic 480 x 640 PNGs from loopback.

    .venv/bin/python bench/interactive.py --batch-tasks 200 --requests 30
    .venv/bin/python bench/interactive.py --dedicated --concurrency 10 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures import scene  # noqa: E402
from tests.service_support import (  # noqa: E402
    LABEL_CONFIG,
    ImageServer,
    annotation_event,
    cleanup_redis,
    new_prefix,
    png_bytes,
    predict_body,
    redis_url,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _interactive(client: httpx.Client, i: int, task: int | None = None) -> float:
    """One smart-tool request: a positive keypoint (its x moves with ``i``) on task ``task``
    (default: a task of its own, ``10_000 + i``, so nothing of it is cached yet)."""
    ctx = {
        "result": [
            {
                "type": "keypointlabels",
                "to_name": "image",
                "is_positive": True,
                "value": {"x": 30 + i % 40, "y": 40, "keypointlabels": ["Cat"]},
            }
        ]
    }
    tid = 10_000 + i if task is None else task
    body = predict_body(1, [(tid, f"/data/upload/1/q{tid % 50}.png")], context=ctx)
    started = time.perf_counter()
    r = client.post("/predict", json=body, timeout=120)
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    assert len(r.json()["results"]) == 1
    return elapsed


def _concurrent(client: httpx.Client, args: argparse.Namespace, annotators: int, first_task: int) -> dict:
    """``annotators`` clicking at once while a fresh batch of new tasks computes."""
    body = predict_body(1, [(first_task + i, f"/data/upload/1/q{i}.png") for i in range(args.batch_tasks)])
    batch_done = threading.Event()

    def batch() -> None:
        client.post("/predict", json=body, timeout=200)
        batch_done.set()

    threading.Thread(target=batch, daemon=True).start()
    time.sleep(2.0)  # let the batch fill the queue and occupy the worker
    latencies: list[float] = []
    lock = threading.Lock()

    def annotator(a: int) -> None:
        for c in range(args.clicks):
            i = first_task + 50_000 + a * args.clicks + c
            # --same-task: an annotator refines one task with all its clicks (the first pays the
            # forward pass, later ones can be answered from the task cache).
            took = _interactive(client, i, task=first_task + 50_000 + a if args.same_task else None)
            with lock:
                latencies.append(took)
            time.sleep(args.think_s)

    started = time.perf_counter()
    threads = [threading.Thread(target=annotator, args=(a,)) for a in range(annotators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    batch_running = not batch_done.is_set()
    batch_done.wait(timeout=200)
    _drain(args)
    return {"latencies": latencies, "wall_s": wall, "batch_running_at_end": batch_running}


def _drain(args: argparse.Namespace) -> None:
    """Wait until the queues are empty (the previous level's batch must not overlap the next)."""
    import redis

    from seggpt_backend.service.store.queue import rq_queue_name

    r = redis.Redis.from_url(redis_url(12))
    deadline = time.monotonic() + args.writeback_wait_s
    while time.monotonic() < deadline:
        if all(r.llen(f"rq:queue:{rq_queue_name(args.prefix, q)}") == 0 for q in ("batch", "interactive")):
            return
        time.sleep(1.0)


def run(args: argparse.Namespace) -> dict:
    prefix = args.prefix = new_prefix()
    images = ImageServer()
    for i in range(max(50, args.batch_tasks)):
        images.add(f"/data/upload/1/q{i}.png", png_bytes(scene(480, 640, seed=1000 + i)[0]))
    port = _free_port()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis_url(12),
        "SEGGPT_KEY_PREFIX": prefix,
        "SEGGPT_WEIGHTS": args.weights,
        "SEGGPT_DEVICE": "cpu",
        "LABEL_STUDIO_URL": images.url,
        "LABEL_STUDIO_API_KEY": "bench",
        "SEGGPT_CHUNK_SIZE": str(args.chunk_size),
        "SEGGPT_PREDICT_BUDGET_S": "80",
        "LOG_LEVEL": "WARNING",
    }
    procs = [
        _spawn(
            [
                "-c",
                f"from seggpt_backend.service.server import run_server; from seggpt_backend.settings import "
                f"Settings; run_server(Settings.from_env(), '127.0.0.1', {port})",
            ],
            env,
            logs / "server.log",
        ),
        _spawn(["-m", "workers.worker", "--queues", "interactive,batch"], env, logs / "worker-shared.log"),
    ]
    if args.dedicated:
        procs.append(
            _spawn(["-m", "workers.worker", "--queues", "interactive"], env, logs / "worker-interactive.log")
        )
    result: dict = {"prefix": prefix, "load_before": os.getloadavg()[0]}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if client.get("/health").json().get("workers") == len(procs) - 1:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server/workers did not come up; see " + str(logs))
        for k in range(args.examples):
            image, masks = scene(480, 640, seed=k)
            url = images.add(f"/data/upload/1/ex{k}.png", png_bytes(image))
            event = annotation_event(
                "ANNOTATION_CREATED",
                project=1,
                annotation_id=k + 1,
                task_id=k + 1,
                image_url=url,
                masks=masks,
            )
            client.post("/webhook", json=event).raise_for_status()
        for i in range(3):  # warm-up: example materialisation, engine caches
            _interactive(client, i)
        setup_body = {"project": "1.1795307990", "schema": LABEL_CONFIG}
        protocol: dict[str, list[float]] = {"GET /health": [], "POST /setup": [], "POST /webhook": []}
        for k in range(50):
            for name, call in (
                ("GET /health", lambda: client.get("/health")),
                ("POST /setup", lambda: client.post("/setup", json=setup_body)),
                (
                    "POST /webhook",
                    lambda k=k: client.post(
                        "/webhook",
                        json=annotation_event(
                            "ANNOTATION_UPDATED",
                            project=2,
                            annotation_id=1000 + k,
                            task_id=1000 + k,
                            image_url="/data/upload/1/ex0.png",
                            masks=scene(48, 64, seed=k)[1],
                        ),
                    ),
                ),
            ):
                started = time.perf_counter()
                call().raise_for_status()
                protocol[name].append(time.perf_counter() - started)
        result["protocol"] = protocol
        idle = [_interactive(client, i) for i in range(args.requests)]

        batch_out: dict = {}
        body = predict_body(1, [(i + 1, f"/data/upload/1/q{i}.png") for i in range(args.batch_tasks)])

        def batch() -> None:
            started = time.perf_counter()
            r = client.post("/predict", json=body, timeout=200)
            batch_out["seconds"] = time.perf_counter() - started
            batch_out["answered"] = sum(isinstance(e, dict) for e in r.json()["results"])

        t = threading.Thread(target=batch)
        t.start()
        time.sleep(2.0)  # let the batch fill the queue and occupy the worker
        busy = []
        while t.is_alive() and len(busy) < args.requests:
            busy.append(_interactive(client, len(busy) + 100))
            time.sleep(0.2)
        t.join()
        # Tasks the response left empty must arrive through the Label Studio API (write-back).
        late = args.batch_tasks - batch_out.get("answered", 0)
        wb_started = time.perf_counter()
        while time.perf_counter() - wb_started < args.writeback_wait_s:
            posted = {b["task"] for path, b in images.posted if path == "/api/predictions"}
            if len(posted) >= late:
                break
            time.sleep(0.5)
        posted = {b["task"] for path, b in images.posted if path == "/api/predictions"}
        batch_out["written_back"] = len(posted)
        batch_out["writeback_done_s"] = batch_out.get("seconds", 0.0) + time.perf_counter() - wb_started
        result["concurrent"] = {
            n: _concurrent(client, args, n, first_task=100_000 * (k + 1))
            for k, n in enumerate(args.concurrency)
        }
        metrics = client.get("/metrics").text
        result.update(
            idle=idle,
            busy=busy,
            batch=batch_out,
            job_seconds=[
                line for line in metrics.splitlines() if line.startswith("seggpt_job_duration_seconds_sum")
            ],
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        images.close()
        cleanup_redis(prefix, db=12)
    return result


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - |"
    return (
        f"| {name} | {len(values)} | {statistics.median(values) * 1000:.0f} | "
        f"{_percentile(values, 99) * 1000:.0f} | {max(values) * 1000:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-tasks", type=int, default=200)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--dedicated", action="store_true", help="add a worker serving only `interactive`")
    parser.add_argument("--logs", default="/tmp/seggpt-bench-interactive")
    parser.add_argument("--writeback-wait-s", type=float, default=600, help="max wait for write-backs")
    parser.add_argument("--json", action="store_true", help="print raw numbers as JSON")
    parser.add_argument("--weights", default="demo", help="weights spec (demo, random:tiny, ...)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[], help="annotators clicking at once")
    parser.add_argument("--clicks", type=int, default=5, help="interactive requests per annotator")
    parser.add_argument(
        "--same-task", action="store_true", help="each annotator sends all its clicks on one task"
    )
    parser.add_argument(
        "--think-s", type=float, default=1.0, help="pause between an answer and the next click"
    )
    args = parser.parse_args()
    res = run(args)
    mode = (
        "shared worker + dedicated interactive worker" if args.dedicated else "one worker (interactive,batch)"
    )
    lines = [
        f"### {mode}, weights `{args.weights}`, chunk size {args.chunk_size}, {args.batch_tasks}-task batch"
        + (", each annotator's clicks on one task" if args.same_task else ""),
        "",
        "| interactive requests | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        summary("idle deployment", res["idle"]),
        summary("while the batch runs", res["busy"]),
        *(
            summary(
                f"{n} annotators at once{'' if c['batch_running_at_end'] else ' (batch ended first)'}",
                c["latencies"],
            )
            for n, c in res.get("concurrent", {}).items()
        ),
        "",
        "| protocol request (idle) | n | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *(summary(name, values) for name, values in res["protocol"].items()),
        "",
        f"Batch: {res['batch'].get('answered')} of {args.batch_tasks} tasks answered in the response after "
        f"{res['batch'].get('seconds', 0):.1f} s (budget 80 s); {res['batch'].get('written_back')} written back "
        f"through the API, the last {res['batch'].get('writeback_done_s', 0):.1f} s after the request started.",
        f"Host: {platform.machine()}, {os.cpu_count()} CPUs, load average before the run "
        f"{res['load_before']:.1f}, Python {platform.python_version()}.",
    ]
    print("\n".join(lines))
    if args.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
