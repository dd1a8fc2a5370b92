#!/usr/bin/env bash
# `make bench`: PostgreSQL, PgBouncer and weir side by side on this machine, pgbench against
# each in turn (direct, PgBouncer, weir, direct, ...), then a markdown report of medians and
# ratios (bench/report.py) printed and kept under target/bench/.
#
# Knobs (environment): BENCH_SECONDS per measured run (3), BENCH_ROUNDS (3),
# BENCH_WARMUP_SECONDS (1), BENCH_CLIENTS for select-only ("1 50 500 2000"),
# BENCH_MODE_CLIENTS for `-M extended` and `-M prepared` ("50 500"), BENCH_TPCB_CLIENTS
# ("50 500"), BENCH_TLS_CLIENTS for TLS select-only ("500"), BENCH_SAMPLING_RATE of pgbench's
# per-transaction log for latency percentiles (0.1), BENCH_SCALE pgbench scale factor (10),
# BENCH_POOL_SIZE (10), BENCH_IDLE_CLIENTS (10000), BENCH_SCENARIOS ("select extended prepared
# tpcb storm tls idle operator"), BENCH_WEIR_THREADS (weir's worker_threads; unset: its default,
# one per CPU), WEIR_BIN; PGBOUNCER_* as scripts/ensure-pgbouncer.sh reads them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP_SECONDS=${BENCH_WARMUP_SECONDS:-1}
SELECT_CLIENTS=${BENCH_CLIENTS:-1 50 500 2000}
MODE_CLIENTS=${BENCH_MODE_CLIENTS:-50 500}
TPCB_CLIENTS=${BENCH_TPCB_CLIENTS:-50 500}
TLS_CLIENTS=${BENCH_TLS_CLIENTS:-500}
SAMPLING_RATE=${BENCH_SAMPLING_RATE:-0.1}
SCALE=${BENCH_SCALE:-10}
POOL_SIZE=${BENCH_POOL_SIZE:-10}
IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-10000}
SCENARIOS=${BENCH_SCENARIOS:-select extended prepared tpcb storm tls idle operator}
MAX_CLIENT_CONN=12000
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
TARGETS=(direct pgbouncer weir)

[[ $(id -u) == 0 ]] || { echo "bench: run as root (PostgreSQL and PgBouncer run as 'postgres')" >&2; exit 1; }
[[ -x $WEIR ]] || { echo "bench: $WEIR not built (make release)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PGBIN=$("$ROOT/scripts/ensure-deps.sh")
# PgBouncer 1.25.2 built from source (cached); Debian's older package only as a labelled last resort.
PGBOUNCER=$("$ROOT/scripts/ensure-pgbouncer.sh" | tail -1)
PGBOUNCER_RUNNING=$("$PGBOUNCER" --version | head -1)

# Every client is a file descriptor in pgbench, the poolers, PostgreSQL and the idle-client
# script; take all the hard limit allows (raising it first where this is permitted).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
NOTES=()
if [[ $PGBOUNCER_RUNNING != "PgBouncer ${PGBOUNCER_VERSION:-1.25.2}" ]]; then
    NOTES+=("PgBouncer ${PGBOUNCER_VERSION:-1.25.2} could not be built: the anchor is Debian's $PGBOUNCER_RUNNING, which is older")
fi
if ((FD_LIMIT < IDLE_CLIENTS + 200)); then
    NOTES+=("open-file limit $FD_LIMIT: idle clients lowered from $IDLE_CLIENTS to $((FD_LIMIT - 200))")
    IDLE_CLIENTS=$((FD_LIMIT - 200))
fi
MAX_SELECT_CLIENTS=0
for c in $SELECT_CLIENTS $MODE_CLIENTS $TPCB_CLIENTS 50 $([[ " $SCENARIOS " == *" tls "* ]] && echo "$TLS_CLIENTS"); do
    ((c > MAX_SELECT_CLIENTS)) && MAX_SELECT_CLIENTS=$c
done

# The pgbench cells (scenario × client count) this run visits, for the time estimate.
CELLS=()
for s in $SCENARIOS; do
    case $s in
        select) CELLS+=($SELECT_CLIENTS) ;;
        extended | prepared) CELLS+=($MODE_CLIENTS) ;;
        tpcb) CELLS+=($TPCB_CLIENTS) ;;
        storm) CELLS+=(50) ;;
        tls) CELLS+=(50 $TLS_CLIENTS) ;;
    esac
done
# Per cell and target: the warm-up and the rounds, each run with run_one's first guess of the
# login allowance and half a second of start and stop; plus setup, idle and operator sections.
estimate=30
for c in "${CELLS[@]}"; do
    estimate=$((estimate + 2 * ((ROUNDS + 1) * ((c + 249) / 250) + ROUNDS * SECONDS_PER_RUN + WARMUP_SECONDS)))
    estimate=$((estimate + (ROUNDS + 1) * ((c + 124) / 125) + ROUNDS * SECONDS_PER_RUN + WARMUP_SECONDS))
    estimate=$((estimate + 3 * (ROUNDS + 1) / 2))
done
[[ " $SCENARIOS " == *" idle "* ]] && estimate=$((estimate + 90))
[[ " $SCENARIOS " == *" operator "* ]] && estimate=$((estimate + 180))
echo "== bench: ${#CELLS[@]} pgbench cells × 3 targets × (1 + $ROUNDS) runs; estimated at most $((estimate / 60)) min $((estimate % 60)) s" >&2

STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$ROOT/target/bench/$STAMP
mkdir -p "$OUT/raw"
WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
chmod 755 "$WORK"

PGB_PID=
WEIR_PID=
cleanup() {
    stop_pid "$PGB_PID"
    stop_pid "$WEIR_PID"
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGPORT=$(free_port)
PGB_PORT=$(free_port)
WEIR_PORT=$(free_port)
PASSWORD=bench-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PGPASSWORD=$PASSWORD

# The machine's busy CPU and our own, now and at the end: the difference is what other work
# took from the benchmark, which the report states.
BUSY_START=$(machine_busy_ticks)
OURS_START=$(proc_ticks $$ children)
DETACHED_TICKS=0
STARTED=$(date +%s)
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cores=$(nproc)"
    echo "model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel=$(uname -r)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgres=$("$PGBIN/postgres" --version)"
    echo "pgbench=$("$PGBIN/pgbench" --version)"
    echo "pgbouncer=$PGBOUNCER_RUNNING ($PGBOUNCER)"
    echo "weir=$(weir_build "$WEIR" "$ROOT")"
    echo "seconds=$SECONDS_PER_RUN"
    echo "rounds=$ROUNDS"
    echo "warmup_seconds=$WARMUP_SECONDS"
    echo "scale=$SCALE"
    echo "weir_threads=$(weir_threads)"
    echo "pool_size=$POOL_SIZE"
    echo "max_client_conn=$MAX_CLIENT_CONN"
    echo "max_connections=$((MAX_SELECT_CLIENTS + 100))"
    echo "fd_limit=$FD_LIMIT"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "sampling_rate=$SAMPLING_RATE"
} >"$OUT/env.txt"

echo "== PostgreSQL on 127.0.0.1:$PGPORT (max_connections $((MAX_SELECT_CLIENTS + 100))), pgbench -i -s $SCALE" >&2
make_tls_certificate
start_postgres "$PGPORT" $((MAX_SELECT_CLIENTS + 100)) "$SCALE" "$PASSWORD"
write_userlist "$PGPORT"
pooler_ini "$PGB_PORT" "$PGPORT" "$POOL_SIZE" "$MAX_CLIENT_CONN" >"$WORK/pgbouncer.ini"
pooler_ini "$WEIR_PORT" "$PGPORT" "$POOL_SIZE" "$MAX_CLIENT_CONN" >"$WORK/weir.ini"
# PgBouncer has one thread whatever it is told; weir's count is the one setting they differ in.
[[ -n ${BENCH_WEIR_THREADS:-} ]] && echo "worker_threads = $BENCH_WEIR_THREADS" >>"$WORK/weir.ini"
chmod 644 "$WORK"/*.ini

start_pgbouncer() {
    # PgBouncer refuses to run as root. setpriv execs, so $! is PgBouncer itself (through the
    # as_postgres function it would be a subshell, and PgBouncer would outlive its kill).
    setpriv --reuid=postgres --regid=postgres --init-groups \
        "$PGBOUNCER" -q "$WORK/pgbouncer.ini" 2>>"$OUT/pgbouncer.stderr" &
    PGB_PID=$!
    wait_port "$PGB_PORT"
}
start_weir() {
    "$WEIR" -q "$WORK/weir.ini" 2>>"$OUT/weir.stderr" &
    WEIR_PID=$!
    wait_port "$WEIR_PORT"
}
# A pooler that died is noted in the report and started again, so that one crash costs its
# own runs only.
ensure_poolers() { # context for the note
    if ! kill -0 "$PGB_PID" 2>/dev/null; then
        echo "pgbouncer exited during $1; restarted" >>"$OUT/restarts.txt"
        start_pgbouncer
    fi
    if ! kill -0 "$WEIR_PID" 2>/dev/null; then
        echo "weir exited during $1; restarted" >>"$OUT/restarts.txt"
        start_weir
    fi
}
echo "== PgBouncer on 127.0.0.1:$PGB_PORT, weir on 127.0.0.1:$WEIR_PORT (transaction, pool $POOL_SIZE)" >&2
start_pgbouncer
start_weir

printf 'scenario\tclients\ttarget\tround\trc\tpooler_cpu_ticks\tpooler_user_ticks\tclient_ticks\tfile\tlatency_log\tcpu_samples\tsteady_from\tsteady_to\n' >"$OUT/runs.tsv"
declare -A CONNECT_ALLOWANCE=()
# Every target serves TLS; plain scenarios turn it off and the TLS ones require it.
SSLMODE=disable
# One pgbench run; round 0 is the warm-up and is kept out of the medians by report.py.
run_one() { # scenario clients target round seconds pgbench-args...
    local scenario=$1 clients=$2 target=$3 round=$4 seconds=$5
    shift 5
    local port pid="" before=0 after=0 user_before=0 user_after=0 client_before client_after rc jobs=2 file
    case $target in
        direct) port=$PGPORT ;;
        pgbouncer) port=$PGB_PORT pid=$PGB_PID ;;
        weir) port=$WEIR_PORT pid=$WEIR_PID ;;
    esac
    ((clients < jobs)) && jobs=$clients
    # pgbench's -T clock runs while it opens its connections (a SCRAM exchange each, and a
    # backend fork when direct) and its tps leaves that time out, so -T gets an allowance on
    # top: first a guess (~250 logins/s through a pooler, ~125 direct), then 1.5× what the
    # last run of this target and client count took.
    local key=$target-$clients allowance attempt ms sampler samples=raw/$scenario-c$clients-$target-r$round.cpu.tsv
    allowance=${CONNECT_ALLOWANCE[$key]:-}
    if [[ -z $allowance ]]; then
        allowance=$(((clients + 249) / 250))
        [[ $target == direct ]] && allowance=$(((clients + 124) / 125))
    fi
    file=raw/$scenario-c$clients-$target-r$round.txt
    # Measured rounds sample transactions into per-thread logs for the latency percentiles.
    local log=raw/$scenario-c$clients-$target-r$round.log logging=()
    # A storm commits a few hundred transactions a second: each one is logged.
    local rate=$SAMPLING_RATE
    [[ " $* " == *" -C "* ]] && rate=1
    ((round > 0)) && logging=(--log --sampling-rate="$rate" --log-prefix="$WORK/txlog")
    for attempt in 1 2; do
        rm -f "$WORK"/txlog.*
        # Measured rounds sample the machine's and the pooler's CPU for the steady window.
        sampler=
        if ((round > 0)); then
            rm -f "$OUT/$samples"
            python3 "$ROOT/bench/cpu_sampler.py" --pid "${pid:-0}" --out "$OUT/$samples" &
            sampler=$!
            # Its first sample is taken as its file appears: before pgbench's first login.
            for _ in $(seq 200); do [[ -e $OUT/$samples ]] && break; sleep 0.01; done
        fi
        [[ -n $pid ]] && before=$(proc_ticks "$pid") user_before=$(proc_ticks "$pid" user)
        # pgbench's own CPU: what this shell's reaped children used, across the run.
        client_before=$(proc_ticks $$ children)
        set +e
        # --foreground keeps pgbench in our process group, so that Ctrl-C reaches it at once.
        PGSSLMODE=$SSLMODE timeout --foreground -k 10 $((seconds + allowance + 300)) "$PGBIN/pgbench" -n \
            -h 127.0.0.1 -p "$port" -U bench -c "$clients" -j "$jobs" -T $((seconds + allowance)) \
            "${logging[@]}" "$@" bench >"$OUT/$file" 2>&1
        rc=$?
        set -e
        client_after=$(proc_ticks $$ children)
        [[ -n $pid ]] && after=$(proc_ticks "$pid") user_after=$(proc_ticks "$pid" user)
        if [[ -n $sampler ]]; then
            kill -TERM "$sampler" 2>/dev/null || true
            wait "$sampler" 2>/dev/null || true
        fi
        # On a busy machine the logins can outlast the guess: once more, with room to spare.
        if ((attempt == 1 && rc == 0)) &&
            grep -qx 'number of transactions actually processed: 0' "$OUT/$file"; then
            allowance=$((allowance * 4))
            echo "   (logins outlasted the run; again with -T $((seconds + allowance)))" >&2
            continue
        fi
        break
    done
    # One gzipped file per run: pgbench writes one per thread. The steady window runs from
    # the moment every thread has completed a transaction (its clients are all logged in) to
    # the last completion of the thread that finished first.
    local from="" to=""
    if ((${#logging[@]})) && compgen -G "$WORK/txlog.*" >/dev/null; then
        read -r from to < <(steady_window "$WORK"/txlog.*) || true
        cat "$WORK"/txlog.* | gzip -1 >"$OUT/$log.gz"
        rm -f "$WORK"/txlog.*
        log=$log.gz
    else
        log=
    fi
    ms=$(sed -n 's/^initial connection time = \([0-9]*\).*/\1/p' "$OUT/$file")
    [[ -n $ms ]] && CONNECT_ALLOWANCE[$key]=$((ms * 3 / 2000 + 1))
    [[ -s $OUT/$samples ]] || samples=
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$clients" "$target" "$round" "$rc" \
        $((after - before)) $((user_after - user_before)) $((client_after - client_before)) "$file" "$log" \
        "$samples" "$from" "$to" >>"$OUT/runs.tsv"
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$OUT/$file")
    printf '   %-9s c=%-5s %-9s %s  %s\n' "$scenario" "$clients" "$target" \
        "$([[ $round == 0 ]] && echo warm-up || echo "round $round")" \
        "$([[ $rc == 0 ]] && echo "${tps:-?} tps" || echo "FAILED (exit $rc)")" >&2
    ensure_poolers "$scenario c=$clients"
}
# Warm-up, then ROUNDS rounds, each round visiting every target in the same order.
scenario() { # name clients pgbench-args...
    local name=$1 clients=$2 round target seconds
    shift 2
    echo "== $name, $clients clients: pgbench $*" >&2
    for round in $(seq 0 "$ROUNDS"); do
        seconds=$SECONDS_PER_RUN
        ((round == 0)) && seconds=$WARMUP_SECONDS
        for target in "${TARGETS[@]}"; do
            run_one "$name" "$clients" "$target" "$round" "$seconds" "$@"
        done
    done
}

for s in $SCENARIOS; do
    case $s in
        select) for c in $SELECT_CLIENTS; do scenario select "$c" -S -M simple; done ;;
        extended) for c in $MODE_CLIENTS; do scenario extended "$c" -S -M extended; done ;;
        prepared) for c in $MODE_CLIENTS; do scenario prepared "$c" -S -M prepared; done ;;
        tpcb) for c in $TPCB_CLIENTS; do scenario tpcb "$c" -M simple; done ;;
        storm) scenario storm 50 -S -M simple -C ;;
        tls)
            # Client side only: the TLS handshake per connection, then records per query.
            SSLMODE=require
            scenario tls-storm 50 -S -M simple -C
            for c in $TLS_CLIENTS; do scenario tls-select "$c" -S -M simple; done
            SSLMODE=disable
            ;;
        idle)
            # Fresh pooler processes, each with one server connection already open, so the
            # baseline is what an idle pooler needs and not what earlier runs left allocated.
            echo "== idle capacity: $IDLE_CLIENTS idle logged-in clients" >&2
            stop_pid "$PGB_PID"
            stop_pid "$WEIR_PID"
            start_pgbouncer
            start_weir
            for target in pgbouncer weir; do
                port=$PGB_PORT pid=$PGB_PID
                [[ $target == weir ]] && port=$WEIR_PORT pid=$WEIR_PID
                psql -X -q -At -h 127.0.0.1 -p "$port" -U bench -d bench -c 'SELECT 1' >/dev/null
                python3 "$ROOT/bench/idle_clients.py" --port "$port" --user bench --dbname bench \
                    --pid "$pid" --count "$IDLE_CLIENTS" --out "$OUT/idle-$target.json" \
                    >/dev/null 2>"$OUT/idle-$target.stderr" ||
                    echo "   idle client script failed for $target (see idle-$target.stderr)" >&2
                [[ -s $OUT/idle-$target.json ]] && echo "   $target: $(cat "$OUT/idle-$target.json")" >&2
                ensure_poolers "idle capacity"
            done
            ;;
        operator)
            # The operator at scale on the kwok control plane (tests/tests/operator_scale.rs),
            # its table kept for the report; the release operator when `make bench` built it, and the
            # test itself in release, which shares the operator's compiled dependencies.
            echo "== operator at scale: 500 ConnectionPools over 50 databases on kwok" >&2
            operator_bin=$ROOT/target/release/weir-operator
            [[ -x $operator_bin ]] || operator_bin=
            # Its control plane runs detached from this shell, so its CPU is not among our
            # children's: the machine's whole CPU over this section counts as the bench's own.
            section_busy=$(machine_busy_ticks)
            section_children=$(proc_ticks $$ children)
            (cd "$ROOT" && env WEIR_CONTROLPLANE_AUDIT=1 OPERATOR_SCALE_REPORT="$OUT/operator-scale.md" \
                ${operator_bin:+WEIR_OPERATOR_BIN="$operator_bin"} "${CARGO:-cargo}" test -q --release \
                -p weir-tests --test operator_scale -- --ignored --nocapture operator_at_scale \
                >"$OUT/operator-scale.log" 2>&1) || {
                echo "   operator at scale failed (see operator-scale.log)" >&2
                printf '\n**The operator at scale failed**; the end of its log:\n\n```\n%s\n```\n' \
                    "$(tail -n 15 "$OUT/operator-scale.log")" >>"$OUT/operator-scale.md"
            }
            DETACHED_TICKS=$((DETACHED_TICKS + $(machine_busy_ticks) - section_busy - ($(proc_ticks $$ children) - section_children)))
            ;;
        *) echo "bench: unknown scenario $s" >&2; exit 1 ;;
    esac
done

ours=$(($(proc_ticks $$ children) - OURS_START + $(postgres_ticks) + $(proc_ticks "$PGB_PID") + $(proc_ticks "$WEIR_PID") + DETACHED_TICKS))
{
    echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "elapsed_seconds=$(($(date +%s) - STARTED))"
    echo "busy_ticks=$(($(machine_busy_ticks) - BUSY_START))"
    echo "own_ticks=$ours"
} >>"$OUT/env.txt"
for n in "${NOTES[@]}"; do echo "note=$n" >>"$OUT/env.txt"; done
python3 "$ROOT/bench/report.py" "$OUT" >"$OUT/report.md"
cp "$OUT/report.md" "$ROOT/target/bench/latest.md"
cat "$OUT/report.md"
echo >&2
echo "bench: report in $OUT/report.md (raw pgbench output in $OUT/raw)" >&2
