#!/usr/bin/env bash
# Runs the test suite: makes sure .venv and tests/e2e/node have the openai SDKs (for
# tests/it/openai_sdk.rs), then `cargo nextest run` (or `cargo test` where nextest is not
# installed). Arguments are passed on to cargo, e.g. `scripts/test.sh --test it restart::`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tests/it/openai_sdk.rs finds .venv/bin/python by itself (SDK_TEST_PYTHON overrides it). Test
# settings never use the DEJA_ prefix: deja reads DEJA_* variables as config keys (those that
# name no key are ignored with a warning), so a stray one could change what a test runs.
bash scripts/setup-python.sh
# The same test with the official Node SDK, in tests/e2e/node/node_modules (from npm).
bash scripts/setup-node.sh
# tests/it/dashboard_browser.rs drives Debian's headless chromium (installed here when missing).
bash scripts/setup-chromium.sh

# tests/it/replicas/ starts real redis-server processes (Debian's redis-server, Redis 7).
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
    fi
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@"
else
    cargo test --no-fail-fast "$@"
fi
