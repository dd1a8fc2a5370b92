# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): a throwaway, tuned
# PostgreSQL with a pgbench database, and the pgbouncer.ini both poolers are given.
# The caller sets ROOT, WORK (a fresh directory) and PGBIN before using these.

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# What a report calls the weir binary BIN: its version, then the checkout ROOT's commit when BIN is
# the checkout's own release build (", modified" when the pooler's sources differ from that
# commit), else BIN's path: a build from elsewhere (WEIR_BIN) is not labelled with this checkout.
weir_build() { # BIN ROOT
    local bin=$1 root=$2 from
    if [[ $bin -ef $root/target/release/weir ]]; then
        from=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
        git -C "$root" diff --quiet HEAD -- pooler 2>/dev/null || from+=", modified"
    else
        from=$bin
    fi
    echo "$("$bin" --version) ($from)"
}
# How many threads weir runs with: BENCH_WEIR_THREADS (written into its ini), else tokio's
# TOKIO_WORKER_THREADS, else one per CPU (what `worker_threads = 0` resolves to).
weir_threads() { echo "${BENCH_WEIR_THREADS:-${TOKIO_WORKER_THREADS:-$(nproc)}}"; }

# make_tls_certificate: $WORK/tls/server.{crt,key}, a self-signed ECDSA P-256 certificate for
# 127.0.0.1 that PostgreSQL and both poolers serve (owned by postgres, which runs two of them).
make_tls_certificate() {
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/tls/server.key" -out "$WORK/tls/server.crt" 2>/dev/null
    chown -R postgres: "$WORK/tls"
    chmod 600 "$WORK/tls/server.key"
}

# proc_ticks PID [children|user]: user + system CPU of a process, threads included, in clock
# ticks; with "children", plus what its reaped children used; with "user", its user time
# only. 0 once the process is gone.
proc_ticks() {
    local s f
    { s=$(<"/proc/$1/stat"); } 2>/dev/null || { echo 0; return; }
    s=${s##*) }
    read -r -a f <<<"$s"
    case ${2:-} in
        children) echo $((f[11] + f[12] + f[13] + f[14])) ;;
        user) echo $((f[11])) ;;
        *) echo $((f[11] + f[12])) ;;
    esac
}

# Busy CPU of the whole machine (user, nice, system, irq, softirq, steal) in clock ticks.
machine_busy_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

# CPU used so far by the PostgreSQL under $WORK: the postmaster, the backends it has reaped,
# and its processes still running.
postgres_ticks() {
    local pm total pid
    pm=$(head -1 "$WORK/pg/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
    total=$(proc_ticks "$pm" children)
    for pid in $(pgrep -P "$pm"); do total=$((total + $(proc_ticks "$pid"))); done
    echo "$total"
}

# steady_window LOG...: "FROM TO" (seconds since the epoch) of pgbench's per-thread
# transaction logs: FROM is when the last thread to start completed its first transaction,
# TO when the first thread to stop completed its last; nothing without a transaction.
steady_window() {
    awk 'FNR == 1 { if (NR > 1) ends(prev); t = $5 + $6 / 1e6; if (t > from) from = t }
        { prev = $5 + $6 / 1e6 }
        function ends(t) { if (to == "" || t < to) to = t }
        END { if (NR) { ends(prev); printf "%.6f %.6f\n", from, to } }' "$@"
}

# Waits for something to accept connections on 127.0.0.1:PORT, up to TENTHS tenths of a second
# (default 100: 10 s). Usage: wait_port PORT [TENTHS]
wait_port() {
    for _ in $(seq "${2:-100}"); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}

# TERM, then KILL if the process has not gone within 10 s. Only ever given our own children.
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_postgres() {
    [[ -d $WORK/pg/data ]] || return 0
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
}

# PostgreSQL serves TLS too when make_tls_certificate has run (for direct TLS scenarios).
pg_tls_options() {
    [[ -f $WORK/tls/server.crt ]] || return 0
    echo "-c ssl=on -c ssl_cert_file=$WORK/tls/server.crt -c ssl_key_file=$WORK/tls/server.key"
}

# start_postgres PORT MAX_CONNECTIONS SCALE PASSWORD: initdb, start, create role and database
# `bench` (SCRAM-SHA-256 over TCP), fill it with pgbench -i. Tuned for a throwaway benchmark
# server: durability off, buffers that hold the data set, room for every direct client, and
# no autovacuum that would land in one run only.
start_postgres() {
    local port=$1 max_connections=$2 scale=$3 password=$4
    mkdir -p "$WORK/pg"
    chown postgres: "$WORK/pg"
    as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --no-sync --no-instructions >/dev/null
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w -t 120 -o "\
-p $port -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=$max_connections \
-c shared_buffers=512MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=8GB -c checkpoint_timeout=1h \
-c autovacuum=off $(pg_tls_options)" start >/dev/null
    psql -X -q -At -h "$WORK/pg" -p "$port" -U postgres \
        -c "CREATE ROLE bench LOGIN PASSWORD '$password'" -c "CREATE DATABASE bench OWNER bench"
    PGPASSWORD=$password "$PGBIN/pgbench" -q -i -s "$scale" -h 127.0.0.1 -p "$port" -U bench \
        bench >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; return 1; }
}

# write_userlist PGPORT: $WORK/userlist.txt with the verifier PostgreSQL stores for `bench`,
# so that no pooler runs PBKDF2 per login and each logs in to the server with the keys the
# client's own SCRAM proof reveals.
write_userlist() {
    local verifier
    verifier=$(psql -X -q -At -h "$WORK/pg" -p "$1" -U postgres \
        -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")
    printf '"bench" "%s"\n' "$verifier" >"$WORK/userlist.txt"
    chmod 644 "$WORK/userlist.txt"
}

# pooler_ini LISTEN_PORT PGPORT POOL_SIZE MAX_CLIENT_CONN: the one configuration both poolers
# run with (they differ in the port only). Prepared statements are tracked by both (PgBouncer's
# max_prepared_statements, on by default since 1.22, set explicitly); toward PostgreSQL both
# stay plain, and with make_tls_certificate's files both offer TLS to clients that ask
# (client_tls_sslmode = prefer: pgbench's PGSSLMODE picks per scenario).
pooler_ini() {
    cat <<INI
[databases]
bench = host=127.0.0.1 port=$2 dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $3
max_client_conn = $4
log_connections = 0
log_disconnections = 0
max_prepared_statements = 200
server_tls_sslmode = disable
INI
    [[ -f $WORK/tls/server.crt ]] || return 0
    cat <<INI
client_tls_sslmode = prefer
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
INI
}

# one_pooler_setup CLIENTS: for the per-transaction counters (instructions.sh, syscalls.sh):
# PostgreSQL (scale 1, room for CLIENTS), its userlist, and $WORK/pooler.ini (pool 10) on
# POOLER_PORT; exports PGPASSWORD for pgbench.
one_pooler_setup() {
    PGPORT=$(free_port)
    POOLER_PORT=$(free_port)
    PGPASSWORD=bench-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
    export PGPASSWORD
    start_postgres "$PGPORT" $(($1 + 100)) 1 "$PGPASSWORD"
    write_userlist "$PGPORT"
    pooler_ini "$POOLER_PORT" "$PGPORT" 10 $(($1 + 100)) >"$WORK/pooler.ini"
}

# pooler_runner BINARY: how to start BINARY, a weir build or a pgbouncer: POOLER_AS, the
# command to put before it (PgBouncer refuses to run as root: setpriv, which execs, so $! is
# the pooler itself, or whatever runs it), and POOLER_BIN, a copy the postgres user can read
# for a pgbouncer, BINARY itself for weir.
pooler_runner() {
    if [[ $(basename "$1") == pgbouncer* ]]; then
        cp "$1" "$WORK/pgbouncer"
        chmod 755 "$WORK/pgbouncer"
        POOLER_AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
        POOLER_BIN=$WORK/pgbouncer
    else
        POOLER_AS=()
        POOLER_BIN=$1
    fi
}
