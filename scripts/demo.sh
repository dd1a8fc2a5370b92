#!/usr/bin/env bash
# The local demo, end to end: a Kubernetes control plane and a PostgreSQL on this machine,
# the Weir chart installed, the operator reconciling the example ConnectionPool, poolers
# started from the configuration the operator rendered, pgbench through them, and a report.
#
# What runs where, and why:
#   - Kubernetes: tests/controlplane (etcd, kube-apiserver, controller-manager, scheduler)
#     as local processes, with one real node (WEIR_CONTROLPLANE_NODE=real: containerd,
#     kubelet, kube-proxy, CoreDNS; see tests/controlplane/README.md). No registry is
#     reachable: the Weir image (localhost/weir:test, from target/release) and a pgbench
#     image are built here and imported into the node's containerd.
#   - The chart: installed by helm as a user would, so the operator runs as a pod with its
#     ServiceAccount and RBAC, in a namespace enforcing the restricted Pod Security level.
#   - The poolers: pods of the pool's Deployment, Ready through their /readyz probe.
#   - PostgreSQL: a throwaway cluster on this machine (run as the postgres OS user) that
#     listens on 127.0.0.1 and on the node's bridge address 10.244.0.1, where pods reach it.
#   - pgbench: a pod reaching the pool by its Service's DNS name with the <pool>-app Secret.
#
# Usage: scripts/demo.sh              run, report, clean up
#        KEEP=1 scripts/demo.sh       run, report, leave everything running
#        scripts/demo.sh --stop DIR   stop what a KEEP=1 run left in DIR
# Environment: CLIENTS (50), SECONDS_TO_RUN (10), MAX_CONNECTIONS (40, the database's
# max_connections, small so that the budget shows), WEIR_BIN_DIR (target/release).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Stops PostgreSQL and the control plane with its node (pods included); removes DIR.
stop_all() {
    local dir=$1
    if [[ -f $dir/pg/data/postmaster.pid && -f $dir/pgbin ]]; then
        as_postgres "$(cat "$dir/pgbin")/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
    fi
    if [[ -d $dir/k8s ]]; then
        "$ROOT/tests/controlplane/down.sh" --purge "$dir/k8s" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

if [[ ${1:-} == --stop ]]; then
    [[ -n ${2:-} && -d $2/k8s ]] || { echo "usage: $0 --stop DIR (a KEEP=1 demo's directory)" >&2; exit 2; }
    stop_all "$2"
    echo "demo: stopped and removed $2"
    exit 0
fi

PGBIN=$("$ROOT/scripts/ensure-deps.sh")
BIN_DIR=${WEIR_BIN_DIR:-$ROOT/target/release}
CLIENTS=${CLIENTS:-50}
SECONDS_TO_RUN=${SECONDS_TO_RUN:-10}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-40}
KEEP=${KEEP:-0}
SYSTEM_NS=weir-system
APP_NS=weir-demo
RELEASE=weir
LEASE=weir-operator
POOL=orders
# Every process logs to a file: no terminal colour codes in them.
export NO_COLOR=1

for bin in weir weir-operator; do
    [[ -x $BIN_DIR/$bin ]] || { echo "demo: $BIN_DIR/$bin not built (make release)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "demo: python3 is required" >&2; exit 1; }

WORK=$(mktemp -d /tmp/weir-demo.XXXXXX)
chmod 755 "$WORK"
mkdir "$WORK/pg" "$WORK/pods" "$WORK/logs"
chown postgres: "$WORK/pg"
echo "$PGBIN" >"$WORK/pgbin"

SAMPLER_PID=
finish() {
    local rc=$?
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    if ((rc != 0 && rc != 130)); then
        echo "demo: failed; last lines of the logs in $WORK/logs:" >&2
        tail -n 15 "$WORK"/logs/*.log >&2 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then
        # Left as it is, failed or not, for a look around.
        ((rc == 0)) || echo "demo: left running (KEEP=1); stop with scripts/demo.sh --stop $WORK" >&2
        return
    fi
    stop_all "$WORK"
}
trap finish EXIT
trap 'exit 130' INT TERM

step() { printf '== %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- Kubernetes ------------------------------------------------------------------------
step "starting a Kubernetes control plane and a real node (containerd, kubelet, kube-proxy, CoreDNS)"
# A cold cache builds Kubernetes first (10-15 minutes): every 10 s, say what it is at.
WEIR_CONTROLPLANE_NODE=real WEIR_NODE_WEIR_BIN=$BIN_DIR \
    "$ROOT/tests/controlplane/up.sh" "$WORK/k8s" 2>"$WORK/logs/controlplane-up.log" &
up_pid=$!
up_started=$SECONDS
while kill -0 "$up_pid" 2>/dev/null; do
    for ((i = 0; i < 20; i++)); do
        kill -0 "$up_pid" 2>/dev/null || break 2
        sleep 0.5
    done
    last=$(grep -E 'build(-node)?: (building|built|dependencies|resolving|cold)|started|: ok after' "$WORK/logs/controlplane-up.log" | tail -n 1)
    printf '   %4ds  %s\n' "$((SECONDS - up_started))" "${last#controlplane/}"
done
wait "$up_pid" || die "the control plane did not start (see $WORK/logs/controlplane-up.log)"
printf '   control plane up in %ds\n' "$((SECONDS - up_started))"
# shellcheck source=/dev/null
source "$WORK/k8s/env"

# --- PostgreSQL --------------------------------------------------------------------------
PGPORT=$(free_port)
PASSWORD=demo-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
NODE_IP=10.244.0.1
step "starting PostgreSQL on 127.0.0.1 and $NODE_IP (the pods' gateway), port $PGPORT (max_connections $MAX_CONNECTIONS)"
as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync --no-instructions >/dev/null
echo "host all all 10.244.0.0/24 scram-sha-256" >>"$WORK/pg/data/pg_hba.conf"
as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
    -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1,$NODE_IP -c max_connections=$MAX_CONNECTIONS -c fsync=off" \
    start >/dev/null
SUPER=(psql -X -q -At -h "$WORK/pg" -p "$PGPORT" -U postgres)
"${SUPER[@]}" -c "CREATE ROLE app LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE $POOL OWNER app"
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "$PGPORT" -U app "$POOL" >/dev/null 2>&1

# --- the chart ---------------------------------------------------------------------------
step "installing charts/weir: the operator as a pod (image localhost/weir:test)"
for ns in "$SYSTEM_NS" "$APP_NS"; do
    kubectl create namespace "$ns" >/dev/null
    # Both the operator and the poolers are built for the restricted Pod Security level.
    kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
done
started=$SECONDS
helm install "$RELEASE" "$ROOT/charts/weir" --namespace "$SYSTEM_NS" \
    --set image.repository=localhost/weir,image.tag=test,image.pullPolicy=Never \
    --set leaderElection.name="$LEASE" --wait --timeout 180s >"$WORK/logs/helm.log"
echo "   operator pod Ready $((SECONDS - started))s after helm install"

# --- the pool ----------------------------------------------------------------------------
step "applying examples/minimal.yaml to namespace $APP_NS, pointed at the local PostgreSQL"
started=$SECONDS
kubectl --namespace "$APP_NS" create secret generic orders-db-app \
    --from-literal=username=app --from-literal=password="$PASSWORD" >/dev/null
kubectl patch --local -f "$ROOT/examples/minimal.yaml" --type=merge -o yaml \
    -p "{\"spec\":{\"image\":\"localhost/weir:test\",\"database\":{\"host\":\"$NODE_IP\",\"port\":$PGPORT}}}" |
    kubectl --namespace "$APP_NS" apply -f - >/dev/null

K=(kubectl --namespace "$APP_NS")
pool_field() { "${K[@]}" get connectionpool "$POOL" -o jsonpath="{$1}"; }
if ! "${K[@]}" wait connectionpool "$POOL" --for=condition=Ready --timeout=120s >/dev/null 2>&1; then
    "${K[@]}" get connectionpool "$POOL" -o yaml >&2 || true
    die "the ConnectionPool did not become Ready within 120s"
fi
echo "   pool Ready (pods Ready through /readyz) $((SECONDS - started))s after kubectl apply"

POD_SELECTOR=$(pool_field .status.selector)
mapfile -t PODS < <("${K[@]}" get pods -l "$POD_SELECTOR" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#PODS[@]} > 0)) || die "the pool's Deployment has no pods"
mapfile -t OBJECTS < <("${K[@]}" get serviceaccounts,configmaps,secrets,services,deployments,poddisruptionbudgets \
    -l "app.kubernetes.io/managed-by=weir-operator,app.kubernetes.io/instance=$POOL" -o name)

# --- pgbench -------------------------------------------------------------------------------
# Samples the server connections the poolers hold while pgbench runs.
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

N=${#PODS[@]}
step "pgbench: a pod, $CLIENTS clients, TPC-B, ${SECONDS_TO_RUN}s, through the Service's DNS name"
env_from_secret=""
for pair in PGHOST:host PGPORT:port PGDATABASE:dbname PGUSER:user PGPASSWORD:password; do
    env_from_secret+="    - {name: ${pair%%:*}, valueFrom: {secretKeyRef: {name: $POOL-app, key: ${pair#*:}}}}"$'\n'
done
"${K[@]}" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: pgbench}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: pgbench
    image: localhost/weir-pgbench:15
    imagePullPolicy: Never
    args: ["-n", "-c", "$CLIENTS", "-j", "2", "-T", "$SECONDS_TO_RUN"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    env:
$env_from_secret
YAML
bench_failed=false
"${K[@]}" wait pod/pgbench --for=jsonpath='{.status.phase}'=Running --timeout=120s >/dev/null ||
    bench_failed=true
"${K[@]}" wait pod/pgbench --for=jsonpath='{.status.phase}'=Succeeded --timeout=$((SECONDS_TO_RUN + 120))s >/dev/null ||
    bench_failed=true
"${K[@]}" logs pgbench >"$WORK/pgbench-0.out" 2>&1 || bench_failed=true
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=

sum_of() { sed -n "s/^$1\$/\\1/p" "$WORK"/pgbench-*.out | awk '{ s += $1 } END { if (NR) print s }'; }
TPS=$(sum_of 'tps = \([0-9.]*\) .*')
TXNS=$(sum_of 'number of transactions actually processed: \([0-9]*\).*')
FAILED=$(sum_of 'number of failed transactions: \([0-9]*\).*')
MAX_SERVERS=$(cat "$WORK/max-servers" 2>/dev/null || echo "?")

# --- the report ------------------------------------------------------------------------------
b() { pool_field ".status.budget.$1"; }
USERS=$("${K[@]}" get connectionpool "$POOL" -o jsonpath='{range .status.users[*]}{.user} pool_size {.poolSize}, reserve {.reservePoolSize}, min {.minPoolSize}; {end}')
kinds=()
for o in "${OBJECTS[@]}"; do kinds+=("${o%%/*}/${o#*/}"); done

echo
echo "Weir demo report"
echo "  objects created            ${kinds[*]} (namespace $APP_NS)"
echo "  pooler pods                ${#PODS[@]} (containers on a real node, Ready through /readyz)"
echo "  connection budget          max_connections $(b maxConnections) - $(b superuserReserved) superuser-reserved - $(b reservedHeadroom) headroom - $(b usedByOthers) used by others = $(b database) for all pools; this pool $(b pool)"
echo "  per-pod size               $(b perPod) server connections (max_db_connections) x $(b podsMax) pods at most (replicas + rollout surge)"
echo "  users                      ${USERS%; }"
echo "  clients                    $CLIENTS (a pgbench pod, TPC-B, through Service $POOL.$APP_NS)"
echo "  transactions               ${TXNS:-?} (failed: ${FAILED:-0})"
echo "  TPS                        ${TPS:-?}"
echo "  server connections used    $MAX_SERVERS of $(b pool) budgeted ($N pods x $(b perPod) = $((N * $(b perPod))) now, $(b podsMax) x $(b perPod) during a rollout)"
echo "  client:server ratio        $CLIENTS:$MAX_SERVERS"
if [[ -z $TPS || $bench_failed == true ]]; then
    cat "$WORK"/pgbench-*.out >&2
    exit 1
fi
if [[ $KEEP == 1 ]]; then
    echo
    echo "Left running (KEEP=1):"
    echo "  export KUBECONFIG=$KUBECONFIG PATH=$WEIR_CONTROLPLANE_BIN:\$PATH"
    echo "  kubectl get connectionpools,all -n $APP_NS"
    echo "  kubectl logs -n $SYSTEM_NS deployment/$RELEASE-operator"
    echo "  logs: $WORK/logs    stop: scripts/demo.sh --stop $WORK"
fi
