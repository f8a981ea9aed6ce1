#!/usr/bin/env bash
# The one test command: sets up .venv, makes sure a Redis answers, lints, runs the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k rle -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
export REDIS_URL_TEST=${REDIS_URL_TEST:-redis://127.0.0.1:6379}
if ! .venv/bin/python - <<'PY'
import os, redis, sys
try:
    redis.Redis.from_url(os.environ["REDIS_URL_TEST"], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
then
    echo "no Redis at $REDIS_URL_TEST: starting redis-server on 127.0.0.1:6379 (no persistence)"
    command -v redis-server >/dev/null || { echo "redis-server not installed (apt-get install redis-server)"; exit 1; }
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes
    for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
