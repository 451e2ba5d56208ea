#!/usr/bin/env bash
# The page test of `unmask serve` drives a real browser through Playwright: the distribution's Chromium
# (Playwright's own browser download is not used). Installs it from the distribution's packages if missing.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
run_as_root=()
if [ "$(id -u)" -ne 0 ]; then
    run_as_root=(sudo)
fi
"${run_as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${run_as_root[@]}" apt-get install -y -qq chromium >/dev/null
