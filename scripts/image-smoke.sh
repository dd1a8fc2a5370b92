#!/usr/bin/env bash
# `make image-smoke`: the image built by `make image`, run under podman the way a pod runs
# it (read-only root, UID 65532, no capabilities, configuration mounted read-only), in
# front of a throwaway PostgreSQL on this machine:
#   - the image has no shell; `weir-operator render` inside it turns examples/minimal.yaml
#     into the pooler's pgbouncer.ini; ports and the database address are made local (host
#     network);
#   - the pooler container serves psql and `pgbench -c 4 -T 5`, and /readyz answers 200;
#   - `podman stop` (SIGTERM) while a transaction runs: the transaction commits, the pooler
#     drains and exits 0.
# Prints the time from container start to ready. Not part of `make test`.
# Environment: IMAGE (localhost/weir:<version>).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
IMAGE=${IMAGE:-localhost/weir:$VERSION}
# crun refuses the hybrid cgroups here; raising rlimits needs CAP_SYS_RESOURCE, so podman
# gets them at the values the processes already have.
PODMAN=(podman --runtime /usr/sbin/runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
NAME=weir-smoke-$$
POOL=orders

PGBIN=$("$ROOT/scripts/ensure-deps.sh")
"$ROOT/scripts/ensure-image-deps.sh"
"${PODMAN[@]}" image exists "$IMAGE" || { echo "image-smoke: no image $IMAGE (make image)" >&2; exit 1; }

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
die() { echo "image-smoke: $*" >&2; exit 1; }
step() { printf '== %s\n' "$*"; }
now_ms() { date +%s%3N; }

WORK=$(mktemp -d /tmp/weir-image-smoke.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/config" "$WORK/auth"
chown postgres: "$WORK/pg"
finish() {
    local rc=$?
    if ((rc != 0)) && "${PODMAN[@]}" container exists "$NAME"; then
        echo "image-smoke: failed; the pooler's log:" >&2
        "${PODMAN[@]}" logs "$NAME" 2>&1 | tail -n 20 >&2 || true
    fi
    "${PODMAN[@]}" rm --force --time 0 "$NAME" >/dev/null 2>&1 || true
    if [[ -f $WORK/pg/data/postmaster.pid ]]; then
        as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap finish EXIT

# --- PostgreSQL ----------------------------------------------------------------------------
PGPORT=$(free_port)
PASSWORD=smoke-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
step "PostgreSQL on 127.0.0.1:$PGPORT"
as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync --no-instructions >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
    -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=40 -c fsync=off" \
    start >/dev/null
SUPER=(psql -X -q -At -h "$WORK/pg" -p "$PGPORT" -U postgres)
"${SUPER[@]}" -c "CREATE ROLE app LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE $POOL OWNER app"
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U app "$POOL" >/dev/null 2>&1

# --- the operator binary in the image: help, version, render -------------------------------
RUN=("${PODMAN[@]}" run --rm "${LIMITS[@]}" --read-only --user 65532:65532 --cap-drop ALL
    --security-opt no-new-privileges --network none)
step "weir-operator in the image: --version, --help, render"
"${RUN[@]}" --entrypoint weir-operator "$IMAGE" --version
"${RUN[@]}" --entrypoint weir-operator "$IMAGE" --help | grep -qE '^ +render( |$)' ||
    die "weir-operator --help lists no render command"
"${RUN[@]}" "$IMAGE" --version
for shell in /bin/sh /bin/bash /usr/bin/busybox; do
    if "${RUN[@]}" --entrypoint "$shell" "$IMAGE" -c true >/dev/null 2>&1; then
        die "the image has a shell: $shell"
    fi
done
# The pool's spec pointed at the local database; maxConnections: auto stands for the 40 set above.
python3 - "$ROOT/examples/minimal.yaml" "$PGPORT" >"$WORK/pool.yaml" <<'PY'
import sys, yaml
pool = yaml.safe_load(open(sys.argv[1]))
pool["spec"]["database"].update(host="127.0.0.1", port=int(sys.argv[2]))
yaml.safe_dump(pool, sys.stdout)
PY
"${RUN[@]}" -i --entrypoint weir-operator "$IMAGE" render -f - --max-connections 40 \
    <"$WORK/pool.yaml" >"$WORK/rendered.yaml"

# pgbouncer.ini from the rendered ConfigMap; with the host network, the pod's fixed ports
# become free loopback ones. userlist.txt: render writes a placeholder for the Secret's password.
PORT=$(free_port)
HTTP_PORT=$(free_port)
python3 - "$WORK/rendered.yaml" "$PORT" "$HTTP_PORT" >"$WORK/config/pgbouncer.ini" <<'PY'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ini = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["pgbouncer.ini"]
for key, value in (("listen_addr", "127.0.0.1"), ("listen_port", sys.argv[2]),
                   ("http_listen_addr", "127.0.0.1"), ("http_port", sys.argv[3])):
    ini, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", ini, flags=re.M)
    assert n == 1, key
sys.stdout.write(ini)
PY
printf '"app" "%s"\n' "$PASSWORD" >"$WORK/auth/userlist.txt"
chmod 444 "$WORK/config/pgbouncer.ini" "$WORK/auth/userlist.txt"

# --- the pooler container ------------------------------------------------------------------
step "pooler container: read-only root, UID 65532, no capabilities, host network, port $PORT"
started=$(now_ms)
"${PODMAN[@]}" run --detach --name "$NAME" "${LIMITS[@]}" --network host --read-only \
    --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges \
    --volume "$WORK/config:/etc/weir/config:ro" --volume "$WORK/auth:/etc/weir/auth:ro" \
    "$IMAGE" /etc/weir/config/pgbouncer.ini >/dev/null
until curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; do
    [[ $("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME") == true ]] ||
        die "the pooler container exited before it was ready"
    (($(now_ms) - started < 30000)) || die "/readyz not 200 within 30s"
    sleep 0.05
done
ready_ms=$(($(now_ms) - started))
echo "   ready ${ready_ms} ms after podman run (includes container creation)"
curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null
curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null

export PGPASSWORD=$PASSWORD
answer=$(psql -X -At -h 127.0.0.1 -p "$PORT" -U app "$POOL" -c "SELECT current_user || '@' || current_database()")
[[ $answer == "app@$POOL" ]] || die "psql through the pooler answered '$answer'"
echo "   psql through the pooler: $answer"
step "pgbench -c 4 -T 5 through the pooler"
"$PGBIN/pgbench" -n -c 4 -j 2 -T 5 -h 127.0.0.1 -p "$PORT" -U app "$POOL" >"$WORK/pgbench.out" 2>&1 ||
    { cat "$WORK/pgbench.out" >&2; die "pgbench failed"; }
grep -E '^(number of transactions actually processed|number of failed transactions|tps)' "$WORK/pgbench.out" | sed 's/^/   /'

# --- SIGTERM with a transaction running --------------------------------------------------
step "podman stop (SIGTERM) while a transaction runs"
psql -X -At -h 127.0.0.1 -p "$PORT" -U app "$POOL" \
    -c "BEGIN; SELECT pg_sleep(2); INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 424242); COMMIT;" \
    >"$WORK/txn.out" 2>&1 &
txn=$!
until [[ $("${SUPER[@]}" -d "$POOL" -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()") == 1 ]]; do
    kill -0 "$txn" 2>/dev/null || { cat "$WORK/txn.out" >&2; die "the transaction ended before SIGTERM"; }
    sleep 0.05
done
stop_started=$(now_ms)
"${PODMAN[@]}" stop --time 40 "$NAME" >/dev/null
stop_ms=$(($(now_ms) - stop_started))
wait "$txn" || { cat "$WORK/txn.out" >&2; die "the transaction running at SIGTERM failed"; }
[[ $("${SUPER[@]}" -d "$POOL" -c "SELECT count(*) FROM pgbench_history WHERE delta = 424242") == 1 ]] ||
    die "the transaction running at SIGTERM did not commit"
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
((code == 0)) || die "the pooler exited $code after SIGTERM"
"${PODMAN[@]}" logs "$NAME" 2>&1 | grep -q 'drained; exiting' || die "no 'drained; exiting' in the pooler's log"
echo "   transaction committed, pooler drained and exited 0, ${stop_ms} ms after SIGTERM"
echo "image-smoke: ok ($IMAGE)"
