#!/usr/bin/env bash
# Installs the headless browser of the browser tests (tests/test_browser.py): Debian's `chromium`
# and `chromium-driver` from apt (no browser download from a CDN, so Playwright's bundles are out).
# Idempotent: returns at once when both `chromium` and `chromedriver` are on PATH.
# Uses sudo only when not root. Usage: scripts/install-browser.sh
set -euo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
have && exit 0

command -v apt-get >/dev/null 2>&1 || {
    echo "install-browser: no apt-get here; install chromium and its chromedriver yourself" >&2
    exit 1
}
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "install-browser: not root and no sudo: run 'apt-get install -y chromium chromium-driver' as root" >&2
    exit 1
fi

# Parallel sessions: one apt run at a time (apt's own lock would fail the second one instead).
exec 9>"${TMPDIR:-/tmp}/seggpt-install-browser.lock"
flock 9
have && exit 0

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists; refresh only if the install fails without them.
"${as_root[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver ||
    { "${as_root[@]}" apt-get update -q && "${as_root[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver; }
have || { echo "install-browser: chromium/chromedriver still missing after apt-get" >&2; exit 1; }
echo "installed $(chromium --version 2>/dev/null | head -1) in $(( $(date +%s) - start )) s"
