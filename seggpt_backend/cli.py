"""``seggpt-backend`` command line: ``segment`` (try SegGPT on files), ``serve``, ``worker``,
``report`` (suggestion quality of a project),
``tune`` and ``prompts`` (the learning loop, :mod:`seggpt_backend.cli_learning`).

Settings come from the environment (:class:`seggpt_backend.settings.Settings`); flags override.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from seggpt_backend.settings import Settings, SettingsError, configure_logging

if TYPE_CHECKING:
    import numpy as np


def _segment(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np
    from PIL import Image

    from seggpt_backend.engine import processing as P
    from seggpt_backend.engine.engine import load_engine
    from seggpt_backend.engine.images import ImageError, load_image, load_image_and_size
    from seggpt_backend.model.checkpoint import CheckpointError

    try:
        images = [
            load_image(p, target_size=None, max_pixels=settings.max_image_pixels) for p, _ in args.prompt
        ]
        masks, colours = _prompt_masks(
            [m for _, m in args.prompt], [i.shape[:2] for i in images], settings.max_image_pixels
        )
        engine = load_engine(
            args.weights or settings.seggpt_weights,
            device=args.device,
            dtype=args.dtype,
            download_dir=settings.model_dir,
        )
    except (ImageError, CheckpointError) as exc:  # a bad prompt or weights spec: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prompts = engine.prepare_prompts(images, masks, ensemble=args.ensemble)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for query_path in args.queries:
        try:
            query, size = load_image_and_size(query_path, max_pixels=settings.max_image_pixels)
        except ImageError as exc:
            print(f"{query_path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        painting = engine.paint([query], prompts, seg_type=args.seg_type)[0]
        stem = out_dir / Path(query_path).stem
        if colours is None:
            _, mask = P.binary_from_painting(painting, size)
            Image.fromarray((mask * 255).astype(np.uint8)).save(f"{stem}.png")
        else:
            names = [str(i) for i in range(len(colours))]
            decoded = P.palette_from_painting(painting, size, colours, names)
            out = np.zeros((*size, 3), dtype=np.uint8)
            for i, name in enumerate(names):
                out[decoded[name][1]] = colours[i]
            Image.fromarray(out).save(f"{stem}.png")
        if args.save_soft:
            np.save(f"{stem}.npy", P.resize_to(painting, size).permute(1, 2, 0).numpy())
        print(f"{query_path} -> {stem}.png")
    return 1 if failures else 0


def _prompt_masks(
    paths: list[str], sizes: list[tuple[int, int]], max_pixels: int
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Read the prompt mask files, each resized (nearest) to its image's ``(H, W)``.

    Grey masks (every pixel's channels within 48 levels, which covers JPEG noise and
    anti-aliased edges) are binary and follow :func:`~seggpt_backend.engine.images.load_mask`'s
    rule (the one the service uses): returns ``(H, W) bool`` masks and ``None``. Colour masks are
    multi-class (:func:`_colour_classes`): returns ``(H, W, 3) uint8`` snapped masks and the
    ``(n, 3)`` class colours, or binary masks when only one class remains.
    """
    import numpy as np
    from PIL import Image

    from seggpt_backend.engine.images import load_image, load_mask

    def fit(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if mask.shape[:2] == size:
            return mask
        resized = Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST)
        return np.asarray(resized)

    pixels = [
        fit(load_image(p, target_size=None, max_pixels=max_pixels), s)
        for p, s in zip(paths, sizes, strict=True)
    ]
    flat = np.concatenate([m.reshape(-1, 3) for m in pixels]).astype(np.int16)
    if int((flat.max(axis=1) - flat.min(axis=1)).max()) <= 48:
        return [fit(load_mask(p, max_pixels=max_pixels), s) for p, s in zip(paths, sizes, strict=True)], None
    return _colour_classes(pixels)


def _colour_classes(masks: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Multi-class prompts from colour masks (``(H, W, 3) uint8``).

    A colour is a class when it covers >= 0.2 % of the pixels and differs from black and every
    more frequent class by > 48 (sum of ``|dRGB|``: above JPEG noise, below the 64 that separates
    VOC's class colours); every pixel is snapped to the nearest of black and the classes. Returns
    the snapped masks and the ``(n, 3)`` class colours, or binary masks when only one class remains.
    """
    import numpy as np

    pixels = np.concatenate([m.reshape(-1, 3) for m in masks]).astype(np.int16)
    values, counts = np.unique(pixels, axis=0, return_counts=True)
    accepted = [np.zeros(3, np.int16)]
    for i in np.argsort(-counts):
        if counts[i] < 0.002 * len(pixels):
            break
        if all(np.abs(values[i] - c).sum() > 48 for c in accepted):
            accepted.append(values[i])
    refs = np.stack(accepted)  # (1 + n, 3), black first
    snapped = []
    for m in masks:
        nearest = np.abs(m.astype(np.int16)[:, :, None, :] - refs).sum(axis=3).argmin(axis=2)
        snapped.append(refs[nearest].astype(np.uint8))
    if len(refs) <= 2:
        return [s.any(axis=2) for s in snapped], None
    return snapped, refs[1:].astype(np.uint8)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    """Suggestion-quality report of one project (:mod:`seggpt_backend.report`); exit 2 when the
    project id is bad, the measurements cannot be read, or there are none yet."""
    from seggpt_backend.labelstudio.client import parse_project_id
    from seggpt_backend.report import write_report
    from seggpt_backend.service.store.quality import Measurement, QualityStore

    try:
        project = str(parse_project_id(args.project))
    except ValueError as exc:
        print(f"error: --project: {exc}", file=sys.stderr)
        return 2
    try:
        if args.backend:
            import httpx

            auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.basic_auth_user else None
            r = httpx.get(f"{args.backend.rstrip('/')}/quality/{project}", auth=auth, timeout=30)
            r.raise_for_status()
            entries = [Measurement.from_json(e) for e in r.json()["entries"]]
        elif settings.redis_url:
            from seggpt_backend.service.store.kv import RedisKV

            entries = QualityStore(RedisKV.from_url(settings.redis_url, settings.key_prefix)).entries(project)
        else:
            print(
                "error: the measurements live in the backend's store: set REDIS_URL (and SEGGPT_KEY_PREFIX) "
                "as for `serve`, or pass --backend http://HOST:PORT of a running backend (embedded mode)",
                file=sys.stderr,
            )
            return 2
    except Exception as exc:  # Redis down, backend unreachable, a bad answer: say so, no traceback
        print(f"error: project {project}: cannot read the quality measurements: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print(
            f"error: project {project}: no measurements yet (they are recorded when an annotation is "
            "submitted on a task that carries a prediction of this backend)",
            file=sys.stderr,
        )
        return 2
    data = write_report(project, entries, Path(args.out))
    for label, s in data["labels"].items():
        print(f"{label}: n={s['n']} mean IoU {s['mean_iou']:.3f} (rolling {s['rolling_mean_iou']:.3f})")
    print(f"{Path(args.out) / 'index.html'}: {data['measurements']} measured submissions")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from seggpt_backend.service.server import run_server

    run_server(settings, host=args.host or settings.host, port=args.port or settings.port)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from seggpt_backend.service.jobs.worker import run_worker

    run_worker(settings, args.queues, burst=args.burst)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from seggpt_backend import cli_learning, cli_prelabel

    parser = argparse.ArgumentParser(prog="seggpt-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment query images from example image/mask pairs")
    seg.add_argument("--weights", help="weights spec (default: $SEGGPT_WEIGHTS or 'demo')")
    seg.add_argument(
        "--prompt",
        nargs=2,
        action="append",
        required=True,
        metavar=("IMAGE", "MASK"),
        help="an example (repeatable)",
    )
    seg.add_argument("--ensemble", choices=["feature", "spatial", "none"], default="feature")
    seg.add_argument("--seg-type", choices=["instance", "semantic"], default="instance")
    seg.add_argument("--out", required=True, help="output directory (one <query>.png per query)")
    seg.add_argument(
        "--save-soft", action="store_true", help="also save the 0-255 RGB painting as <query>.npy"
    )
    seg.add_argument("--device", default="auto")
    seg.add_argument("--dtype", default="auto")
    seg.add_argument("queries", nargs="+", metavar="QUERY")
    seg.set_defaults(func=_segment)

    exp = sub.add_parser(
        "export-coco", help="Label Studio project or JSON export -> COCO instance masks (exact RLE)"
    )
    exp.add_argument("tasks", nargs="?", help="a Label Studio JSON export (list of tasks)")
    exp.add_argument("--project", help="read the tasks straight from this Label Studio project (API)")
    exp.add_argument("--out", required=True, help="COCO annotations file to write")
    exp.add_argument("--use", choices=["annotations", "predictions"], default="annotations")
    exp.add_argument("--split-components", action="store_true", help="one COCO object per connected part")
    exp.add_argument("--results", help="also write the tasks' predictions as a COCO results list")
    exp.add_argument(
        "--eval", action="store_true", help="COCOeval (segm) of the predictions against the annotations"
    )
    exp.set_defaults(func=cli_prelabel.export_coco)

    rep = sub.add_parser("report", help="suggestion quality of a project: HTML page, PNG plots, figures.json")
    rep.add_argument("--project", required=True, help="Label Studio project id")
    rep.add_argument("--out", required=True, help="directory to write index.html, *.png and figures.json")
    rep.add_argument(
        "--backend", help="read the measurements from a running backend (http://HOST:PORT) instead of Redis"
    )
    rep.set_defaults(func=_report)

    srv = sub.add_parser("serve", help="run the Label Studio ML backend (HTTP)")
    srv.add_argument("--host")
    srv.add_argument("--port", type=int)
    srv.set_defaults(func=_serve)

    wrk = sub.add_parser("worker", help="run one GPU worker (needs REDIS_URL)")
    wrk.add_argument(
        "--queues",
        nargs="+",
        default=["interactive", "batch"],
        help="queues in priority order, space- or comma-separated (default: interactive batch)",
    )
    wrk.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    wrk.set_defaults(func=_worker)

    cli_learning.add_commands(sub)
    cli_prelabel.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # a bad setting ends start-up with its name, not a traceback
        print(f"seggpt-backend: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)  # httpx kept at WARNING: its INFO lines carry request URLs
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
