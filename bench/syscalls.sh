#!/usr/bin/env bash
# System calls and context switches a pooler makes per transaction, counted by `perf stat` on
# the pooler's process alone (kernel tracepoints: they count, they do not slow the process down
# as strace would). Transaction mode, pool size 10, pgbench -M simple, select-only (-S) as
# bench/instructions.sh, or with SYSCALLS_SCRIPT=tpcb pgbench's default TPC-B-like script
# (seven statements per transaction). Two runs per binary, of T1 and T2 transactions per
# client; the difference leaves the logins and start-up out.
# Usage: bench/syscalls.sh CLIENTS T1 T2 POOLER_BINARY...  (weir builds, or a pgbouncer)
#   e.g. bench/syscalls.sh 50 100 1000 target/release/weir "$(scripts/ensure-pgbouncer.sh)"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
(($# >= 4)) || { sed -n '2,10p' "$0" >&2; exit 2; }
CLIENTS=$1 T1=$2 T2=$3
shift 3
case ${SYSCALLS_SCRIPT:-select} in
    select) SCRIPT=(-S) ;;
    tpcb) SCRIPT=() ;;
    *) echo "syscalls: SYSCALLS_SCRIPT is select or tpcb, not ${SYSCALLS_SCRIPT}" >&2; exit 2 ;;
esac
[[ $(id -u) == 0 ]] || { echo "syscalls: run as root (PostgreSQL runs as 'postgres')" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PGBIN=$("$ROOT/scripts/ensure-deps.sh")
command -v perf >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/weir-syscalls.XXXXXX)
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

EVENTS=raw_syscalls:sys_enter
for call in recvfrom sendto epoll_wait epoll_ctl futex read write; do
    EVENTS+=,syscalls:sys_enter_$call
done
EVENTS+=,context-switches

# counts FILE TRANSACTIONS: one pgbench run of TRANSACTIONS per client, the pooler's counts
# (perf's CSV) in FILE. The pgbench command only times the count: -p counts the pooler alone.
counts() {
    perf stat -x, -e "$EVENTS" -p "$POOLER_PID" -o "$1" -- \
        "$PGBIN/pgbench" -n "${SCRIPT[@]}" -M simple -h 127.0.0.1 -p "$POOLER_PORT" -U bench -c "$CLIENTS" \
        -j 2 -t "$2" bench >"$WORK/pgbench.txt" 2>&1 || true
    grep -q "actually processed: $((CLIENTS * $2))/" "$WORK/pgbench.txt" ||
        { echo "syscalls: pgbench did not complete" >&2; cat "$WORK/pgbench.txt" >&2; exit 1; }
}

for pooler in "$@"; do
    pooler_runner "$pooler"
    "${POOLER_AS[@]}" "$POOLER_BIN" -q "$WORK/pooler.ini" &
    POOLER_PID=$!
    wait_port "$POOLER_PORT" || exit 1
    counts "$WORK/first.csv" "$T1"
    counts "$WORK/second.csv" "$T2"
    stop_pid "$POOLER_PID"
    POOLER_PID=
    echo "$pooler, per ${SYSCALLS_SCRIPT:-select} transaction at $CLIENTS clients:"
    # perf's CSV: value, unit, event, ...; the same events in the same order in both files.
    paste -d, "$WORK/first.csv" "$WORK/second.csv" | awk -F, -v n=$((CLIENTS * (T2 - T1))) '
        $1 ~ /^[0-9]+$/ { split($0, f, ","); nf = NF / 2
            printf "  %-34s %6.2f\n", $3, (f[nf + 1] - $1) / n }'
done
