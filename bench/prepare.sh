#!/usr/bin/env bash
# `make bench`'s builds, all done before anything is measured: weir and weir-operator in
# release and the operator-at-scale test against them (cargo), PgBouncer from its release
# source (scripts/ensure-pgbouncer.sh) and, when the operator section runs, the Kubernetes
# control plane it needs (tests/controlplane/build.sh). Every one is cached, so on a machine
# where they ran before this only checks. On a fresh one the PgBouncer and control-plane
# builds run beside cargo's: its link steps and the control plane's module downloads leave
# cores idle that the other build takes.
#
# Knobs (environment): BENCH_SCENARIOS as bench/run.sh reads it (no `operator`: no control
# plane), CARGO.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARGO=${CARGO:-cargo}
LOGS=$ROOT/target/bench/build
mkdir -p "$LOGS"

started=$(date +%s)
background=()
# name command...: runs in the background, its output in $LOGS/name.log, its seconds after it.
build_beside() {
    local name=$1
    shift
    (
        t0=$(date +%s)
        "$@" >"$LOGS/$name.log" 2>&1
        rc=$?
        echo "seconds=$(($(date +%s) - t0)) rc=$rc" >>"$LOGS/$name.log"
        exit "$rc"
    ) &
    background+=("$name:$!")
}

# Unset BENCH_SCENARIOS is run.sh's default, which has the operator section.
operator=false
[[ " ${BENCH_SCENARIOS:-operator} " == *" operator "* ]] && operator=true

build_beside pgbouncer "$ROOT/scripts/ensure-pgbouncer.sh"
$operator && build_beside controlplane "$ROOT/tests/controlplane/build.sh"

t0=$(date +%s)
(
    cd "$ROOT"
    "$CARGO" build --release -p weir-pooler -p weir-operator --bin weir --bin weir-operator
    if $operator; then
        "$CARGO" test --release --no-run -q -p weir-tests --test operator_scale
    fi
)
summary="cargo $(($(date +%s) - t0)) s"

failed=0
for entry in "${background[@]}"; do
    name=${entry%%:*}
    if wait "${entry#*:}"; then
        summary+=", $name $(sed -n 's/^seconds=\([0-9]*\).*/\1/p' "$LOGS/$name.log") s"
    else
        failed=1
        echo "bench: the $name build failed; the end of $LOGS/$name.log:" >&2
        tail -n 20 "$LOGS/$name.log" >&2
        [[ $name == controlplane ]] &&
            echo "bench: (BENCH_SCENARIOS without \`operator\` runs the rest without a control plane)" >&2
    fi
done
echo "== bench: builds done in $(($(date +%s) - started)) s ($summary)" >&2
exit "$failed"
