#!/usr/bin/env bash
# Creates (or refreshes) the project virtualenv in .venv and installs the package.
# Usage: scripts/bootstrap.sh [runtime|test]   (sourced by scripts/test.sh and scripts/serve.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-runtime}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
reqs=(requirements.txt)
[ "$flavour" = test ] && reqs+=(requirements-test.txt)
stamp=.venv/.installed-$flavour
digest=$(cat "${reqs[@]}" pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    # CPU wheel of torch unless the user already installed another build in this venv.
    .venv/bin/python -m pip install -q --disable-pip-version-check $(printf -- '-r %s ' "${reqs[@]}")
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$digest" > "$stamp"
fi
