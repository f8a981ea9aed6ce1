#!/usr/bin/env bash
# Container entry point: make sure the model weights are on disk, then exec the command.
#
# When SEGGPT_WEIGHTS names a Hugging Face repo (e.g. BAAI/seggpt-vit-large), the first container
# to start downloads the weights into the cache volume (~/.cache, shared by all containers) and
# every other one waits on a lock in that volume, so N workers starting together do not download
# the same 1.2 GB N times into the same files. Only the processes that load the model do this:
# `seggpt-backend worker`, and `seggpt-backend serve` in embedded mode (no REDIS_URL). A download
# that fails stops the container here with the loader's message (what to set instead), before
# the command starts. Any other command (a shell, `seggpt-backend segment ...`) runs unchanged.
set -euo pipefail

loads_model() {
    [ "${1:-}" = seggpt-backend ] || return 1
    case "${2:-}" in
        worker) return 0 ;;
        serve) [ -z "${REDIS_URL:-}" ] ;;
        *) return 1 ;;
    esac
}

spec=${SEGGPT_WEIGHTS:-demo}
# Same shape as the loader's repo-id rule; an existing path with a slash is a path, not a repo.
if loads_model "$@" && [[ $spec =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] && [ ! -e "$spec" ]; then
    cache="$HOME/.cache"
    mkdir -p "$cache"
    echo "seggpt-entrypoint: checking weights $spec (first start downloads them into $cache)" >&2
    flock "$cache/.seggpt-weights.lock" python - "$spec" <<'PY'
import sys

from pathlib import Path

from seggpt_backend.model.checkpoint import CheckpointError, load_weights
from seggpt_backend.settings import Settings

try:
    weights = load_weights(sys.argv[1], timeout_s=30.0, download_dir=Path(Settings.from_env().model_dir))
except CheckpointError as exc:
    sys.exit(f"seggpt-entrypoint: {exc}")
print(f"seggpt-entrypoint: weights {sys.argv[1]} ready ({weights.version})", file=sys.stderr)
PY
fi

exec "$@"
