#!/usr/bin/env bash
# Runs the protocol decoder fuzz target for N seconds (default 60). Installs cargo-fuzz from
# crates.io when missing; uses a nightly toolchain when there is one, otherwise lets the stable
# compiler accept the sanitizer flags cargo-fuzz needs.
set -euo pipefail
SECONDS_TO_RUN=${1:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/pooler/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
TOOLCHAIN=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
mkdir -p corpus/protocol_decode
cargo "${TOOLCHAIN[@]}" fuzz run protocol_decode corpus/protocol_decode -- \
    -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 2>&1 | tail -n 15
