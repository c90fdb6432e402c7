#!/usr/bin/env bash
# Creates .venv in the repo root with the official `openai` Python SDK, which the end-to-end
# test tests/it/openai_sdk.rs drives deja with. Safe to run again: an existing venv is kept and
# pip only installs what is missing (no index look-up when the requirement is satisfied).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Majors 1 to 3 share the API the test uses (with_raw_response, with_streaming_response);
# releases before 1.55.3 crash with current httpx ("unexpected keyword argument 'proxies'").
OPENAI_REQUIREMENT='openai>=1.55.3,<4'
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    echo "setup-python: creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$OPENAI_REQUIREMENT"
echo "setup-python: .venv has openai $(.venv/bin/python -c 'import openai; print(openai.__version__)')"
