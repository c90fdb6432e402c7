#!/usr/bin/env bash
# Fuzzes request planning (cache keys) and the SSE parser with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Installs cargo-fuzz with `cargo install --locked` when missing. cargo-fuzz needs nightly
# compiler flags (sanitizers); on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them, so no
# nightly is needed (CARGO_INCREMENTAL=0 is advisable: the build is large). New inputs go to fuzz/corpus/<target>/ (not committed), seeded from
# fuzz/seeds/<target>/. A crash stops the run with the input in fuzz/artifacts/<target>/:
# copy it to fuzz/regressions/<target>/ so `cargo nextest run --test it fuzz_regressions::` replays
# it on stable from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request_keys sse_parser)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# The same toolchain as the rest of the build: on stable, RUSTC_BOOTSTRAP=1 lets rustc accept
# the -Z sanitizer flags cargo-fuzz passes (checked with rustc 1.95).
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== fuzz: $target for ${seconds}s"
    # One job, bounded by time; inputs capped at 64 KiB (bodies are JSON, streams are text).
    cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
