#!/usr/bin/env bash
# The local demo, end to end: a Kubernetes control plane and a PostgreSQL on this machine,
# the Weir chart installed, the operator reconciling the example ConnectionPool, poolers
# started from the configuration the operator rendered, pgbench through them, and a report.
#
# What runs where, and why (there is no container engine and no kubelet here):
#   - Kubernetes: tests/controlplane (etcd, kube-apiserver, controller-manager, scheduler)
#     as local processes, with kwok standing in for the kubelets of two fake nodes: Pods
#     are scheduled and reported Running and Ready, but no container runs.
#   - The chart: installed by helm, CRD, RBAC and ServiceAccount for real, the operator
#     Deployment with replicaCount=0, because a fake pod would only pretend to run it.
#   - The operator: `weir-operator run` as a local process, authenticated with a token of
#     the chart's ServiceAccount, so that it has exactly the permissions the chart grants.
#   - The poolers: the pool's Deployment gets fake pods from kwok. For each of them the
#     demo does a kubelet's part: it writes the pod's ConfigMap and Secret volumes to a
#     directory, and starts target/release/weir with the pod's command line. Pods have
#     their own network namespace and mounts, local processes share the machine's, so
#     the listen addresses and ports become free loopback ones and absolute paths into the
#     volumes are re-rooted in that directory; nothing else in pgbouncer.ini changes.
#   - PostgreSQL: a throwaway cluster on 127.0.0.1 (run as the postgres OS user), which
#     the ConnectionPool's spec.database points at.
#   - pgbench: one per pooler, the clients split evenly, as a Service would spread them.
#
# Usage: scripts/demo.sh              run, report, clean up
#        KEEP=1 scripts/demo.sh       run, report, leave everything running
#        scripts/demo.sh --stop DIR   stop what a KEEP=1 run left in DIR
# Environment: CLIENTS (50), SECONDS_TO_RUN (10), MAX_CONNECTIONS (40, the database's
# max_connections, small so that the budget shows), WEIR_BIN, WEIR_OPERATOR_BIN.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# cp_start_time and cp_is_ours: a pid plus its start time names a process unambiguously.
# shellcheck source-path=SCRIPTDIR source=../tests/controlplane/lib.sh
source "$ROOT/tests/controlplane/lib.sh"

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Stops everything recorded in DIR: pooler and operator processes, PostgreSQL, the control
# plane; then removes DIR.
stop_all() {
    local dir=$1 name pid start left i
    if [[ -f $dir/pids ]]; then
        while read -r name pid start; do
            if cp_is_ours "$pid" "$start"; then kill "$pid" 2>/dev/null || true; fi
        done <"$dir/pids"
        # The poolers drain their clients on SIGTERM; with none left that takes moments.
        for ((i = 0; i < 50; i++)); do
            left=0
            while read -r name pid start; do
                if cp_is_ours "$pid" "$start"; then left=1; fi
            done <"$dir/pids"
            ((left)) || break
            sleep 0.2
        done
        while read -r name pid start; do
            if cp_is_ours "$pid" "$start"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done <"$dir/pids"
    fi
    if [[ -f $dir/pg/data/postmaster.pid && -f $dir/pgbin ]]; then
        as_postgres "$(cat "$dir/pgbin")/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
    fi
    if [[ -d $dir/k8s ]]; then
        "$ROOT/tests/controlplane/down.sh" --purge "$dir/k8s" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

if [[ ${1:-} == --stop ]]; then
    [[ -n ${2:-} && -f $2/pids ]] || { echo "usage: $0 --stop DIR (a KEEP=1 demo's directory)" >&2; exit 2; }
    stop_all "$2"
    echo "demo: stopped and removed $2"
    exit 0
fi

PGBIN=$("$ROOT/scripts/ensure-deps.sh")
WEIR=${WEIR_BIN:-$ROOT/target/release/weir}
OPERATOR=${WEIR_OPERATOR_BIN:-$ROOT/target/release/weir-operator}
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

for bin in "$WEIR" "$OPERATOR"; do
    [[ -x $bin ]] || { echo "demo: $bin not built (make release)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "demo: python3 is required" >&2; exit 1; }

WORK=$(mktemp -d /tmp/weir-demo.XXXXXX)
chmod 755 "$WORK"
mkdir "$WORK/pg" "$WORK/pods" "$WORK/logs"
chown postgres: "$WORK/pg"
echo "$PGBIN" >"$WORK/pgbin"
: >"$WORK/pids"

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
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a long-running process in its own session with its output in logs/NAME.log and
# records it for stop_all. Args: NAME COMMAND...
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$WORK/logs/$name.log" 2>&1 &
    local pid=$!
    local start
    start=$(cp_start_time "$pid") || die "$name exited at once: $(tail -n 5 "$WORK/logs/$name.log")"
    echo "$name $pid $start" >>"$WORK/pids"
}

# Polls COMMAND for up to SECONDS seconds. Args: SECONDS DESCRIPTION COMMAND...
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}

# --- Kubernetes ------------------------------------------------------------------------
step "starting a Kubernetes control plane (etcd, apiserver, controllers, kwok for the kubelets)"
# A cold cache builds Kubernetes first (10-15 minutes): every 10 s, say what it is at.
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
step "starting PostgreSQL on 127.0.0.1:$PGPORT (max_connections $MAX_CONNECTIONS)"
as_postgres "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync --no-instructions >/dev/null
as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
    -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=$MAX_CONNECTIONS -c fsync=off" \
    start >/dev/null
SUPER=(psql -X -q -At -h "$WORK/pg" -p "$PGPORT" -U postgres)
"${SUPER[@]}" -c "CREATE ROLE app LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE $POOL OWNER app"
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "$PGPORT" -U app "$POOL" >/dev/null 2>&1

# --- the chart ---------------------------------------------------------------------------
step "installing charts/weir (operator Deployment at 0 replicas: the operator runs locally)"
for ns in "$SYSTEM_NS" "$APP_NS"; do
    kubectl create namespace "$ns" >/dev/null
    # Both the operator and the poolers are built for the restricted Pod Security level.
    kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
done
helm install "$RELEASE" "$ROOT/charts/weir" --namespace "$SYSTEM_NS" \
    --set replicaCount=0 --set leaderElection.name="$LEASE" --wait >"$WORK/logs/helm.log"

# The operator's kubeconfig: the cluster's address and CA, and a token of the chart's
# ServiceAccount (bound tokens expire; a day outlasts any demo).
OPERATOR_KUBECONFIG=$WORK/operator.kubeconfig
TOKEN=$(kubectl create token "$RELEASE-operator" --namespace "$SYSTEM_NS" --duration=24h)
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-cluster weir-demo \
    --server="$WEIR_CONTROLPLANE_SERVER" --certificate-authority="$WORK/k8s/certs/ca.crt" \
    --embed-certs=true >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-credentials "$RELEASE-operator" \
    --token="$TOKEN" >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" set-context weir-demo --cluster=weir-demo \
    --user="$RELEASE-operator" --namespace="$SYSTEM_NS" >/dev/null
kubectl config --kubeconfig="$OPERATOR_KUBECONFIG" use-context weir-demo >/dev/null
unset TOKEN

# --- the operator ------------------------------------------------------------------------
"$OPERATOR" --help 2>/dev/null | grep -qE '^ +run( |$)' ||
    die "$OPERATOR has no 'run' command yet: the controller is not built, so nothing would reconcile the pool"
METRICS_PORT=$(free_port)
step "starting weir-operator run (as ServiceAccount $SYSTEM_NS/$RELEASE-operator, metrics on 127.0.0.1:$METRICS_PORT)"
spawn operator env KUBECONFIG="$OPERATOR_KUBECONFIG" "$OPERATOR" run \
    --metrics-address="127.0.0.1:$METRICS_PORT" --leader-elect=true \
    --leader-election-namespace="$SYSTEM_NS" --leader-election-name="$LEASE"
wait_for 30 "the operator's metrics port" port_open "$METRICS_PORT"

# --- the pool ----------------------------------------------------------------------------
step "applying examples/minimal.yaml to namespace $APP_NS, pointed at the local PostgreSQL"
kubectl --namespace "$APP_NS" create secret generic orders-db-app \
    --from-literal=username=app --from-literal=password="$PASSWORD" >/dev/null
kubectl patch --local -f "$ROOT/examples/minimal.yaml" --type=merge -o yaml \
    -p "{\"spec\":{\"database\":{\"host\":\"127.0.0.1\",\"port\":$PGPORT}}}" |
    kubectl --namespace "$APP_NS" apply -f - >/dev/null

K=(kubectl --namespace "$APP_NS")
pool_field() { "${K[@]}" get connectionpool "$POOL" -o jsonpath="{$1}"; }
if ! "${K[@]}" wait connectionpool "$POOL" --for=condition=Ready --timeout=120s >/dev/null 2>&1; then
    "${K[@]}" get connectionpool "$POOL" -o yaml >&2 || true
    die "the ConnectionPool did not become Ready within 120s"
fi

POD_SELECTOR=$(pool_field .status.selector)
mapfile -t PODS < <("${K[@]}" get pods -l "$POD_SELECTOR" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#PODS[@]} > 0)) || die "the pool's Deployment has no pods"
mapfile -t OBJECTS < <("${K[@]}" get serviceaccounts,configmaps,secrets,services,deployments,poddisruptionbudgets \
    -l "app.kubernetes.io/managed-by=weir-operator,app.kubernetes.io/instance=$POOL" -o name)

# --- the poolers -------------------------------------------------------------------------
# Writes POD's configMap and secret volumes under DIR as its containers would see them, and
# prints its first container's command and arguments, one per line. Args: DIR POD
lay_out_volumes() {
    python3 - "$1" "$APP_NS" "$2" <<'PY'
import base64, json, os, subprocess, sys

root, namespace, pod_name = sys.argv[1:4]

def get(kind, name):
    out = subprocess.run(["kubectl", "--namespace", namespace, "get", kind, name, "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)

spec = get("pod", pod_name)["spec"]
container = spec["containers"][0]
volumes = {v["name"]: v for v in spec.get("volumes", [])}
for mount in container.get("volumeMounts", []):
    volume = volumes[mount["name"]]
    if "configMap" in volume:
        source = volume["configMap"]
        data = {k: v.encode() for k, v in get("configmap", source["name"]).get("data", {}).items()}
    elif "secret" in volume:
        source = volume["secret"]
        data = {k: base64.b64decode(v)
                for k, v in get("secret", source["secretName"]).get("data", {}).items()}
    else:
        sys.exit(f"volume {mount['name']}: only configMap and secret volumes are laid out")
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        path = os.path.join(root, mount["mountPath"].lstrip("/"), item["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data[item["key"]])
        os.chmod(path, item.get("mode", source.get("defaultMode", 0o644)))
print("\n".join(container.get("command", []) + container.get("args", [])))
PY
}

PORTS=()
step "starting one weir per pod of deployment/$POOL, from its ConfigMap and Secret"
for pod in "${PODS[@]}"; do
    dir=$WORK/pods/$pod
    mapfile -t argv < <(lay_out_volumes "$dir" "$pod")
    [[ ${argv[0]:-} == weir ]] || die "pod $pod runs '${argv[0]:-}', expected weir"
    args=()
    for a in "${argv[@]:1}"; do
        [[ $a == /* ]] && a=$dir$a
        args+=("$a")
    done
    ini=${args[-1]}
    port=$(free_port)
    http_port=$(free_port)
    cp "$ini" "$ini.rendered"
    sed -i -E \
        -e "s|^listen_addr = .*|listen_addr = 127.0.0.1|" \
        -e "s|^listen_port = .*|listen_port = $port|" \
        -e "s|^http_listen_addr = .*|http_listen_addr = 127.0.0.1|" \
        -e "s|^http_port = .*|http_port = $http_port|" \
        -e "s|^auth_file = (/.*)|auth_file = $dir\\1|" \
        "$ini"
    diff "$ini.rendered" "$ini" >"$dir/local-changes.diff" || true
    spawn "weir-$pod" "$WEIR" "${args[@]}"
    PORTS+=("$port")
    echo "   $pod -> weir on 127.0.0.1:$port (health on :$http_port; changes: $dir/local-changes.diff)"
done
for port in "${PORTS[@]}"; do
    wait_for 30 "weir on port $port" port_open "$port"
done

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

N=${#PORTS[@]}
step "pgbench: $CLIENTS clients, TPC-B, ${SECONDS_TO_RUN}s, spread over $N poolers"
BENCH_PIDS=()
for i in "${!PORTS[@]}"; do
    share=$((CLIENTS / N + (i < CLIENTS % N ? 1 : 0)))
    PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -n -c "$share" -j 1 -T "$SECONDS_TO_RUN" \
        -h 127.0.0.1 -p "${PORTS[i]}" -U app "$POOL" >"$WORK/pgbench-$i.out" 2>&1 &
    BENCH_PIDS+=($!)
done
bench_failed=false
for pid in "${BENCH_PIDS[@]}"; do
    wait "$pid" || bench_failed=true
done
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
echo "  pooler pods                ${#PODS[@]} (scheduled by Kubernetes, Ready via kwok; served by local weir processes)"
echo "  connection budget          max_connections $(b maxConnections) - $(b superuserReserved) superuser-reserved - $(b reservedHeadroom) headroom - $(b usedByOthers) used by others = $(b database) for all pools; this pool $(b pool)"
echo "  per-pod size               $(b perPod) server connections (max_db_connections) x $(b podsMax) pods at most (replicas + rollout surge)"
echo "  users                      ${USERS%; }"
echo "  clients                    $CLIENTS (pgbench TPC-B over $N poolers)"
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
    echo "  psql postgresql://app:$PASSWORD@127.0.0.1:${PORTS[0]}/$POOL     # through the first pooler"
    echo "  logs: $WORK/logs    stop: scripts/demo.sh --stop $WORK"
fi
