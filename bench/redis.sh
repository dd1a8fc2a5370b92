#!/usr/bin/env bash
# `make bench`, Redis part: redis-benchmark against redis-server directly, through twemproxy
# (Debian's nutcracker) and through weir's RESP listener, in turn (direct, twemproxy, weir,
# direct, ...), then a markdown report of medians and ratios (bench/redis_report.py) printed
# and kept under target/bench/.
#
# Only commands twemproxy proxies are run (SET, GET, INCR, LPUSH, LPOP, MSET). weir keeps
# `shared_connections` (2) connections to Redis and twemproxy gets the same number
# (`server_connections`), so both multiplex every client over two server connections.
#
# Knobs (environment): BENCH_REDIS_REQUESTS per command and run (50000), BENCH_ROUNDS (3),
# BENCH_REDIS_CLIENTS ("50 500"), BENCH_REDIS_PIPELINES ("1 16"), BENCH_REDIS_TESTS
# ("set,get,mset"; twemproxy also proxies incr,lpush,lpop), BENCH_WEIR_THREADS (weir's
# worker_threads, as for bench/run.sh; unset: its default, one per CPU), WEIR_BIN.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQUESTS=${BENCH_REDIS_REQUESTS:-50000}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=${BENCH_REDIS_CLIENTS:-50 500}
PIPELINES=${BENCH_REDIS_PIPELINES:-1 16}
TESTS=${BENCH_REDIS_TESTS:-set,get,mset}
SHARED_CONNECTIONS=2
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
TARGETS=(direct twemproxy weir)

[[ -x $WEIR ]] || { echo "bench: $WEIR not built (make release)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
"$ROOT/scripts/ensure-deps.sh" >/dev/null
# twemproxy is the bench's only, so it is installed here and not by make test.
if ! command -v nutcracker >/dev/null; then
    echo "bench: installing nutcracker (twemproxy) from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nutcracker >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nutcracker >/dev/null; }
fi
NUTCRACKER=$(command -v nutcracker || echo /usr/sbin/nutcracker)

# Every client is a file descriptor in redis-benchmark and each server.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$ROOT/target/bench/redis-$STAMP
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /tmp/weir-bench-redis.XXXXXX)

REDIS_PID=
TWEM_PID=
WEIR_PID=
cleanup() {
    stop_pid "$WEIR_PID"
    stop_pid "$TWEM_PID"
    stop_pid "$REDIS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT=$(free_port)
TWEM_PORT=$(free_port)
WEIR_PORT=$(free_port)
PG_PORT=$(free_port)

BUSY_START=$(machine_busy_ticks)
OURS_START=$(proc_ticks $$ children)
STARTED=$(date +%s)
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cores=$(nproc)"
    echo "model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "kernel=$(uname -r)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "redis=$(redis-server --version)"
    echo "twemproxy=$("$NUTCRACKER" --version 2>&1 | head -1)"
    echo "weir=$(weir_build "$WEIR" "$ROOT")"
    echo "requests=$REQUESTS"
    echo "rounds=$ROUNDS"
    echo "shared_connections=$SHARED_CONNECTIONS"
    echo "weir_threads=$(weir_threads)"
} >"$OUT/env.txt"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --maxclients 10000 --protected-mode no --dir "$WORK" >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_port "$REDIS_PORT"

cat >"$WORK/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$TWEM_PORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  server_connections: $SHARED_CONNECTIONS
  servers:
    - 127.0.0.1:$REDIS_PORT:1
YML
"$NUTCRACKER" -c "$WORK/nutcracker.yml" -o "$OUT/twemproxy.log" &
TWEM_PID=$!
wait_port "$TWEM_PORT"

# The PostgreSQL side listens too (weir always has it), with no database behind it.
cat >"$WORK/weir.ini" <<INI
[databases]
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PG_PORT
unix_socket_dir =
auth_type = any
[redis]
listen_port = $WEIR_PORT
server = 127.0.0.1:$REDIS_PORT
shared_connections = $SHARED_CONNECTIONS
INI
# twemproxy has one thread whatever it is told; weir's count is the one setting they differ in.
[[ -n ${BENCH_WEIR_THREADS:-} ]] && sed -i "/^\[pgbouncer\]/a worker_threads = $BENCH_WEIR_THREADS" "$WORK/weir.ini"
"$WEIR" -q "$WORK/weir.ini" 2>>"$OUT/weir.stderr" &
WEIR_PID=$!
wait_port "$WEIR_PORT"
echo "== redis-server on $REDIS_PORT, twemproxy on $TWEM_PORT, weir on $WEIR_PORT ($SHARED_CONNECTIONS server connections each)" >&2

printf 'clients\tpipeline\ttarget\tround\trc\tproxy_cpu_ticks\trequests\tfile\n' >"$OUT/runs.tsv"
# One redis-benchmark run of every test; round 0 is the warm-up, left out of the medians.
run_one() { # clients pipeline target round
    local clients=$1 pipeline=$2 target=$3 round=$4 port pid="" before=0 after=0 rc file
    case $target in
        direct) port=$REDIS_PORT ;;
        twemproxy) port=$TWEM_PORT pid=$TWEM_PID ;;
        weir) port=$WEIR_PORT pid=$WEIR_PID ;;
    esac
    local requests=$REQUESTS
    ((round == 0)) && requests=$((REQUESTS / 4))
    file=raw/c$clients-P$pipeline-$target-r$round.csv
    [[ -n $pid ]] && before=$(proc_ticks "$pid")
    set +e
    timeout --foreground -k 10 600 redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" \
        -n "$requests" -P "$pipeline" -t "$TESTS" --csv >"$OUT/$file" 2>"$OUT/$file.stderr"
    rc=$?
    set -e
    [[ -n $pid ]] && after=$(proc_ticks "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$clients" "$pipeline" "$target" "$round" "$rc" \
        $((after - before)) "$requests" "$file" >>"$OUT/runs.tsv"
    printf '   c=%-4s P=%-3s %-9s %s  %s\n' "$clients" "$pipeline" "$target" \
        "$([[ $round == 0 ]] && echo warm-up || echo "round $round")" \
        "$([[ $rc == 0 ]] && awk -F'"' 'NR == 3 { print $4 " GET/s" }' "$OUT/$file" || echo "FAILED (exit $rc)")" >&2
    for p in "$REDIS_PID" "$TWEM_PID" "$WEIR_PID"; do
        kill -0 "$p" 2>/dev/null || { echo "bench: a server exited (pid $p); see $OUT" >&2; exit 1; }
    done
}

for clients in $CLIENTS; do
    for pipeline in $PIPELINES; do
        echo "== $clients clients, pipeline $pipeline: redis-benchmark -t $TESTS" >&2
        for round in $(seq 0 "$ROUNDS"); do
            for target in "${TARGETS[@]}"; do
                run_one "$clients" "$pipeline" "$target" "$round"
            done
        done
    done
done

ours=$(($(proc_ticks $$ children) - OURS_START + $(proc_ticks "$REDIS_PID") + $(proc_ticks "$TWEM_PID") + $(proc_ticks "$WEIR_PID")))
{
    echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "elapsed_seconds=$(($(date +%s) - STARTED))"
    echo "busy_ticks=$(($(machine_busy_ticks) - BUSY_START))"
    echo "own_ticks=$ours"
    echo "clk_tck=$(getconf CLK_TCK)"
} >>"$OUT/env.txt"
python3 "$ROOT/bench/redis_report.py" "$OUT" >"$OUT/report.md"
cp "$OUT/report.md" "$ROOT/target/bench/redis-latest.md"
cat "$OUT/report.md"
echo >&2
echo "bench: Redis report in $OUT/report.md (raw redis-benchmark output in $OUT/raw)" >&2
