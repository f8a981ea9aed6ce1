"""All settings, read once from the environment at the edges (CLI, server, worker).

Names follow the ``label_studio_ml`` conventions where one exists (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``, ``MODEL_DIR``, ``LOG_LEVEL``).
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields


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
    max_image_pixels: int = field(default=100_000_000, metadata={"env": "SEGGPT_MAX_IMAGE_PIXELS"})

    # Label Studio
    label_studio_url: str = field(default="", metadata={"env": "LABEL_STUDIO_URL"})
    label_studio_api_key: str = field(default="", repr=False, metadata={"env": "LABEL_STUDIO_API_KEY"})
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"env": "SEGGPT_ALLOWED_HOSTS"})

    # HTTP server
    host: str = field(default="0.0.0.0", metadata={"env": "HOST"})
    port: int = field(default=9090, metadata={"env": "PORT"})
    basic_auth_user: str = field(default="", metadata={"env": "BASIC_AUTH_USER"})
    basic_auth_pass: str = field(default="", repr=False, metadata={"env": "BASIC_AUTH_PASS"})
    predict_budget_s: float = field(default=80.0, metadata={"env": "SEGGPT_PREDICT_BUDGET_S"})

    # Queue
    redis_url: str = field(default="", repr=False, metadata={"env": "REDIS_URL"})
    key_prefix: str = field(default="seggpt", metadata={"env": "SEGGPT_KEY_PREFIX"})
    chunk_size: int = field(default=8, metadata={"env": "SEGGPT_CHUNK_SIZE"})
    job_timeout_s: int = field(default=900, metadata={"env": "SEGGPT_JOB_TIMEOUT_S"})
    worker_heartbeat_s: float = field(default=15.0, metadata={"env": "SEGGPT_WORKER_HEARTBEAT_S"})

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
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: jobs run in-process."""
        return not self.redis_url

    @staticmethod
    def env_names() -> dict[str, str]:
        """Environment variable -> field name, for documentation and tests."""
        return {f.metadata["env"]: f.name for f in fields(Settings)}
