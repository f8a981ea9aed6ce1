"""End to end: the user story against a REAL Label Studio 1.23 and the backend run as a user runs it.

The user story runs once per deployment mode:

- ``redis``: ``seggpt-backend serve`` plus one ``seggpt-backend worker`` subprocess on the local
  Redis (a unique ``SEGGPT_KEY_PREFIX``, deleted at the end); images fetched with the legacy token.
- ``embedded``: ``seggpt-backend serve`` alone (no ``REDIS_URL``: jobs run in-process); images
  fetched with the personal access token.

Scenario (everything through Label Studio's API, as the UI would do it):

1. A BrushLabels project (Cat, Dog) with non-square images: PNGs and EXIF-rotated JPEGs whose
   displayed size (W x H after the orientation tag) differs from their stored size.
2. Two accepted annotations with **Cat only**, made before the backend is connected: connecting
   (``POST /api/ml``, interactive) must make the backend pick them up from the API (its model
   version leaves ``...ex-none``) and Label Studio registers the backend's ``/webhook``.
3. "Retrieve Predictions" on every unlabelled task: each gets exactly one stored prediction with
   the backend's model version, whose brush regions decode to masks of the image's DISPLAYED size,
   with the config's names and labels, scores in [0, 1], and no Dog region (no Dog example yet).
4. An interactive request (``POST /api/ml/{id}/interactive-annotating``, a positive keypoint on a
   cat of a rotated JPEG): one Cat region at the displayed size that keeps the clicked object;
   nothing is stored.
5. A new accepted annotation with Cat AND Dog (Label Studio sends ANNOTATION_CREATED to the
   backend): the model version changes at once, and the very next "Retrieve Predictions" stores
   predictions with the new version that now contain Dog regions (only the new example has Dog).
6. A task imported afterwards and opened in the editor (``GET /api/tasks/{id}``) gets its
   prediction on the spot, with the new version.

A second test starts the worker only after "Retrieve Predictions" was answered (the worker still
loading its weights, as in a fresh deployment): the predictions it writes back must not be
computed again and duplicated by the next "Retrieve Predictions".

Weights: ``demo`` when ``seggpt_backend/demo/weights/config.json`` exists, else ``random:tiny``
(``SEGGPT_E2E_WEIGHTS`` overrides). Mask quality (IoU with the drawn shapes) is asserted only with
``demo``; random weights check the structure and the plumbing.

Processes are stopped in ``finally`` blocks (SIGTERM to their own process group, SIGKILL after a
grace period; they also die with the test process), and a clean stop on SIGTERM (no SIGKILL
needed, nothing logged at WARNING or above) is part of the test. On failure the backend logs are
printed with the assertion.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from seggpt_backend import masks as mask_ops
from seggpt_backend.labelstudio import rle
from seggpt_backend.settings import Settings
from tests.fixtures import DISPLAY_FROM_STORED, scene, write_jpeg, write_png
from tests.labelstudio_server import LabelStudio, _die_with_parent, free_port, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, cleanup_redis, new_prefix, redis_url, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "seggpt_backend" / "demo" / "weights" / "config.json"
FROM_NAME, TO_NAME, LABELS = "tag", "image", ("Cat", "Dog")  # as in LABEL_CONFIG
# Modest floors for the small demo model on these synthetic scenes (never seen in its training):
# a mean over several tasks, and a lower one for a single image. A wrong size, orientation or label
# mapping scores near 0. Observed with a half-trained checkpoint: means 0.35-0.42, single 0.34-0.71.
IOU_FLOOR = 0.3
IOU_FLOOR_ONE = 0.2


def weights_spec() -> str:
    override = os.environ.get("SEGGPT_E2E_WEIGHTS", "").strip()
    if override:
        return override
    return "demo" if DEMO_CONFIG.exists() else "random:tiny"


# ---------------------------------------------------------------------------------------- images
@dataclass
class Picture:
    """A test image file and its truth in DISPLAYED pixels: ``masks[label]`` is (H, W) bool."""

    name: str
    path: Path
    masks: dict[str, np.ndarray]

    @property
    def size(self) -> tuple[int, int]:
        """Displayed ``(W, H)``: what ``original_width``/``original_height`` must say."""
        h, w = next(iter(self.masks.values())).shape
        return w, h


def _png(tmp: Path, name: str, height: int, width: int, seed: int, shapes: dict[str, int]) -> Picture:
    pixels, masks = scene(height, width, seed=seed, shapes=shapes)
    return Picture(name, write_png(tmp / f"{name}.png", pixels), masks)


def _rotated_jpeg(
    tmp: Path, name: str, height: int, width: int, seed: int, shapes: dict[str, int], orientation: int
) -> Picture:
    """A JPEG that DISPLAYS as ``scene(height, width)`` once its EXIF orientation (6 or 8) is applied."""
    displayed, masks = scene(height, width, seed=seed, shapes=shapes)
    stored = np.ascontiguousarray(np.rot90(displayed, k=1 if orientation == 6 else -1))
    assert np.array_equal(DISPLAY_FROM_STORED[orientation](stored), displayed)
    path = write_jpeg(tmp / f"{name}.jpg", stored, quality=95, orientation=orientation)
    from PIL import Image

    with Image.open(path) as im:  # the file's own header says H x W swapped: EXIF really matters
        assert im.size == (height, width)
    return Picture(name, path, masks)


def build_pictures(tmp: Path) -> dict[str, Picture]:
    cat = {"Cat": 1}
    both = {"Cat": 1, "Dog": 1}
    return {
        # examples annotated before the backend is connected (Cat only)
        "ex_png": _png(tmp, "ex_png", 96, 128, 1, cat),
        "ex_jpg": _rotated_jpeg(tmp, "ex_jpg", 128, 96, 2, cat, orientation=6),
        # unlabelled queries
        "q_png": _png(tmp, "q_png", 96, 128, 11, both),
        "q_wide": _png(tmp, "q_wide", 80, 144, 12, both),
        "q_jpg": _rotated_jpeg(tmp, "q_jpg", 144, 96, 13, both, orientation=8),
        # unlabelled at first, annotated with Cat and Dog in step 5
        "later": _png(tmp, "later", 96, 128, 14, both),
        # imported after the webhook (step 6), uploaded separately
        "opened": _rotated_jpeg(tmp, "opened", 112, 144, 15, both, orientation=6),
    }


# ---------------------------------------------------------------------------------------- backend
@dataclass
class Backend:
    """A running backend: its URL, a client, and its processes (name -> (process, log path))."""

    mode: str
    url: str
    weights: str
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]]
    http: httpx.Client
    env: dict[str, str] = field(repr=False)
    tmp: Path
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    def start_worker(self, name: str = "worker") -> None:
        """``seggpt-backend worker`` (redis mode) with the server's environment."""
        log = self.tmp / f"{name}.log"
        self.procs[name] = (_spawn(["worker"], self.env, log), log)

    def start_serve(self) -> None:
        """``seggpt-backend serve`` on the backend's URL (again, after a crash)."""
        log = self.tmp / "serve.log"
        port = self.url.rsplit(":", 1)[1]
        with open(log, "ab") as out:
            out.write(b"----- (re)started -----\n")
        self.procs["serve"] = (_spawn(["serve", "--host", "127.0.0.1", "--port", port], self.env, log), log)

    def kill(self, name: str) -> None:
        """SIGKILL a process (and its group), as the OOM killer or a power cut would."""
        proc = self.procs[name][0]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def setup(self, project: int) -> str:
        """``POST /setup`` as Label Studio sends it; returns the project's model version."""
        r = self.http.post("/setup", json={"project": f"{project}.1795307990", "schema": LABEL_CONFIG})
        assert r.status_code == 200, r.text
        return str(r.json()["model_version"])

    def logs(self, lines: int = 60) -> str:
        out = []
        for name, (_, log) in self.procs.items():
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"----- {name} log ({log}) -----\n" + "\n".join(text))
        return "\n".join(out)


def _command() -> list[str]:
    script = Path(sys.executable).with_name("seggpt-backend")
    return [str(script)] if script.exists() else [sys.executable, "-m", "seggpt_backend.cli"]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            _command() + args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it stops nothing else
            preexec_fn=_die_with_parent,
        )


def _stop(proc: subprocess.Popen[bytes], grace: float = 30) -> int | None:
    """SIGTERM, wait, then SIGKILL. Returns the exit code after SIGTERM, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return None


@contextlib.contextmanager
def running_backend(
    mode: str,
    ls: LabelStudio,
    tmp: Path,
    *,
    worker: bool = True,
    env_extra: dict[str, str] | None = None,
) -> Iterator[Backend]:
    """Start ``serve`` (+ ``worker`` in redis mode unless ``worker=False``) as subprocesses and wait
    until they are ready; stop them and clean Redis at exit. ``env_extra`` adds settings."""
    prefix = new_prefix()
    port = free_port()
    weights = weights_spec()
    # Only what this test sets reaches the backend: no setting leaks in from the caller's shell.
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
    env.update(
        SEGGPT_WEIGHTS=weights,
        SEGGPT_DEVICE="cpu",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.token if mode == "redis" else ls.pat,
        SEGGPT_KEY_PREFIX=prefix,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    if mode == "redis":
        env["REDIS_URL"] = redis_url()
    env.update(env_extra or {})
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    url = f"http://127.0.0.1:{port}"
    backend = Backend(mode, url, weights, procs, httpx.Client(base_url=url, timeout=30), env, tmp)
    try:
        if mode == "redis" and worker:
            backend.start_worker()
        log = tmp / "serve.log"
        procs["serve"] = (_spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log), log)
        _wait_ready(backend, need_worker=mode == "embedded" or worker)
        yield backend
    finally:
        backend.http.close()
        # The server first: no new jobs while the workers stop.
        for name in sorted(procs, key=lambda n: n != "serve"):
            backend.exit_codes[name] = _stop(procs[name][0])
        if mode == "redis":
            url = env["REDIS_URL"]
            with contextlib.suppress(Exception):
                cleanup_redis(prefix, url=url)
                _forget_dead_workers(prefix, url=url)


def _forget_dead_workers(prefix: str, *, url: str | None = None) -> None:
    """Delete the worker records RQ keeps for a minute after a worker stops (their names hold no prefix)."""
    import redis

    client = redis.Redis.from_url(url or redis_url())
    try:
        for key in client.scan_iter(match="rq:worker:*", count=1000):
            if client.type(key) == b"hash" and prefix.encode() in (client.hget(key, "queues") or b""):
                client.delete(key, key + b":executions")
                client.srem("rq:workers", key)
    finally:
        client.close()


def _wait_ready(backend: Backend, *, need_worker: bool = True, timeout: float = 180) -> None:
    """Until ``/health`` says UP, with a live worker (model loaded) if ``need_worker``; fail fast
    if a process dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, (proc, _) in backend.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{backend.logs()}")
        with contextlib.suppress(httpx.HTTPError):
            r = backend.http.get("/health", timeout=2)
            last = r.text
            body = r.json()
            if r.status_code == 200 and body.get("status") == "UP" and body["workers"] >= need_worker:
                assert body["mode"] == backend.mode, body
                return
        time.sleep(0.3)
    raise AssertionError(f"backend not ready within {timeout:.0f} s (last /health: {last})\n{backend.logs()}")


# ---------------------------------------------------------------------------------------- checks
def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def label_iou(predicted: dict[str, np.ndarray], picture: Picture, label: str) -> float:
    """IoU of the predicted ``label`` mask with the drawn shape; 0 when no region has that label."""
    truth = picture.masks[label]
    return iou(predicted[label], truth) if label in predicted else 0.0


def check_regions(result: Any, picture: Picture) -> dict[str, np.ndarray]:
    """Validate brush regions against the picture; returns ``{label: union of its masks}`` (displayed px)."""
    assert isinstance(result, list), result
    width, height = picture.size
    masks: dict[str, np.ndarray] = {}
    for region in result:
        where = f"{picture.name}: region {region.get('id')}"
        assert region["type"] == "brushlabels", where
        assert (region["from_name"], region["to_name"]) == (FROM_NAME, TO_NAME), where
        # The displayed (EXIF-corrected) size, not the stored one.
        assert (region["original_width"], region["original_height"]) == (width, height), where
        assert region.get("image_rotation", 0) == 0, where
        value = region["value"]
        assert value["format"] == "rle", where
        labels = value["brushlabels"]
        assert len(labels) == 1 and labels[0] in LABELS, where
        assert 0.0 <= float(region["score"]) <= 1.0, where
        mask = rle.decode(value["rle"], height, width) > 0  # raises unless the RLE is exactly H x W
        assert mask.any(), f"{where}: empty mask"
        masks[labels[0]] = masks.get(labels[0], np.zeros_like(mask)) | mask
    return masks


def check_prediction(prediction: dict[str, Any], picture: Picture, version: str) -> dict[str, np.ndarray]:
    assert prediction["model_version"] == version, (picture.name, prediction["model_version"], version)
    assert 0.0 <= float(prediction["score"]) <= 1.0, prediction["score"]
    return check_regions(prediction["result"], picture)


def keypoint(picture: Picture, label: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """A positive keypoint (percent coordinates, like the editor's) on the centre of ``label``'s shape."""
    rows, cols = np.nonzero(picture.masks[label])
    # The shape pixel nearest to the centroid (ellipses and rectangles hold their centroid anyway).
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    row, col = int(rows[k]), int(cols[k])
    width, height = picture.size
    item = {
        "id": "kp1",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "is_positive": True,
        "value": {
            "x": (col + 0.5) / width * 100,
            "y": (row + 0.5) / height * 100,
            "width": 0.5,
            "keypointlabels": [label],
        },
    }
    return item, (row, col)


def _ok(r: httpx.Response) -> Any:
    assert r.is_success, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:500]}"
    return r.json()


# ---------------------------------------------------------------------------------------- scenario
def run_scenario(ls: LabelStudio, backend: Backend, pics: dict[str, Picture]) -> None:
    demo = backend.weights == "demo"

    # 1. Project and images (one upload per file, so ids follow this order).
    project = ls.create_project(LABEL_CONFIG)
    first_batch = [n for n in pics if n != "opened"]
    ids = dict(zip(first_batch, ls.import_images(project, [pics[n].path for n in first_batch]), strict=True))

    # 2. Cat-only examples, then connect the backend.
    for name in ("ex_png", "ex_jpg"):
        ls.annotate(ids[name], brush_result({"Cat": pics[name].masks["Cat"]}))
    ml_id = ls.connect_ml_backend(project, backend.url, is_interactive=True)
    hooks = _ok(ls.api.get("/api/webhooks/", params={"project": project}))
    assert any(h["url"] == f"{backend.url}/webhook" and h["project"] == project for h in hooks), hooks
    # Connecting is enough for the backend to read the two annotations made before it existed.
    version = wait_for(lambda: (v := backend.setup(project)) and not v.endswith(".ex-none") and v, timeout=60)

    # 3. Retrieve Predictions for every unlabelled task.
    unlabelled = ["q_png", "q_wide", "q_jpg", "later"]
    ls.retrieve_predictions(project, [ids[n] for n in unlabelled])
    assert backend.setup(project) == version  # nothing changed the examples meanwhile
    assert _ok(ls.api.get(f"/api/ml/{ml_id}"))["model_version"] == version
    cat_ious = []
    first: dict[str, dict[str, Any]] = {}
    for name in unlabelled:
        preds = ls.predictions(ids[name])
        assert len(preds) == 1, (name, [p["model_version"] for p in preds])
        first[name] = preds[0]
        masks = check_prediction(preds[0], pics[name], version)
        assert "Dog" not in masks, f"{name}: a Dog region although no example has a Dog"
        cat_ious.append(label_iou(masks, pics[name], "Cat"))
    if demo:
        assert float(np.mean(cat_ious)) >= IOU_FLOOR, f"Cat IoU per task (0 = no region): {cat_ious}"

    # 4. Interactive: a positive click on the cat of the rotated JPEG.
    pic = pics["q_jpg"]
    item, (row, col) = keypoint(pic, "Cat")
    answer = _ok(
        ls.api.post(
            f"/api/ml/{ml_id}/interactive-annotating",
            json={"task": ids["q_jpg"], "context": {"result": [item]}},
        )
    )
    assert "errors" not in answer, answer
    suggestion = answer["data"]
    assert suggestion["model_version"] == version
    regions = suggestion["result"]
    assert len(regions) <= 1, regions
    masks = check_regions(regions, pic)
    assert set(masks) <= {"Cat"}, set(masks)
    if demo:
        assert "Cat" in masks, "the click on a cat returned nothing"
    if "Cat" in masks:
        mask = masks["Cat"]
        assert mask[row, col], "the clicked pixel is not in the suggestion"
        assert mask_ops.label(mask)[1] == 1, "a positive click keeps one object, not several"
        if demo:
            assert iou(mask, pic.masks["Cat"]) >= IOU_FLOOR_ONE
    assert len(ls.predictions(ids["q_jpg"])) == 1  # a suggestion is not stored

    # 5. A new accepted annotation with Cat and Dog reaches the backend by webhook.
    ls.annotate(ids["later"], brush_result(pics["later"].masks))
    new_version = wait_for(lambda: (v := backend.setup(project)) != version and v, timeout=15)
    assert new_version.split(".ex-")[0] == version.split(".ex-")[0]  # same engine, new examples
    queries = ["q_png", "q_wide", "q_jpg"]
    ls.retrieve_predictions(project, [ids[n] for n in queries])
    dog_ious = []
    dog_seen = 0
    for name in queries:
        # The default version policy replaces the backend's own superseded prediction.
        (new,) = wait_for(
            lambda n=name: (
                (p := ls.predictions(ids[n])) and [x["model_version"] for x in p] == [new_version] and p
            ),
            timeout=60,
        )
        assert new["id"] != first[name]["id"]
        masks = check_prediction(new, pics[name], new_version)
        dog_seen += "Dog" in masks
        dog_ious.append(label_iou(masks, pics[name], "Dog"))
    # Only the new example has a Dog: Dog regions prove the very next prediction used it.
    assert dog_seen >= 1, "no prediction after the webhook has a Dog region"
    if demo:
        assert float(np.mean(dog_ious)) >= IOU_FLOOR, f"Dog IoU per task (0 = no region): {dog_ious}"
    assert _ok(ls.api.get(f"/api/ml/{ml_id}"))["model_version"] == new_version

    # 6. A task added now and opened in the editor (GET /api/tasks/{id}) is predicted on the spot.
    (opened,) = ls.import_images(project, [pics["opened"].path])
    _ok(ls.api.get(f"/api/tasks/{opened}/"))
    preds = ls.predictions(opened)
    assert len(preds) == 1, [p["model_version"] for p in preds]
    masks = check_prediction(preds[0], pics["opened"], new_version)
    if demo:
        for label in ("Cat", "Dog"):
            assert label_iou(masks, pics["opened"], label) >= IOU_FLOOR_ONE, (label, set(masks))


def assert_clean_stop(backend: Backend) -> None:
    """Every process ended on SIGTERM within the grace period and logged nothing at WARNING or above."""
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the server's code is 0 or -SIGTERM.
    clean = {0, -signal.SIGTERM}
    assert set(backend.exit_codes) == set(backend.procs), backend.exit_codes
    assert all(c in clean for c in backend.exit_codes.values()), (
        f"unclean shutdown (None = killed): {backend.exit_codes}\n{backend.logs()}"
    )
    assert "Application shutdown complete" in backend.procs["serve"][1].read_text(errors="replace")
    # Nothing went wrong quietly: e.g. an example mask that does not match its (EXIF-rotated) image
    # is only a warning, and a failed job only an error line in the worker's log.
    problems = [
        f"{name}: {line}"
        for name, (_, log) in backend.procs.items()
        for line in log.read_text(errors="replace").splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)
    ]
    assert not problems, "\n".join(problems)


@contextlib.contextmanager
def logs_on_failure(backend: Backend, ls: LabelStudio) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{backend.logs()}\n----- Label Studio -----\n{ls.log_tail()}") from exc


@pytest.mark.parametrize("mode", ["redis", "embedded"])
def test_label_studio_user_story(label_studio: LabelStudio, tmp_path: Path, mode: str) -> None:  # noqa: F811
    pics = build_pictures(tmp_path)
    with running_backend(mode, label_studio, tmp_path) as backend, logs_on_failure(backend, label_studio):
        run_scenario(label_studio, backend, pics)
    assert set(backend.procs) == ({"serve", "worker"} if mode == "redis" else {"serve"})
    assert_clean_stop(backend)


def test_predictions_written_back_once_the_worker_is_up_are_not_recomputed(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Retrieve Predictions while no worker runs yet (e.g. it is still loading large weights).

    The server answers at once and the worker writes the predictions back through the API when it
    comes up. They must carry the model version the backend reports from then on: Label Studio
    skips tasks holding a prediction of the version ``/setup`` returns, so any other version makes
    the next Retrieve Predictions compute every task again and store a second prediction.
    """
    ls = label_studio
    pics = build_pictures(tmp_path)
    with (
        running_backend("redis", ls, tmp_path, worker=False) as backend,
        logs_on_failure(backend, ls),
    ):
        project = ls.create_project(LABEL_CONFIG)
        names = ["ex_png", "q_png", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        ls.annotate(ids["ex_png"], brush_result({"Cat": pics["ex_png"].masks["Cat"]}))
        ls.connect_ml_backend(project, backend.url, is_interactive=True)
        queries = [ids["q_png"], ids["q_jpg"]]
        ls.retrieve_predictions(project, queries)  # answered at once, empty: nobody computes yet
        assert all(ls.predictions(t) == [] for t in queries)
        backend.start_worker()
        _wait_ready(backend)
        wait_for(lambda: all(ls.predictions(t) for t in queries), timeout=60)  # written back
        version = backend.setup(project)
        ls.retrieve_predictions(project, queries)
        for name in ("q_png", "q_jpg"):
            preds = ls.predictions(ids[name])
            assert len(preds) == 1, (
                f"{name}: {len(preds)} predictions, versions {[p['model_version'] for p in preds]}; "
                f"/setup says {version}"
            )
            check_prediction(preds[0], pics[name], version)
    assert_clean_stop(backend)


def test_a_new_model_version_replaces_the_backends_older_prediction(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The model-version policy against the real Label Studio (docs/DELIVERY.md#model-version).

    A correction changes the model version; "Retrieve Predictions" then gives each task the new
    prediction and removes this backend's older one, so predictions do not pile up. Another
    model's prediction and the annotations (even one made from a deleted prediction) stay.
    """
    ls = label_studio
    pics = build_pictures(tmp_path)
    with running_backend("redis", ls, tmp_path) as backend, logs_on_failure(backend, ls):
        project = ls.create_project(LABEL_CONFIG)
        names = ["ex_png", "q_png", "q_wide", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        ls.annotate(ids["ex_png"], brush_result({"Cat": pics["ex_png"].masks["Cat"]}))
        ls.connect_ml_backend(project, backend.url, is_interactive=True)
        first = wait_for(
            lambda: (v := backend.setup(project)) and not v.endswith(".ex-none") and v, timeout=60
        )
        queries = [ids["q_png"], ids["q_wide"], ids["q_jpg"]]
        ls.retrieve_predictions(project, queries)
        assert all([p["model_version"] for p in ls.predictions(t)] == [first] for t in queries)
        other = _ok(
            ls.api.post(
                "/api/predictions",
                json={"task": ids["q_png"], "result": [], "score": 0.5, "model_version": "another-model-v1"},
            )
        )
        # An annotator accepts q_jpg's suggestion with a correction: a new example, a new version.
        (suggestion,) = ls.predictions(ids["q_jpg"])
        annotation = ls.annotate(
            ids["q_jpg"],
            brush_result({"Cat": pics["q_jpg"].masks["Cat"]}),
            parent_prediction=suggestion["id"],
        )
        second = wait_for(lambda: (v := backend.setup(project)) != first and v, timeout=30)

        rest = [ids["q_png"], ids["q_wide"]]
        ls.retrieve_predictions(project, rest)

        def versions(task: int) -> list[str]:
            return sorted(p["model_version"] for p in ls.predictions(task))

        wait_for(lambda: versions(ids["q_wide"]) == [second], timeout=60)  # the old one is gone
        assert versions(ids["q_png"]) == sorted([second, "another-model-v1"])
        assert any(p["id"] == other["id"] for p in ls.predictions(ids["q_png"]))
        assert versions(ids["q_jpg"]) == [first]  # not asked again: untouched
        kept = _ok(ls.api.get(f"/api/annotations/{annotation}/"))
        assert kept["id"] == annotation and kept["result"]
        # Asking again changes nothing.
        ls.retrieve_predictions(project, rest)
        time.sleep(2)
        assert versions(ids["q_wide"]) == [second]
        assert versions(ids["q_png"]) == sorted([second, "another-model-v1"])
