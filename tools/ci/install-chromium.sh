#!/usr/bin/env bash
# Installs Debian's `chromium` package for the headless-browser test of `pixart serve`
# (crates/pixart-server/tests/browser.rs). Does nothing when chromium is already on PATH.
# Needs root (CI runs as root); exits non-zero when the install fails, and the test then
# reports loudly that it was skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-chromium.sh: not root; cannot apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium: installed $(chromium --version 2>/dev/null || true)"
