#!/usr/bin/env bash
# Instructions a pooler runs per select-only transaction (valgrind callgrind's Ir, user space), for
# comparing builds on a busy machine: unlike CPU time, instruction counts do not move with
# what else the cores are doing. Transaction mode, pool size 10, pgbench -S -M simple. Two runs
# per binary, of T1 and T2 transactions per client; (Ir2 - Ir1) / (tx2 - tx1) leaves the
# logins and start-up out.
# Usage: bench/instructions.sh CLIENTS T1 T2 POOLER_BINARY...  (weir builds, or a pgbouncer)
#   e.g. bench/instructions.sh 500 4 40 /tmp/weir-before target/release/weir
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
(($# >= 4)) || { sed -n '2,8p' "$0" >&2; exit 2; }
CLIENTS=$1 T1=$2 T2=$3
shift 3
[[ $(id -u) == 0 ]] || { echo "instructions: run as root (PostgreSQL runs as 'postgres')" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PGBIN=$("$ROOT/scripts/ensure-deps.sh")
command -v valgrind >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/weir-instructions.XXXXXX)
# World-writable: PgBouncer, run as the postgres user, writes its profile here.
chmod 777 "$WORK"
POOLER_PID=
cleanup() {
    stop_pid "$POOLER_PID"
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

one_pooler_setup "$CLIENTS"

instructions() { # binary, transactions per client: prints the pooler's total Ir
    pooler_runner "$1"
    rm -f "$WORK/callgrind.out"
    # setpriv itself, not the as_postgres function: a function would run in a subshell, and
    # the SIGINT below would reach that instead of valgrind.
    "${POOLER_AS[@]}" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$POOLER_BIN" -q "$WORK/pooler.ini" 2>"$WORK/valgrind.log" &
    POOLER_PID=$!
    # Up to 60 s: a pooler starts slowly under valgrind.
    wait_port "$POOLER_PORT" 600 || exit 1
    "$PGBIN/pgbench" -n -S -M simple -h 127.0.0.1 -p "$POOLER_PORT" -U bench -c "$CLIENTS" -j 2 \
        -t "$2" bench >"$WORK/pgbench.txt" 2>&1 || true
    grep -q "actually processed: $((CLIENTS * $2))/" "$WORK/pgbench.txt" ||
        { echo "instructions: pgbench did not complete" >&2; cat "$WORK/pgbench.txt" >&2; exit 1; }
    # SIGINT lets valgrind write its output file on the way out.
    kill -INT "$POOLER_PID"
    wait "$POOLER_PID" 2>/dev/null || true
    POOLER_PID=
    awk '/^summary:/ { print $2; exit }' "$WORK/callgrind.out"
}

for weir in "$@"; do
    first=$(instructions "$weir" "$T1")
    second=$(instructions "$weir" "$T2")
    echo "$weir: $(((second - first) / (CLIENTS * (T2 - T1)))) instructions per transaction at $CLIENTS clients"
done
