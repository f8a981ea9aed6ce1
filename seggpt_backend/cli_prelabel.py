"""``seggpt-backend prelabel`` and ``seggpt-backend export-coco --project``: whole projects.

- ``prelabel --project ID [--only unlabeled|missing|all] [--limit N] [--wait]``: list the
  project's tasks through the Label Studio API (page by page), queue those without a prediction
  of the current model version in chunks on ``batch`` (:mod:`seggpt_backend.service.http.prelabel`),
  and with ``--wait`` show a progress bar (done, failed, rate, ETA) and end with a summary naming
  each failed task and its reason. The workers write the predictions back through the API, one
  per task and model version; a rerun skips what is there (resumable). Ctrl-C stops cleanly:
  chunks not started are cancelled, what was computed is in Label Studio. With ``REDIS_URL`` the
  workers compute; without it (embedded mode) this process loads the model and computes, so
  ``--wait`` is implied.
- ``export-coco --project ID --out coco.json [--use annotations|predictions] [--results r.json]
  [--eval]``: the project's tasks straight from the API to exact COCO RLE
  (:mod:`seggpt_backend.labelstudio.coco`); ``--eval`` scores the predictions against the
  accepted annotations with pycocotools' COCOeval (``segm``) and prints per-label IoU and AP.

Exit codes: 0 done, 1 stopped (timeout), 2 bad input or failed tasks (each named), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from seggpt_backend.settings import Settings


class BadInput(Exception):
    """A problem with what the user asked for; the message names the project/task/setting."""


def add_commands(sub: Any) -> None:
    """Register ``prelabel`` on the CLI's subparsers."""
    pre = sub.add_parser("prelabel", help="pre-label a whole Label Studio project in the background")
    pre.add_argument("--project", required=True, help="Label Studio project id")
    pre.add_argument(
        "--only",
        choices=["unlabeled", "missing", "all"],
        default="unlabeled",
        help="unlabeled: tasks without annotation (default); missing: those without any prediction "
        "of this backend; all: labelled ones too. Tasks holding a prediction of the current "
        "model version are always skipped",
    )
    pre.add_argument("--limit", type=int, help="queue at most N tasks")
    pre.add_argument("--wait", action="store_true", help="show progress until done, then a summary")
    pre.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits at most")
    pre.set_defaults(func=_prelabel)


def _fail(message: str) -> int:
    print(f"seggpt-backend: {message}", file=sys.stderr)
    return 2


def _client(settings: Settings) -> Any:
    from seggpt_backend.service.jobs.entry import make_client

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise BadInput(
            "this command reads the project through the API: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
        )
    return make_client(settings)


def _project_id(value: str) -> int:
    if not str(value).strip().isdigit() or int(value) < 1:
        raise BadInput(f"--project must be a Label Studio project id (a positive integer), got {value!r}")
    return int(value)


def read_project(client: Any, project: int) -> dict[str, Any]:
    """``GET /api/projects/{id}`` or :class:`BadInput` saying why it cannot be read."""
    from seggpt_backend.labelstudio.client import LabelStudioError

    try:
        return dict(client.get_project(project))
    except LabelStudioError as exc:
        if exc.status_code in (401, 403, 404):
            raise BadInput(
                f"project {project}: does not exist or is not readable with LABEL_STUDIO_API_KEY "
                f"(HTTP {exc.status_code} from {client.url})"
            ) from exc
        raise BadInput(f"project {project}: cannot read it from Label Studio: {exc}") from exc


def list_tasks(client: Any, project: int) -> list[dict[str, Any]]:
    from seggpt_backend.labelstudio.client import LabelStudioError

    try:
        return list(client.iter_tasks(project))
    except LabelStudioError as exc:
        raise BadInput(f"project {project}: cannot list its tasks: {exc}") from exc


# ---------------------------------------------------------------------------------------- prelabel
@dataclass
class Tally:
    """The run's figures as the waiting command sees them. Times: ``time.monotonic()``."""

    total: int
    started: float = field(default_factory=time.monotonic)
    first_done: float | None = None
    done: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.failed)

    def rate(self, now: float) -> float:
        """Tasks per second since the first finished one (which may include model loading)."""
        if self.first_done is None or self.finished < 2 or now <= self.first_done:
            return 0.0
        return (self.finished - 1) / (now - self.first_done)

    def line(self, now: float, width: int = 30) -> str:
        filled = int(width * self.finished / self.total) if self.total else width
        rate = self.rate(now)
        left = self.total - self.finished
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.finished}/{self.total}: "
            f"{len(self.done)} done, {len(self.failed)} failed, {rate:.2f} task/s, ETA {eta}"
        )


class Bar:
    """One updating line on a terminal, else a line every ``every_s`` seconds (logs, CI)."""

    def __init__(self, out: TextIO, every_s: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._text = ""

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write("\r" + text.ljust(len(self._text)))
            self.out.flush()
        elif force or (now - self._last >= self.every_s and text != self._text):
            print(text, file=self.out, flush=True)
            self._last = now
        self._text = text

    def end(self) -> None:
        if self.tty and self._text:
            self.out.write("\n")
            self.out.flush()


def _make_runtime(settings: Settings) -> Any:
    from seggpt_backend.service.server import make_runtime

    return make_runtime(settings)


def _prepare(rt: Any, project: str, *, timeout_s: float = 120) -> None:
    """Engine loaded (embedded) and the project's examples read afresh from Label Studio.

    A fresh fill, not only a first one: without the model connected in Label Studio no webhook
    keeps the examples current. Raises :class:`BadInput` when the annotations cannot be read
    (computing anyway would write empty predictions to every task).
    """
    from seggpt_backend.service.http.webhooks import enqueue_fill
    from seggpt_backend.service.jobs import entry

    before = rt.examples.populated_at(project)  # a fill completes by changing it (no clock compared)
    if rt.queue.embedded:
        print("embedded mode (no REDIS_URL): loading the model in this process", file=sys.stderr)
        rt.queue.ready.wait()
        if rt.queue.error is not None:
            raise BadInput(f"the model failed to load: {rt.queue.error}")
        entry.ensure_examples(rt.worker_context, project, force=True)
    elif rt.queue.workers() == 0:
        print(
            "note: no worker is running; tasks wait on the batch queue until one starts "
            "(`seggpt-backend worker`)",
            file=sys.stderr,
        )
        return  # the worker fills the examples before its first chunk
    else:
        enqueue_fill(rt, project, force=True)
        deadline = time.monotonic() + timeout_s
        while rt.examples.populated_at(project) == before and time.monotonic() < deadline:
            time.sleep(0.2)
    if rt.examples.populated_at(project) in (None, before):
        raise BadInput(
            f"project {project}: could not read its annotations from Label Studio (see the log above "
            "or the worker's); nothing queued"
        )


def _prelabel(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return run_prelabel(args, settings)
    except BadInput as exc:
        return _fail(str(exc))


def run_prelabel(args: argparse.Namespace, settings: Settings) -> int:
    from seggpt_backend.service.contract import parse_targets
    from seggpt_backend.service.errors import ConfigUnsupported, RequestError
    from seggpt_backend.service.http import prelabel

    pid = _project_id(args.project)
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    project = str(pid)
    client = _client(settings)
    info = read_project(client, pid)
    try:
        targets = parse_targets(str(info.get("label_config") or ""))
    except ConfigUnsupported as exc:
        raise BadInput(f"project {project}: {exc}") from exc

    rt = _make_runtime(settings)
    try:
        _prepare(rt, project)
        if rt.examples.is_populated(project) and rt.examples.count(project) == 0:
            raise BadInput(
                f"project {project}: no accepted annotation with brush regions yet; annotate at least "
                "one task (every accepted annotation becomes an example), then pre-label"
            )
        version = rt.model_version(project)
        try:
            tasks = [prelabel.to_task(t, project) for t in list_tasks(client, pid)]
        except RequestError as exc:
            raise BadInput(str(exc)) from exc
        sel = prelabel.select_tasks(tasks, version, only=args.only, limit=args.limit)
        print(
            f"project {project}: {sel.total} tasks; {sel.have_prediction} already predicted by {version}, "
            f"{sel.labelled} labelled, {sel.other_version} with an older prediction, {sel.over_limit} over "
            f"--limit: skipped; {len(sel.chosen)} to pre-label (chunks of {settings.chunk_size})"
        )
        if not sel.chosen:
            return 0
        queued = prelabel.queue_tasks(rt, project, targets, sel.chosen, version)
        if not args.wait and not rt.queue.embedded:
            print(
                f"project {project}: {len(queued.task_ids)} tasks queued in {len(queued.jobs)} chunks; the "
                f"workers write the predictions back. Progress: GET /projects/{project}/progress, or run "
                "this command again with --wait"
            )
            return 0
        return wait_for_run(rt, queued, timeout_s=args.timeout)
    finally:
        rt.close()


def wait_for_run(
    rt: Any, queued: Any, *, timeout_s: float, out: TextIO | None = None, poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:  # fmt: skip
    """Follow ``queued`` (a :class:`~seggpt_backend.service.http.prelabel.Queued`) until every task
    finished; Ctrl-C cancels the chunks not started. Returns the exit code (see module docstring)."""
    out = sys.stderr if out is None else out
    tally = Tally(total=len(queued.task_ids), started=clock())
    bar = Bar(out)
    deadline = clock() + timeout_s
    project, version = queued.project, queued.model_version
    open_jobs = dict(queued.jobs)
    try:
        while open_jobs and clock() < deadline:
            _collect(rt, queued, open_jobs, tally, clock)
            bar.show(tally.line(clock()))
            if open_jobs:
                rt.results.wait(queued.channel, poll_s)
    except KeyboardInterrupt:
        bar.end()
        cancelled = _cancel(rt, project, open_jobs)
        print(
            f"project {project}: interrupted; {len(tally.done)} done, {len(tally.failed)} failed, "
            f"{cancelled} chunk(s) not started were cancelled. Run the command again to continue: "
            "tasks already holding a prediction are skipped.",
            file=out,
        )
        return 130
    bar.show(tally.line(clock()), force=True)
    bar.end()
    took = clock() - tally.started
    summary = (
        f"project {project}: {len(tally.done)} predicted and written back, {len(tally.failed)} failed "
        f"in {took:.0f} s ({tally.rate(clock()):.2f} task/s), model version {version}"
    )
    print(summary)
    for tid, reason in sorted(tally.failed.items()):
        print(f"  task {tid}: {reason}")
    if open_jobs:
        left = sorted(
            t for ids in open_jobs.values() for t in ids if t not in tally.done and t not in tally.failed
        )
        print(
            f"project {project}: {len(left)} task(s) not finished after {timeout_s:g} s: {left[:20]}",
            file=out,
        )
        return 1
    return 2 if tally.failed else 0


def _collect(
    rt: Any, queued: Any, open_jobs: dict[str, list[int]], tally: Tally, clock: Callable[[], float]
) -> None:
    """Move finished tasks into ``tally``; a job that ended without results fails its tasks."""
    project, version = queued.project, queued.model_version
    for jid, ids in list(open_jobs.items()):
        waiting = [t for t in ids if t not in tally.done and t not in tally.failed]
        found = rt.results.get_many(project, version, waiting)
        if len(found) < len(waiting):
            status = rt.queue.status(jid)
            if status not in ("queued", "started", "deferred", "scheduled"):
                # Ended (finished, failed, or gone): look once more, then what is missing failed.
                found = rt.results.get_many(project, version, waiting)
                for t in waiting:
                    if t not in found:
                        reason = f"task {t}: its job {jid} {status or 'ended'} without a result (see the worker log)"
                        tally.failed[t] = reason
                        rt.progress.finish(project, t, error=reason)
        for t, entry in found.items():
            if entry.ok:
                tally.done.add(t)
            else:
                tally.failed[t] = entry.error or "failed"
            if tally.first_done is None:
                tally.first_done = clock()
        if all(t in tally.done or t in tally.failed for t in ids):
            del open_jobs[jid]


def _cancel(rt: Any, project: str, open_jobs: dict[str, list[int]]) -> int:
    """Cancel queued (not started) chunks, and take their tasks out of the progress."""
    if rt.queue.embedded:
        return len(open_jobs)  # the in-process queue stops with this process
    from rq.job import Job as RQJob

    cancelled = 0
    for jid, ids in open_jobs.items():
        try:
            job = RQJob.fetch(jid, connection=rt.queue.connection, serializer=rt.queue.serializer)
            if job.get_status(refresh=True) in ("queued", "deferred", "scheduled"):
                job.cancel()
                rt.progress.drop(project, ids)
                cancelled += 1
        except Exception as exc:  # already gone or finished: nothing to cancel
            print(f"chunk {jid}: not cancelled ({type(exc).__name__})", file=sys.stderr)
    return cancelled


# ---------------------------------------------------------------------------------------- export-coco
def export_coco(args: argparse.Namespace, settings: Settings) -> int:
    """``export-coco``: from a JSON export file or (``--project``) straight from the API."""
    try:
        return _export_coco(args, settings)
    except BadInput as exc:
        return _fail(str(exc))


def _export_coco(args: argparse.Namespace, settings: Settings) -> int:
    from seggpt_backend.labelstudio.coco import tasks_to_coco, tasks_to_coco_results

    if (args.tasks is None) == (args.project is None):
        raise BadInput("export-coco needs either a Label Studio JSON export file or --project ID (not both)")
    if args.project is not None:
        pid = _project_id(args.project)
        client = _client(settings)
        read_project(client, pid)
        tasks = list_tasks(client, pid)
        source = f"project {pid}"
    else:
        try:
            tasks = json.loads(Path(args.tasks).read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"{args.tasks}: not a readable Label Studio JSON export ({exc})") from exc
        if not isinstance(tasks, list):
            raise BadInput(f"{args.tasks}: a Label Studio JSON export is a list of tasks")
        source = args.tasks
    coco = tasks_to_coco(tasks, use=args.use, split_components=args.split_components)
    Path(args.out).write_text(json.dumps(coco))
    skipped = coco.get("info", {}).get("skipped", [])
    print(
        f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} masks, {len(skipped)} skipped "
        f"({args.use} of {source})"
    )
    results = None
    if args.results or args.eval:
        results = tasks_to_coco_results(tasks, coco, split_components=args.split_components)
    if args.results and results is not None:
        Path(args.results).write_text(json.dumps(results))
        print(f"{args.results}: {len(results)} scored predictions (for COCOeval)")
    if args.eval:
        if args.use != "annotations":
            raise BadInput("--eval scores predictions against annotations: use --use annotations")
        scored = {
            t.get("id")
            for t in tasks
            if isinstance(t, dict)
            and any(isinstance(a, dict) and not a.get("was_cancelled") for a in t.get("annotations") or [])
            and any(isinstance(p, dict) for p in t.get("predictions") or [])
        }
        images = [img["id"] for img in coco["images"] if img.get("ls_task_id") in scored]
        print(f"--eval: {len(images)} task(s) hold both an accepted annotation and a prediction")
        for line in evaluate(coco, results or [], image_ids=images):
            print(line)
    return 0


def evaluate(
    coco: dict[str, Any], results: list[dict[str, Any]], *, image_ids: list[int] | None = None
) -> list[str]:
    """COCOeval (``segm``) of ``results`` against ``coco``, plus the per-label mask IoU.

    ``image_ids``: only these images (default: all); a task without an accepted annotation or
    without a prediction says nothing about quality, so the caller passes those holding both.

    Per label and image, IoU = |P and G| / |P or G| of the union of predicted masks P and of
    annotated masks G (an image with the label in neither is not counted); the mean over images
    is printed with AP (IoU 0.50:0.95) and AP50 from COCOeval, all in [0, 1].
    """
    import contextlib
    import io

    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    lines: list[str] = []
    gt = COCO()
    gt.dataset = json.loads(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    keep = None if image_ids is None else set(image_ids)
    images = {img["id"]: img for img in coco["images"] if keep is None or img["id"] in keep}
    results = [r for r in results if r["image_id"] in images]
    ious: dict[int, list[float]] = {c["id"]: [] for c in coco["categories"]}
    for cat in coco["categories"]:
        for image_id, img in images.items():
            size = (int(img["height"]), int(img["width"]))
            g = np.zeros(size, bool)
            p = np.zeros(size, bool)
            for a in coco["annotations"]:
                if a["image_id"] == image_id and a["category_id"] == cat["id"]:
                    g |= mask_utils.decode(a["segmentation"]).astype(bool)
            for r in results:
                if r["image_id"] == image_id and r["category_id"] == cat["id"]:
                    p |= mask_utils.decode(r["segmentation"]).astype(bool)
            union = int((g | p).sum())
            if union:
                ious[cat["id"]].append(float((g & p).sum()) / union)
    ap: dict[int, tuple[float, float]] = {}
    if results and images and any(a["image_id"] in images for a in coco["annotations"]):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(json.loads(json.dumps(results)))
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.imgIds = sorted(images)
            ev.evaluate()
            ev.accumulate()
        precision = ev.eval["precision"]  # [T thresholds, R recalls, K categories, A areas, M maxDets]
        for k, cat_id in enumerate(ev.params.catIds):
            all_t = precision[:, :, k, 0, -1]
            at50 = precision[0, :, k, 0, -1]
            ap[cat_id] = (
                float(all_t[all_t > -1].mean()) if (all_t > -1).any() else float("nan"),
                float(at50[at50 > -1].mean()) if (at50 > -1).any() else float("nan"),
            )
    lines.append(f"{'label':<20} {'images':>6} {'mean IoU':>9} {'AP':>7} {'AP50':>7}")
    for cat in coco["categories"]:
        values = ious[cat["id"]]
        miou = f"{np.mean(values):.3f}" if values else "-"
        a, a50 = ap.get(cat["id"], (float("nan"), float("nan")))
        lines.append(f"{cat['name']:<20} {len(values):>6} {miou:>9} {a:>7.3f} {a50:>7.3f}")
    if not results:
        lines.append("(no predictions to score)")
    return lines
