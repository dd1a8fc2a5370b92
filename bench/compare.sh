#!/usr/bin/env bash
# Two weir builds side by side: select-only TPS and each build's CPU per transaction (user and
# system, from /proc/PID/stat), runs alternated A, B, A, B, ... on one PostgreSQL, so that
# what else the machine does falls on both alike. Transaction mode, pool size 10, SCRAM.
# Usage: bench/compare.sh CLIENTS SECONDS ROUNDS WEIR_A WEIR_B
#   e.g. bench/compare.sh 50 5 6 /tmp/weir-before target/release/weir
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
(($# == 5)) || { sed -n '2,6p' "$0" >&2; exit 2; }
CLIENTS=$1 SECONDS_PER_RUN=$2 ROUNDS=$3
BUILDS=("$4" "$5")
[[ $(id -u) == 0 ]] || { echo "compare: run as root (PostgreSQL runs as 'postgres')" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PGBIN=$("$ROOT/scripts/ensure-deps.sh")
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/weir-compare.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGPORT=$(free_port)
PGPASSWORD=compare-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PGPASSWORD
start_postgres "$PGPORT" $((CLIENTS + 100)) 10 "$PGPASSWORD"
write_userlist "$PGPORT"
PORTS=()
for i in 0 1; do
    PORTS[i]=$(free_port)
    pooler_ini "${PORTS[i]}" "$PGPORT" 10 $((CLIENTS + 100)) >"$WORK/weir$i.ini"
    "${BUILDS[i]}" -q "$WORK/weir$i.ini" &
    PIDS[i]=$!
    wait_port "${PORTS[i]}"
done

# run INDEX: one pgbench run against build INDEX; prints "tps user_ticks system_ticks".
run() {
    local port=${PORTS[$1]} pid=${PIDS[$1]} user0 all0 user1 all1 tps
    user0=$(proc_ticks "$pid" user) all0=$(proc_ticks "$pid")
    tps=$("$PGBIN/pgbench" -n -S -M simple -h 127.0.0.1 -p "$port" -U bench -c "$CLIENTS" -j 2 \
        -T "$SECONDS_PER_RUN" bench 2>&1 | awk '/^tps = / { print $3 }')
    user1=$(proc_ticks "$pid" user) all1=$(proc_ticks "$pid")
    [[ -n $tps ]] || { echo "compare: pgbench failed against ${BUILDS[$1]}" >&2; exit 1; }
    echo "$tps $((user1 - user0)) $((all1 - all0 - user1 + user0))"
}

run 0 >/dev/null
run 1 >/dev/null
for round in $(seq "$ROUNDS"); do
    for i in 0 1; do
        echo "$round $i $(run "$i")"
    done
done | python3 -c '
import os, statistics, sys
tick = os.sysconf("SC_CLK_TCK")
secs = float(sys.argv[1])
builds = sys.argv[2:]
rows = {0: [], 1: []}
for line in sys.stdin:
    _, i, tps, user, system = line.split()
    tx = float(tps) * secs
    rows[int(i)].append((float(tps), int(user) / tick / tx * 1e6, int(system) / tick / tx * 1e6))
print("{:<40} {:>9} {:>11} {:>13}".format("build", "TPS", "user µs/tx", "system µs/tx"))
med = {}
for i, b in enumerate(builds):
    m = [statistics.median(c) for c in zip(*rows[i])]
    med[i] = m
    print(f"{b:<40} {m[0]:>9,.0f} {m[1]:>11.2f} {m[2]:>13.2f}")
ratio = [med[1][k] / med[0][k] for k in range(3)]
print("{:<40} {:>8.3f}x {:>10.3f}x {:>12.3f}x".format("B/A (medians)", *ratio))
' "$SECONDS_PER_RUN" "${BUILDS[@]}"
