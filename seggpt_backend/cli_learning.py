"""``seggpt-backend tune`` and ``seggpt-backend prompts``: the learning loop from the command line.

- ``tune --project ID [--label NAME ...] [--wait]``: with ``REDIS_URL``, queue a tuning run on
  the ``tune`` queue (debounced like Start Training) and, with ``--wait``, wait for it and print
  its record. Without Redis (embedded mode) the run happens in this process: the project's
  annotations are read from Label Studio (``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``), the
  prompt is tuned and validated, and the record is printed; nothing is kept (an embedded server
  holds its prompts in its own memory, which no other process can reach).
- ``prompts --project ID [--json]``: the promoted prompt per label and the recent runs.
- ``prompts rollback --project ID --label NAME --to VERSION``: serve a stored version again.
- ``prompts show --project ID --out DIR``: each stored prompt's image and mask as PNG.

Exit codes: 0 done, 1 the run failed, 2 bad input (unknown version, no Redis where one is needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from seggpt_backend.settings import Settings


def add_commands(sub: Any) -> None:
    """Register ``tune`` and ``prompts`` on the CLI's subparsers."""
    tune = sub.add_parser("tune", help="tune learned prompts of a project from its accepted annotations")
    tune.add_argument("--project", required=True, help="Label Studio project id")
    tune.add_argument("--label", action="append", default=[], help="only this label (repeatable)")
    tune.add_argument("--wait", action="store_true", help="wait for the run and print its record")
    tune.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")
    tune.set_defaults(func=_tune)

    prompts = sub.add_parser("prompts", help="list, roll back or export a project's learned prompts")
    prompts.add_argument("--project", help="Label Studio project id")
    prompts.add_argument("--json", action="store_true", help="machine-readable output")
    prompts.set_defaults(func=_prompts_list)
    actions = prompts.add_subparsers(dest="action")
    back = actions.add_parser("rollback", help="serve a stored version of a label's prompt again")
    back.add_argument("--project", default=argparse.SUPPRESS)
    back.add_argument("--label", required=True)
    back.add_argument("--to", required=True, metavar="VERSION")
    back.set_defaults(func=_prompts_rollback)
    show = actions.add_parser("show", help="write every stored prompt (image and mask) as PNG")
    show.add_argument("--project", default=argparse.SUPPRESS)
    show.add_argument("--out", required=True, help="output directory")
    show.set_defaults(func=_prompts_show)


def _fail(message: str) -> int:
    print(f"seggpt-backend: {message}", file=sys.stderr)
    return 2


def _store(settings: Settings) -> Any:
    from seggpt_backend.service.store.kv import RedisKV
    from seggpt_backend.service.store.prompts import PromptStore

    kv = RedisKV.from_url(settings.redis_url, settings.key_prefix)
    return PromptStore(kv, keep=settings.prompt_versions_kept)


def _project(args: argparse.Namespace) -> str | None:
    project = getattr(args, "project", None)
    return str(project) if project and str(project).isdigit() else None


def _print_run(run: Any, as_json: bool = False) -> None:
    if as_json:
        print(run.to_json())
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.started_at))
    took = f"{run.finished_at - run.started_at:.0f} s" if run.finished_at else "running"
    print(f"run {run.id} ({run.trigger}, {when} UTC, {took}, {run.engine_version}): {run.status}")
    if run.error:
        print(f"  error: {run.error}")
    for lr in run.labels:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in lr.miou.items())
        print(f"  {lr.label}: {lr.decision} - {lr.reason}")
        if figures:
            used = f"{len(lr.tuning)} tuning / {len(lr.validation)} validation, {lr.steps} steps"
            print(f"    mIoU {figures}; {used}")
        for aid, why in lr.excluded.items():
            print(f"    excluded annotation {aid}: {why}")


def _tune(args: argparse.Namespace, settings: Settings) -> int:
    project = _project(args)
    if project is None:
        return _fail(f"--project must be a Label Studio project id, got {args.project!r}")
    if settings.embedded:
        return _tune_here(project, tuple(args.label), settings)
    from seggpt_backend.service.http.runtime import Runtime
    from seggpt_backend.service.http.training import request_tuning

    rt = Runtime.create(settings)
    try:
        before = {r.id for r in rt.prompts.runs(project)}
        answer = request_tuning(rt, project, trigger="cli", labels=tuple(args.label))
        print(f"project {project}: {answer['detail']} (job {answer['job']}, {answer['status']})")
        if rt.queue.workers() == 0:
            print("note: no worker is running; start one with `seggpt-backend worker --queues tune`")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            runs = [r for r in rt.prompts.runs(project) if r.id not in before and r.status != "running"]
            if runs:
                _print_run(runs[0])
                return 0 if runs[0].status == "finished" else 1
            if rt.queue.status(answer["job"]) == "failed":
                print(f"project {project}: the tuning job failed (see the worker's log)", file=sys.stderr)
                return 1
            time.sleep(1.0)
        print(f"project {project}: no finished run after {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        rt.close()


def _tune_here(project: str, labels: tuple[str, ...], settings: Settings) -> int:
    """Embedded mode: one run in this process (see the module docstring)."""
    from seggpt_backend.service.contract import TuneJob
    from seggpt_backend.service.jobs import entry
    from seggpt_backend.service.store.kv import MemoryKV

    if not settings.label_studio_url:
        return _fail("tune without REDIS_URL reads the annotations from Label Studio: set LABEL_STUDIO_URL")
    ctx = entry.WorkerContext(
        settings, MemoryKV(), entry.engine_loader(settings), client=entry.make_client(settings)
    )
    try:
        entry.ensure_examples(ctx, project, force=True)
        if ctx.examples.count(project) == 0:
            return _fail(f"project {project}: no accepted annotation with brush regions in Label Studio")
        run = entry.execute_tune(ctx, TuneJob(project=project, trigger="cli", labels=labels))
    finally:
        ctx.close()
    _print_run(run)
    print("(embedded mode: measured here, nothing stored; with REDIS_URL the promoted prompts are served)")
    return 0 if run.status == "finished" else 1


def _needs_redis(settings: Settings, command: str) -> int | None:
    if settings.embedded:
        return _fail(
            f"{command} needs REDIS_URL (without it prompts live only in an embedded server's memory)"
        )
    return None


def _prompts_list(args: argparse.Namespace, settings: Settings) -> int:
    project = _project(args)
    if project is None:
        return _fail("prompts needs --project ID (a Label Studio project id)")
    if (code := _needs_redis(settings, "prompts")) is not None:
        return code
    store = _store(settings)
    summary = store.summary(project)
    runs = store.runs(project)
    if args.json:
        print(json.dumps({**summary, "runs": [json.loads(r.to_json()) for r in runs]}))
        return 0
    metas = store.metas(project)
    if not summary["active"]:
        print(f"project {project}: no learned prompt promoted (examples only)")
    for label, version in sorted(summary["active"].items()):
        meta = metas.get(version)
        detail = (
            f"{meta.mode}, tuned for {meta.engine_version}, run {meta.run}" if meta else "metadata missing"
        )
        print(f"{label}: version {version} ({detail})")
    others = [m for v, m in sorted(metas.items()) if summary["active"].get(m.label) != v]
    if others:
        print("stored for rollback: " + ", ".join(f"{m.label} v{m.version}" for m in others))
    for run in runs:
        _print_run(run)
    return 0


def _prompts_rollback(args: argparse.Namespace, settings: Settings) -> int:
    project = _project(args)
    if project is None:
        return _fail("prompts rollback needs --project ID")
    if (code := _needs_redis(settings, "prompts rollback")) is not None:
        return code
    try:
        meta = _store(settings).rollback(project, args.label, args.to)
    except (KeyError, ValueError) as exc:
        return _fail(str(exc.args[0] if exc.args else exc))
    print(f"project {project}: {args.label} now serves version {meta.version} ({meta.engine_version})")
    return 0


def _prompts_show(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image

    from seggpt_backend.service.store.prompts import to_pixels

    project = _project(args)
    if project is None:
        return _fail("prompts show needs --project ID")
    if (code := _needs_redis(settings, "prompts show")) is not None:
        return code
    store = _store(settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metas = store.metas(project)
    if not metas:
        print(f"project {project}: no stored prompt")
    for version, meta in sorted(metas.items()):
        try:
            image, target = store.load(project, version)
        except (KeyError, ValueError) as exc:
            print(f"version {version}: {exc}", file=sys.stderr)
            continue
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in meta.label)
        for name, half in (("image", image), ("mask", target)):
            path = out / f"{safe}-v{version}-{name}.png"
            Image.fromarray(to_pixels(half)).save(path)
            print(path)
    return 0
