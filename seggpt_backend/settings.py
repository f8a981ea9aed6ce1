"""All settings, read once from the environment at the edges (CLI, server, worker).

Names follow the ``label_studio_ml`` conventions where one exists (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``MODEL_DIR``, ``LOG_LEVEL``).
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import get_args

from seggpt_backend.engine.interface import EnsembleMode, MultiLabelMode, SegType


class SettingsError(ValueError):
    """A setting has a value the backend cannot run with; the message names the variable."""


# Closed sets of values, checked at start-up (a typo must not silently select a default).
CHOICES: dict[str, tuple[str, ...]] = {
    "ensemble": get_args(EnsembleMode),
    "seg_type": get_args(SegType),
    "multilabel": get_args(MultiLabelMode),
    "example_selection": ("retrieval", "recent"),
    "dtype": ("auto", "fp32", "bf16", "fp16"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Numbers that must be at least this large (0 allowed where 0 is meaningful).
MINIMUM: dict[str, float] = {
    "num_examples": 1,
    "example_pool": 1,
    "max_image_pixels": 1,
    "port": 1,
    "predict_budget_s": 0,
    "chunk_size": 1,
    "job_timeout_s": 1,
    "worker_heartbeat_s": 0.1,
    "max_body_bytes": 1024,
    "download_deadline_s": 0.1,  # seconds; must be > 0 (the client refuses 0)
    "tune_steps": 1,
    "tune_lr": 1e-6,
    "tune_batch": 1,
    "tune_budget_s": 1,
    "tune_margin": -1,
    "tune_every": 0,
    "refresh_interval_s": 0,
    "prompt_versions_kept": 1,
    "polygon_tolerance": 0,
    "min_region_area": 0,
    "min_score": 0,
    "refine_cache_ttl_s": 0,
}


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _tuple(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Frozen configuration of one process. Build it with :meth:`from_env`."""

    # Model
    seggpt_weights: str = field(default="demo", metadata={"env": "SEGGPT_WEIGHTS"})
    device: str = field(default="auto", metadata={"env": "SEGGPT_DEVICE"})
    dtype: str = field(default="auto", metadata={"env": "SEGGPT_DTYPE"})
    ensemble: str = field(default="feature", metadata={"env": "SEGGPT_ENSEMBLE"})
    seg_type: str = field(default="instance", metadata={"env": "SEGGPT_SEG_TYPE"})
    multilabel: str = field(default="per-label", metadata={"env": "SEGGPT_MULTILABEL"})
    num_examples: int = field(default=4, metadata={"env": "SEGGPT_NUM_EXAMPLES"})
    example_selection: str = field(default="retrieval", metadata={"env": "SEGGPT_EXAMPLE_SELECTION"})
    example_pool: int = field(default=64, metadata={"env": "SEGGPT_EXAMPLE_POOL"})
    split_components: bool = field(default=False, metadata={"env": "SEGGPT_SPLIT_COMPONENTS"})
    replace_superseded: bool = field(default=True, metadata={"env": "SEGGPT_REPLACE_SUPERSEDED"})
    max_image_pixels: int = field(default=100_000_000, metadata={"env": "SEGGPT_MAX_IMAGE_PIXELS"})
    # PolygonLabels output: Douglas-Peucker tolerance in pixels of the image (0: every boundary pixel).
    polygon_tolerance: float = field(default=1.0, metadata={"env": "SEGGPT_POLYGON_TOLERANCE"})
    # Foreground threshold on the soft map, in (0, 1) (the authors' rule: 0.5).
    mask_threshold: float = field(default=0.5, metadata={"env": "SEGGPT_MASK_THRESHOLD"})
    # Speck filters: regions smaller than this many pixels (of the original image) or with a
    # (calibrated) score below this are dropped.
    min_region_area: int = field(default=0, metadata={"env": "SEGGPT_MIN_REGION_AREA"})
    min_score: float = field(default=0.0, metadata={"env": "SEGGPT_MIN_SCORE"})

    # Label Studio
    label_studio_url: str = field(default="", metadata={"env": "LABEL_STUDIO_URL"})
    label_studio_api_key: str = field(default="", repr=False, metadata={"env": "LABEL_STUDIO_API_KEY"})
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"env": "SEGGPT_ALLOWED_HOSTS"})
    # Wall-clock seconds one image download may take, redirects included.
    download_deadline_s: float = field(default=60.0, metadata={"env": "SEGGPT_DOWNLOAD_DEADLINE_S"})

    # HTTP server
    host: str = field(default="0.0.0.0", metadata={"env": "HOST"})
    port: int = field(default=9090, metadata={"env": "PORT"})
    basic_auth_user: str = field(default="", metadata={"env": "BASIC_AUTH_USER"})
    basic_auth_pass: str = field(default="", repr=False, metadata={"env": "BASIC_AUTH_PASS"})
    predict_budget_s: float = field(default=80.0, metadata={"env": "SEGGPT_PREDICT_BUDGET_S"})

    max_body_bytes: int = field(default=64 * 2**20, metadata={"env": "SEGGPT_MAX_BODY_BYTES"})
    webhook_secret: str = field(default="", repr=False, metadata={"env": "SEGGPT_WEBHOOK_SECRET"})

    # Queue
    redis_url: str = field(default="", repr=False, metadata={"env": "REDIS_URL"})
    key_prefix: str = field(default="seggpt", metadata={"env": "SEGGPT_KEY_PREFIX"})
    chunk_size: int = field(default=8, metadata={"env": "SEGGPT_CHUNK_SIZE"})
    job_timeout_s: int = field(default=900, metadata={"env": "SEGGPT_JOB_TIMEOUT_S"})
    worker_heartbeat_s: float = field(default=15.0, metadata={"env": "SEGGPT_WORKER_HEARTBEAT_S"})
    # Pre-label tasks as they are imported (TASKS_CREATED webhook), written back in the background.
    auto_prelabel: bool = field(default=False, metadata={"env": "SEGGPT_AUTO_PRELABEL"})
    # Re-pre-label the unlabelled tasks when a tuning run promotes a learned prompt (or Start
    # Training's re-sync changes the examples); never per accepted annotation (service/jobs/refresh.py).
    auto_refresh: bool = field(default=False, metadata={"env": "SEGGPT_AUTO_REFRESH"})
    # At most one automatic refresh per project per this many seconds (0: no debounce).
    refresh_interval_s: float = field(default=600.0, metadata={"env": "SEGGPT_REFRESH_INTERVAL_S"})

    # Learning from corrections (in-context tuning, see service/jobs/tuning.py)
    tune_steps: int = field(default=60, metadata={"env": "SEGGPT_TUNE_STEPS"})
    tune_lr: float = field(default=0.01, metadata={"env": "SEGGPT_TUNE_LR"})
    tune_batch: int = field(default=4, metadata={"env": "SEGGPT_TUNE_BATCH"})
    # Wall-clock seconds one tuning run may spend optimising (all labels together).
    tune_budget_s: float = field(default=300.0, metadata={"env": "SEGGPT_TUNE_BUDGET_S"})
    # A tuned prompt is promoted only if its validation mIoU beats what is served by this much
    # (in [-1, 1); a negative margin promotes even a slightly worse prompt: experiments only).
    tune_margin: float = field(default=0.01, metadata={"env": "SEGGPT_TUNE_MARGIN"})
    # Tune automatically after this many new or changed accepted annotations (0: never).
    tune_every: int = field(default=0, metadata={"env": "SEGGPT_TUNE_EVERY"})
    # Foreground/background loss balance in [0, 1]; -1: the weights' own (0.25 demo, else 0).
    tune_fg_balance: float = field(default=-1.0, metadata={"env": "SEGGPT_TUNE_FG_BALANCE"})
    prompt_versions_kept: int = field(default=10, metadata={"env": "SEGGPT_PROMPT_VERSIONS_KEPT"})

    # Interactive refinement: how long a task's soft maps and decoded image stay in Redis for
    # smart-tool clicks (seconds; 0 turns the cache off).
    refine_cache_ttl_s: float = field(default=3600.0, metadata={"env": "SEGGPT_REFINE_CACHE_TTL_S"})

    # Misc
    model_dir: str = field(default="./model_dir", metadata={"env": "MODEL_DIR"})
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every field from its environment variable; ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in env or env[name] == "":
                continue
            raw = env[name]
            try:
                if f.type in ("int", int):
                    values[f.name] = int(raw)
                elif f.type in ("float", float):
                    values[f.name] = float(raw)
                elif f.type in ("bool", bool):
                    values[f.name] = _bool(raw)
                elif str(f.type).startswith("tuple"):
                    values[f.name] = _tuple(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a valid {f.type}") from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        """Refuse values the backend cannot run with, naming the environment variable."""
        env = {f.name: f.metadata["env"] for f in fields(self)}
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if (value.upper() if name == "log_level" else value) not in allowed:
                raise SettingsError(f"{env[name]}={value!r}: use one of {', '.join(allowed)}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise SettingsError(f"SEGGPT_DEVICE={self.device!r}: use auto, cpu, mps, cuda or cuda:N")
        for name, low in MINIMUM.items():
            if getattr(self, name) < low:
                raise SettingsError(f"{env[name]}={getattr(self, name)!r}: must be at least {low:g}")
        if self.tune_fg_balance > 1 or (self.tune_fg_balance < 0 and self.tune_fg_balance != -1):
            raise SettingsError(
                f"SEGGPT_TUNE_FG_BALANCE={self.tune_fg_balance!r}: use a value in [0, 1], or -1 for the weights' own"
            )
        if not 0 < self.mask_threshold < 1:
            raise SettingsError(f"SEGGPT_MASK_THRESHOLD={self.mask_threshold!r}: use a value in (0, 1)")
        if self.min_score > 1:
            raise SettingsError(f"SEGGPT_MIN_SCORE={self.min_score!r}: a score is in [0, 1]")
        if self.tune_margin >= 1:
            raise SettingsError(f"SEGGPT_TUNE_MARGIN={self.tune_margin!r}: an IoU margin must be below 1")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: jobs run in-process."""
        return not self.redis_url

    @staticmethod
    def env_names() -> dict[str, str]:
        """Environment variable -> field name, for documentation and tests."""
        return {f.metadata["env"]: f.name for f in fields(Settings)}


def configure_logging(settings: Settings) -> None:
    """Process-wide logging at ``LOG_LEVEL``. httpx is kept at WARNING: at INFO it logs every
    request URL, and presigned storage URLs carry credentials."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
