#!/usr/bin/env bash
# Installs Debian's chromium for tests/it/dashboard_browser.rs (a headless browser against the
# dashboard page) when it is missing. Needs root (CI runs as root) and the Debian mirrors.
# If it cannot be installed, the browser test skips with a loud message rather than failing
# the whole suite on a machine without a package manager.
set -uo pipefail
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-chromium: not root or no apt-get; tests/it/dashboard_browser.rs will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; then
    echo "setup-chromium: installing chromium failed; tests/it/dashboard_browser.rs will skip" >&2
fi
exit 0
