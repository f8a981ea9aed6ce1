#!/usr/bin/env bash
# Installs Label Studio 1.23 into its own virtualenv (.ls-venv) for the end-to-end tests.
# Label Studio pins many of its own dependencies (Django, numpy, label-studio-sdk...), so it never
# shares the project's .venv. Idempotent: a stamp file makes a second run return in milliseconds.
# Usage: scripts/install-label-studio.sh            (PYTHON=/path/to/python3 to pick the interpreter)
#        LS_VENV=/other/dir scripts/install-label-studio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
spec='label-studio==1.23.*'
venv=${LS_VENV:-.ls-venv}
PY=${PYTHON:-python3}
stamp="$venv/.installed"

if [ -x "$venv/bin/label-studio" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ]; then
    exit 0
fi

# Another process (a second pytest session) may be installing right now: serialise on a lock.
mkdir -p "$venv"
exec 9>"$venv/.install.lock"
flock 9
if [ -x "$venv/bin/label-studio" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ]; then
    exit 0
fi

start=$(date +%s)
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$spec"
# Not `label-studio --version`: it goes on to start a server. Check the import instead.
"$venv/bin/python" -c 'import label_studio, sys; sys.exit(not label_studio.__version__.startswith("1.23."))'
echo "$spec" > "$stamp"
echo "installed $spec into $venv in $(( $(date +%s) - start )) s"
