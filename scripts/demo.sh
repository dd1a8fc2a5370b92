#!/usr/bin/env bash
# The local demo: a throwaway PostgreSQL, weir in front of it in transaction mode, pgbench
# through weir, and a report of the throughput and the server connections it took.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=$("$ROOT/scripts/ensure-deps.sh")
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
CLIENTS=${CLIENTS:-50}
POOL_SIZE=${POOL_SIZE:-10}
SECONDS_TO_RUN=${SECONDS_TO_RUN:-10}

[[ -x $WEIR ]] || { echo "demo: $WEIR not built (make release)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/weir-demo.XXXXXX)
chmod 755 "$WORK"
mkdir "$WORK/pg"
chown postgres: "$WORK/pg"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WEIR_PID=
SAMPLER_PID=
cleanup() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    [[ -n $WEIR_PID ]] && kill "$WEIR_PID" 2>/dev/null && wait "$WEIR_PID" 2>/dev/null || true
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGPORT=$(free_port)
WEIR_PORT=$(free_port)
PASSWORD=demo-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')

echo "== starting PostgreSQL on 127.0.0.1:$PGPORT"
as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync --no-instructions >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
    -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" \
    start >/dev/null
SUPER=(psql -X -q -At -h "$WORK/pg" -p "$PGPORT" -U postgres)
"${SUPER[@]}" -c "CREATE ROLE app LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE app OWNER app"
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "$PGPORT" -U app app >/dev/null 2>&1

cat >"$WORK/weir.ini" <<INI
[databases]
app = host=127.0.0.1 port=$PGPORT dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $WEIR_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
INI
printf '"app" "%s"\n' "$PASSWORD" >"$WORK/userlist.txt"

echo "== starting weir on 127.0.0.1:$WEIR_PORT (transaction mode, pool size $POOL_SIZE)"
"$WEIR" -q "$WORK/weir.ini" &
WEIR_PID=$!
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$WEIR_PORT") 2>/dev/null && break
    sleep 0.1
done

# Sample the server connections weir holds while pgbench runs.
(
    max=0
    while true; do
        n=$("${SUPER[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'" 2>/dev/null || echo 0)
        ((n > max)) && max=$n
        echo "$max" >"$WORK/max-servers"
        sleep 0.2
    done
) &
SAMPLER_PID=$!

echo "== pgbench: $CLIENTS clients, TPC-B, ${SECONDS_TO_RUN}s, through weir"
OUT=$(PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_TO_RUN" \
    -h 127.0.0.1 -p "$WEIR_PORT" -U app app 2>&1)
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=

TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$OUT" | head -1)
TXNS=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$OUT")
FAILED=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$OUT")
MAX_SERVERS=$(cat "$WORK/max-servers" 2>/dev/null || echo "?")

echo
echo "Weir demo report"
echo "  clients                    $CLIENTS (pgbench TPC-B)"
echo "  transactions               ${TXNS:-?} (failed: ${FAILED:-0})"
echo "  TPS                        ${TPS:-?}"
echo "  server connections used    $MAX_SERVERS (pool size $POOL_SIZE)"
echo "  client:server ratio        $CLIENTS:$MAX_SERVERS"
if [[ -z $TPS ]]; then
    echo "$OUT" >&2
    exit 1
fi
