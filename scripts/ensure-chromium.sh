#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; no downloaded browsers).
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "Chromium is missing: the browser tests will fail (apt-get install chromium, or set SKIP_BROWSER_TESTS=1 to skip them)." >&2
fi
