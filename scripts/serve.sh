#!/usr/bin/env bash
# Quickstart: installs into .venv and serves the backend on embedded defaults
# (no Redis needed, in-process jobs, offline demo weights unless SEGGPT_WEIGHTS says otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh runtime
export SEGGPT_WEIGHTS=${SEGGPT_WEIGHTS:-demo}
exec .venv/bin/seggpt-backend serve "$@"
