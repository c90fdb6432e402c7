#!/usr/bin/env bash
# Installs the official `openai` Node SDK into tests/e2e/node/node_modules (from npm, at the
# version package-lock.json pins), which tests/it/openai_sdk.rs drives deja with. Safe to run
# again: an install that matches the lock file is kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/node"

if ! command -v npm >/dev/null 2>&1; then
    echo "setup-node: installing Debian's nodejs and npm"
    if [ "$(id -u)" = 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    fi
fi

installed() {
    node -p 'require("./node_modules/openai/package.json").version' 2>/dev/null || true
}
pinned="$(node -p 'require("./package-lock.json").packages["node_modules/openai"].version')"
if [ "$(installed)" != "$pinned" ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup-node: openai $(installed) for node $(node --version)"
