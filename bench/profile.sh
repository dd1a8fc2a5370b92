#!/usr/bin/env bash
# `make profile`: where weir spends its CPU on the hot path. Starts a throwaway PostgreSQL and
# weir (transaction mode, pool size 10), drives it with pgbench select-only at each client
# count, samples weir with `perf record -g` while the load is steady, and prints the top
# functions by self time and by inclusive time. Falls back to valgrind's callgrind (on a short,
# fixed number of transactions) where perf cannot sample.
#
# Knobs (environment): PROFILE_CLIENTS ("50 500"), PROFILE_SECONDS sampled per run (8),
# PROFILE_TOP functions listed (25), BENCH_SCALE (5), BENCH_POOL_SIZE (10), WEIR_BIN.
# Output: target/bench/profile-<stamp>/ (perf.data, full reports) besides what is printed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${PROFILE_CLIENTS:-50 500}
SECONDS_SAMPLED=${PROFILE_SECONDS:-8}
TOP=${PROFILE_TOP:-25}
SCALE=${BENCH_SCALE:-5}
POOL_SIZE=${BENCH_POOL_SIZE:-10}
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}

[[ $(id -u) == 0 ]] || { echo "profile: run as root (PostgreSQL runs as 'postgres')" >&2; exit 1; }
[[ -x $WEIR ]] || { echo "profile: $WEIR not built (make release)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PGBIN=$("$ROOT/scripts/ensure-deps.sh")

# perf must be able to sample (software cpu-clock works in VMs without hardware counters).
TOOL=perf
if ! command -v perf >/dev/null || ! perf record -q -e cpu-clock -o /dev/null true >/dev/null 2>&1; then
    if ! command -v perf >/dev/null; then
        echo "profile: installing linux-perf" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || true
    fi
    if ! perf record -q -e cpu-clock -o /dev/null true >/dev/null 2>&1; then
        TOOL=callgrind
        command -v valgrind >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    fi
fi

ulimit -n "$(ulimit -Hn)"
OUT=$ROOT/target/bench/profile-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/weir-profile.XXXXXX)
chmod 755 "$WORK"
WEIR_PID=
LOAD_PID=
cleanup() {
    stop_pid "$LOAD_PID"
    stop_pid "$WEIR_PID"
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGPORT=$(free_port)
WEIR_PORT=$(free_port)
PGPASSWORD=profile-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PGPASSWORD
MAX_CLIENTS=0
for c in $CLIENTS; do ((c > MAX_CLIENTS)) && MAX_CLIENTS=$c; done

echo "== PostgreSQL on 127.0.0.1:$PGPORT, pgbench -i -s $SCALE" >&2
start_postgres "$PGPORT" $((MAX_CLIENTS + 100)) "$SCALE" "$PGPASSWORD"
write_userlist "$PGPORT"
pooler_ini "$WEIR_PORT" "$PGPORT" "$POOL_SIZE" $((MAX_CLIENTS + 100)) >"$WORK/weir.ini"

pgbench_weir() { # clients, then pgbench's run-length arguments
    local clients=$1 jobs=2
    shift
    ((clients < jobs)) && jobs=$clients
    "$PGBIN/pgbench" -n -S -M simple -h 127.0.0.1 -p "$WEIR_PORT" -U bench -c "$clients" \
        -j "$jobs" "$@" bench
}

echo "== profiler: $TOOL; $(weir_build "$WEIR" "$ROOT")" >&2
for clients in $CLIENTS; do
    echo
    echo "## weir, pgbench select-only, $clients clients, pool size $POOL_SIZE ($TOOL)"
    if [[ $TOOL == perf ]]; then
        "$WEIR" -q "$WORK/weir.ini" &
        WEIR_PID=$!
        wait_port "$WEIR_PORT"
        # Long enough for the logins (about 300 a second) and the sampled window.
        connect=$(((clients + 99) / 100))
        pgbench_weir "$clients" -T $((connect + SECONDS_SAMPLED + 2)) >"$OUT/pgbench-c$clients.txt" 2>&1 &
        LOAD_PID=$!
        sleep "$connect"
        # DWARF unwinding: the release build keeps no frame pointers but does keep line tables.
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$WEIR_PID" \
            -o "$OUT/perf-c$clients.data" -- sleep "$SECONDS_SAMPLED" 2>"$OUT/perf-record-c$clients.log"
        wait "$LOAD_PID" || true
        LOAD_PID=
        stop_pid "$WEIR_PID"
        WEIR_PID=
        grep -E '^tps|^latency average' "$OUT/pgbench-c$clients.txt" | sed 's/^/    /'
        perf report -i "$OUT/perf-c$clients.data" --no-children --sort symbol --stdio \
            >"$OUT/self-c$clients.txt" 2>/dev/null
        perf report -i "$OUT/perf-c$clients.data" --children --sort symbol --stdio -g none \
            >"$OUT/inclusive-c$clients.txt" 2>/dev/null
        perf report -i "$OUT/perf-c$clients.data" --no-children --sort dso --stdio \
            >"$OUT/dso-c$clients.txt" 2>/dev/null
        section() { # title, then the lines
            echo
            echo "### $1"
            echo '```'
            cut -c1-150 | sed -E 's/[ -]+$//'
            echo '```'
        }
        grep -E '^ +[0-9.]+%' "$OUT/dso-c$clients.txt" | head -n 6 | section "CPU by object (kernel = system calls and the loopback TCP path)"
        grep -E '^ +[0-9.]+%' "$OUT/self-c$clients.txt" | head -n "$TOP" | section "top $TOP functions by self time"
        grep -E '^ +[0-9.]+% +[0-9.]+% +\[k\] __x64_sys_' "$OUT/inclusive-c$clients.txt" | head -n 8 |
            section "system calls, inclusive (what each costs in the kernel, wake-ups included)"
        # weir's own frames only: tokio's generic frames sit above everything and say nothing.
        grep -E '^ +[0-9.]+% .*weir_pooler::' "$OUT/inclusive-c$clients.txt" | grep -v '(inlined)' |
            head -n "$TOP" | section "weir functions by inclusive time (self + callees)"
    else
        # callgrind slows weir some fifty-fold: a fixed, small number of transactions instead.
        valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind-c$clients.out" \
            "$WEIR" -q "$WORK/weir.ini" 2>"$OUT/valgrind-c$clients.log" &
        WEIR_PID=$!
        wait_port "$WEIR_PORT" 300 || exit 1
        pgbench_weir "$clients" -t $((20000 / clients + 1)) >"$OUT/pgbench-c$clients.txt" 2>&1 || true
        # SIGINT lets valgrind write its output file on the way out.
        kill -INT "$WEIR_PID" 2>/dev/null || true
        wait "$WEIR_PID" 2>/dev/null || true
        WEIR_PID=
        echo '```'
        callgrind_annotate "$OUT/callgrind-c$clients.out" 2>/dev/null | head -n $((TOP + 20))
        echo '```'
    fi
done
echo
echo "profile: full reports in $OUT" >&2
