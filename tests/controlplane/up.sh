#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok, which plays the kubelet for two
# fake Nodes so that Pods get scheduled and reported Running/Ready without containers.
#
# Usage: tests/controlplane/up.sh STATE_DIR
# Leaves the processes running (each in its own session) and writes:
#   STATE_DIR/kubeconfig  admin credentials (client certificate in group system:masters)
#   STATE_DIR/env         `source` it: exports KUBECONFIG, PATH and WEIR_CONTROLPLANE_*
#   STATE_DIR/pids        "name pid starttime" per process, read by down.sh
#   STATE_DIR/logs/*.log  one log per process
# Stop with tests/controlplane/down.sh STATE_DIR. On any failure everything already
# started is stopped again before exiting non-zero.
# Environment:
#   WEIR_CONTROLPLANE_TIMEOUT  seconds allowed for each readiness wait (default 180)
#   WEIR_CONTROLPLANE_NODE     kwok (default): two fake nodes; real: no kwok, one real node
#                              instead (node-up.sh: containerd, kubelet, kube-proxy, CoreDNS)
#   WEIR_NODE_WEIR_BIN         with real: directory of weir and weir-operator to build the
#                              localhost/weir:test image from
#   WEIR_CONTROLPLANE_AUDIT    1: the API server logs every request's metadata to
#                              STATE_DIR/logs/audit.log (for counting a client's requests)
#   WEIR_CONTROLPLANE_CLIENT_QPS  requests per second the controller-manager and the
#                              scheduler may send (burst twice that); unset: their defaults
#                              (20 and 50), which bound how fast hundreds of Deployments roll out
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${HERE}/lib.sh"

[[ $# -eq 1 && -n "$1" ]] || cp_die "usage: $0 STATE_DIR"
TIMEOUT="${WEIR_CONTROLPLANE_TIMEOUT:-180}"
[[ "${TIMEOUT}" =~ ^[0-9]+$ ]] || cp_die "WEIR_CONTROLPLANE_TIMEOUT must be a number of seconds"
CLIENT_LIMITS=()
if [[ -n "${WEIR_CONTROLPLANE_CLIENT_QPS:-}" ]]; then
	[[ "${WEIR_CONTROLPLANE_CLIENT_QPS}" =~ ^[1-9][0-9]*$ ]] ||
		cp_die "WEIR_CONTROLPLANE_CLIENT_QPS must be a positive number of requests per second"
	CLIENT_LIMITS=(--kube-api-qps="${WEIR_CONTROLPLANE_CLIENT_QPS}" --kube-api-burst="$((2 * WEIR_CONTROLPLANE_CLIENT_QPS))")
fi
for tool in openssl setsid base64; do
	command -v "${tool}" >/dev/null || cp_die "${tool} is required but not installed"
done

mkdir -p "$1"
STATE="$(cd "$1" && pwd)"
PIDS="${STATE}/pids"
LOGS="${STATE}/logs"
CERTS="${STATE}/certs"
KUBECONFIG_ADMIN="${STATE}/kubeconfig"
FAKE_NODES=(kwok-node-0 kwok-node-1)
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16
NODE_MODE="${WEIR_CONTROLPLANE_NODE:-kwok}"
[[ "${NODE_MODE}" == kwok || "${NODE_MODE}" == real ]] || cp_die "WEIR_CONTROLPLANE_NODE must be kwok or real"
# The real node's bridge, pod subnet and iptables chains are the machine's: one at a time.
NODE_OWNER=/run/weir-test-node.owner

if [[ -s "${PIDS}" ]]; then
	while read -r name pid start; do
		if cp_is_ours "${pid}" "${start}"; then
			cp_die "${name} (pid ${pid}) from an earlier start is still running; run down.sh ${STATE} first"
		fi
	done <"${PIDS}"
fi
: >"${PIDS}"
# The env file announces a running cluster: it is written last, only on success.
rm -f "${STATE}/env"
mkdir -p "${LOGS}" "${CERTS}"

started_ok=false
cleanup_on_failure() {
	if [[ "${started_ok}" != true ]]; then
		cp_log "start failed; stopping what was started (logs stay in ${LOGS})"
		"${HERE}/down.sh" "${STATE}" || true
	fi
}
trap cleanup_on_failure EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Succeeds while the kubelet recorded in STATE_DIR/pids runs.
kubelet_running() {
	local name pid start_time
	[[ -s "$1/pids" ]] || return 1
	while read -r name pid start_time; do
		if [[ "${name}" == kubelet ]] && cp_is_ours "${pid}" "${start_time}"; then
			return 0
		fi
	done <"$1/pids"
	return 1
}

t_start="${SECONDS}"
if [[ "${NODE_MODE}" == real ]]; then
	if [[ -s "${NODE_OWNER}" ]]; then
		owner="$(cat "${NODE_OWNER}")"
		if kubelet_running "${owner}"; then
			cp_die "the real test node of ${owner} is running; one at a time (down.sh ${owner})"
		fi
		cp_log "removing the leftovers of the real node of ${owner}"
		"${HERE}/node-down.sh" --host "${owner}"
	fi
	printf '%s\n' "${STATE}" >"${NODE_OWNER}"
	# The node's address exists before the kubelet and the API server advertise it.
	if ip link show weir0 >/dev/null 2>&1; then ip link delete weir0; fi
	ip link add weir0 type bridge
	ip addr add 10.244.0.1/24 dev weir0
	ip link set weir0 up
	mkdir -p "${STATE}/node"
fi
BIN="$("${HERE}/build.sh")" || cp_die "building the control-plane binaries failed"
SHARE="$(cd "${BIN}/../share" && pwd)"
kubectl() { "${BIN}/kubectl" --kubeconfig "${KUBECONFIG_ADMIN}" "$@"; }

# --- ports ---------------------------------------------------------------------
# Asks the kernel for free ports by binding to port 0; all sockets are held open
# until every port is known, so the answers are distinct.
free_ports() {
	if command -v python3 >/dev/null; then
		python3 - "$1" <<-'EOF'
			import socket, sys
			held = []
			for _ in range(int(sys.argv[1])):
			    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
			    s.bind(("127.0.0.1", 0))
			    held.append(s)
			print(" ".join(str(s.getsockname()[1]) for s in held))
		EOF
	else
		# Without python3: random high ports nobody answers on.
		local -a out=()
		local p
		while ((${#out[@]} < $1)); do
			p=$((20000 + RANDOM % 30000))
			[[ " ${out[*]} " == *" ${p} "* ]] && continue
			if ! (exec 3<>"/dev/tcp/127.0.0.1/${p}") 2>/dev/null; then
				out+=("${p}")
			fi
		done
		printf '%s\n' "${out[*]}"
	fi
}
read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT <<<"$(free_ports 5)"
SERVER="https://127.0.0.1:${API_PORT}"
cp_log "ports: etcd ${ETCD_PORT}/${ETCD_PEER_PORT}, apiserver ${API_PORT}, controller-manager ${KCM_PORT}, scheduler ${SCHED_PORT}"

# --- certificates and keys (kept across restarts of the same STATE_DIR) ---------
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# Issues CERTS/NAME.{key,crt} signed by the test CA. Args: NAME SUBJECT EXT_KEY_USAGE [SAN]
issue_cert() {
	local name="$1" subject="$2" usage="$3" san="${4:-}"
	[[ -s "${CERTS}/${name}.crt" && -s "${CERTS}/${name}.key" ]] && return 0
	new_key "${CERTS}/${name}.key"
	openssl req -new -key "${CERTS}/${name}.key" -subj "${subject}" -out "${CERTS}/${name}.csr"
	{
		printf 'basicConstraints=critical,CA:FALSE\n'
		printf 'keyUsage=critical,digitalSignature,keyEncipherment\n'
		printf 'extendedKeyUsage=%s\n' "${usage}"
		[[ -z "${san}" ]] || printf 'subjectAltName=%s\n' "${san}"
	} >"${CERTS}/${name}.ext"
	openssl x509 -req -in "${CERTS}/${name}.csr" -CA "${CERTS}/ca.crt" -CAkey "${CERTS}/ca.key" \
		-set_serial "0x$(openssl rand -hex 12)" -days 3650 -extfile "${CERTS}/${name}.ext" \
		-out "${CERTS}/${name}.crt" 2>/dev/null
	rm -f "${CERTS}/${name}.csr" "${CERTS}/${name}.ext"
}

if [[ ! -s "${CERTS}/ca.crt" || ! -s "${CERTS}/ca.key" ]]; then
	new_key "${CERTS}/ca.key"
	openssl req -x509 -new -key "${CERTS}/ca.key" -subj "/CN=weir-test-ca" -days 3650 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "${CERTS}/ca.crt"
fi
issue_cert apiserver "/CN=kube-apiserver" serverAuth \
	"IP:127.0.0.1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue_cert admin "/O=system:masters/CN=weir-test-admin" clientAuth
issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
# Lets the apiserver proxy to aggregated API servers, and silences the other
# components' complaints about a missing request-header CA.
issue_cert front-proxy-client "/CN=front-proxy-client" clientAuth
# kwok stands in for every kubelet (node status, leases, pod status): it needs more than
# the Node authorizer grants one kubelet.
issue_cert kwok "/O=system:masters/CN=kwok-controller" clientAuth
if [[ ! -s "${CERTS}/service-account.key" ]]; then
	new_key "${CERTS}/service-account.key"
	openssl pkey -in "${CERTS}/service-account.key" -pubout -out "${CERTS}/service-account.pub" 2>/dev/null
fi
chmod 600 "${CERTS}"/*.key

# Writes a kubeconfig for the client certificate CERTS/NAME.{crt,key}. Args: FILE NAME
write_kubeconfig() {
	cat >"$1" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: weir-test
		  cluster:
		    server: ${SERVER}
		    certificate-authority-data: $(base64 -w0 <"${CERTS}/ca.crt")
		users:
		- name: $2
		  user:
		    client-certificate-data: $(base64 -w0 <"${CERTS}/$2.crt")
		    client-key-data: $(base64 -w0 <"${CERTS}/$2.key")
		contexts:
		- name: weir-test
		  context:
		    cluster: weir-test
		    user: $2
		current-context: weir-test
	EOF
	chmod 600 "$1"
}
write_kubeconfig "${KUBECONFIG_ADMIN}" admin
for c in controller-manager scheduler kwok; do
	write_kubeconfig "${CERTS}/${c}.kubeconfig" "${c}"
done

# --- processes -----------------------------------------------------------------
# Starts NAME in a new session (so it outlives this shell and its terminal) and
# records it. setsid does not fork here (a script's background job is not a group
# leader), so $! is the daemon itself.
start() {
	local name="$1"
	shift
	# Append, so the logs of an earlier run in the same STATE_DIR survive a restart.
	printf '=== %s: starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"${LOGS}/${name}.log"
	setsid "$@" </dev/null >>"${LOGS}/${name}.log" 2>&1 &
	local pid=$!
	local start_time
	start_time="$(cp_start_time "${pid}")" || cp_die "${name} exited at once; see ${LOGS}/${name}.log"
	printf '%s %s %s\n' "${name}" "${pid}" "${start_time}" >>"${PIDS}"
	cp_log "started ${name} (pid ${pid})"
}

# Fails with the tail of the log of any recorded process that has died.
check_alive() {
	local name pid start_time
	while read -r name pid start_time; do
		if ! cp_is_ours "${pid}" "${start_time}"; then
			cp_log "${name} (pid ${pid}) has exited; last lines of ${LOGS}/${name}.log:"
			tail -n 25 "${LOGS}/${name}.log" >&2 || true
			exit 1
		fi
	done <"${PIDS}"
}

# Polls CMD until it succeeds. Args: DESCRIPTION CMD...
wait_for() {
	local what="$1"
	shift
	local deadline=$((SECONDS + TIMEOUT)) t0="${SECONDS}"
	until "$@" >/dev/null 2>&1; do
		check_alive
		((SECONDS < deadline)) || cp_die "timed out after ${TIMEOUT}s waiting for ${what}"
		sleep 0.5
	done
	cp_log "${what}: ok after $((SECONDS - t0))s"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start etcd "${BIN}/etcd" \
	--name=weir-test \
	--data-dir="${STATE}/etcd" \
	--listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
	--advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
	--listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
	--initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
	--initial-cluster="weir-test=http://127.0.0.1:${ETCD_PEER_PORT}" \
	--unsafe-no-fsync=true
wait_for "etcd listening" port_open "${ETCD_PORT}"

# Without a real node no pod reaches the API server, so the built-in "kubernetes" Service
# gets no endpoints (--endpoint-reconciler-type=none); a loopback endpoint would fail
# validation anyway. With one, pods reach it on the node's bridge address.
if [[ "${NODE_MODE}" == real ]]; then
	apiserver_net=(--bind-address=0.0.0.0 --advertise-address=10.244.0.1 --endpoint-reconciler-type=lease
		--kubelet-client-certificate="${CERTS}/admin.crt" --kubelet-client-key="${CERTS}/admin.key"
		--kubelet-preferred-address-types=InternalIP)
else
	apiserver_net=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
fi
# An audit log at Metadata level, once per request when it completes: who asked for what.
if [[ "${WEIR_CONTROLPLANE_AUDIT:-0}" == 1 ]]; then
	printf '%s\n' 'apiVersion: audit.k8s.io/v1' 'kind: Policy' \
		'omitStages: [RequestReceived, ResponseStarted]' 'rules: [{level: Metadata}]' \
		>"${STATE}/audit-policy.yaml"
	apiserver_net+=(--audit-policy-file="${STATE}/audit-policy.yaml" --audit-log-path="${LOGS}/audit.log"
		--audit-log-maxbackup=0 --audit-log-mode=blocking)
fi
start kube-apiserver "${BIN}/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
	"${apiserver_net[@]}" \
	--secure-port="${API_PORT}" \
	--tls-cert-file="${CERTS}/apiserver.crt" \
	--tls-private-key-file="${CERTS}/apiserver.key" \
	--client-ca-file="${CERTS}/ca.crt" \
	--authorization-mode=Node,RBAC \
	--service-cluster-ip-range="${SERVICE_CIDR}" \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="${CERTS}/service-account.pub" \
	--service-account-signing-key-file="${CERTS}/service-account.key" \
	--requestheader-client-ca-file="${CERTS}/ca.crt" \
	--requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User \
	--requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="${CERTS}/front-proxy-client.crt" \
	--proxy-client-key-file="${CERTS}/front-proxy-client.key" \
	--allow-privileged=true \
	--profiling=false
wait_for "kube-apiserver /readyz" kubectl get --raw=/readyz

start kube-controller-manager "${BIN}/kube-controller-manager" \
	--kubeconfig="${CERTS}/controller-manager.kubeconfig" \
	--authentication-kubeconfig="${CERTS}/controller-manager.kubeconfig" \
	--authorization-kubeconfig="${CERTS}/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 \
	--secure-port="${KCM_PORT}" \
	--leader-elect=false \
	--controllers='*' \
	--use-service-account-credentials=true \
	--service-account-private-key-file="${CERTS}/service-account.key" \
	--root-ca-file="${CERTS}/ca.crt" \
	--cluster-signing-cert-file="${CERTS}/ca.crt" \
	--cluster-signing-key-file="${CERTS}/ca.key" \
	--service-cluster-ip-range="${SERVICE_CIDR}" \
	"${CLIENT_LIMITS[@]}" \
	--profiling=false

start kube-scheduler "${BIN}/kube-scheduler" \
	--kubeconfig="${CERTS}/scheduler.kubeconfig" \
	--authentication-kubeconfig="${CERTS}/scheduler.kubeconfig" \
	--authorization-kubeconfig="${CERTS}/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 \
	--secure-port="${SCHED_PORT}" \
	--leader-elect=false \
	"${CLIENT_LIMITS[@]}" \
	--profiling=false

if [[ "${NODE_MODE}" == kwok ]]; then
	# kwok reads ~/.kwok/kwok.yaml when it exists; a private HOME keeps a developer's file out.
	# Without node leases the nodes would only heartbeat through the status stage, every
	# 10-20 minutes, and the node lifecycle controller would mark them NotReady after 50s.
	mkdir -p "${STATE}/kwok-home"
	start kwok env HOME="${STATE}/kwok-home" "${BIN}/kwok" \
		--kubeconfig="${CERTS}/kwok.kubeconfig" \
		--config="${SHARE}/kwok-stages.yaml" \
		--manage-all-nodes=false \
		--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
		--cidr="${POD_CIDR}" \
		--node-ip=127.0.0.1 \
		--node-lease-duration-seconds=40

	for node in "${FAKE_NODES[@]}"; do
		cat <<-EOF
			---
			apiVersion: v1
			kind: Node
			metadata:
			  name: ${node}
			  annotations:
			    kwok.x-k8s.io/node: fake
			    node.alpha.kubernetes.io/ttl: "0"
			  labels:
			    kubernetes.io/hostname: ${node}
			    kubernetes.io/os: linux
			    kubernetes.io/arch: amd64
			    type: kwok
		EOF
	done | kubectl apply -f - >/dev/null || cp_die "could not create the fake nodes"

fi

wait_for "default ServiceAccount" kubectl get serviceaccount default --namespace default
if [[ "${NODE_MODE}" == kwok ]]; then
	node_refs=()
	for node in "${FAKE_NODES[@]}"; do node_refs+=("node/${node}"); done
	wait_for "fake nodes Ready" kubectl wait --for=condition=Ready --timeout=2s "${node_refs[@]}"
	wait_for "fake node leases" kubectl get lease --namespace kube-node-lease "${FAKE_NODES[@]}"
else
	# shellcheck source-path=SCRIPTDIR source=node-up.sh
	source "${HERE}/node-up.sh"
fi
check_alive

{
	printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_ADMIN}"
	# shellcheck disable=SC2016 # ${PATH} is expanded by whoever sources the file.
	printf 'export PATH=%q:"${PATH}"\n' "${BIN}"
	printf 'export WEIR_CONTROLPLANE_BIN=%q\n' "${BIN}"
	printf 'export WEIR_CONTROLPLANE_SERVER=%q\n' "${SERVER}"
	printf 'export WEIR_CONTROLPLANE_STATE=%q\n' "${STATE}"
	# Keep helm's repositories, cache and release plugins out of the user's home.
	printf 'export HELM_CACHE_HOME=%q HELM_CONFIG_HOME=%q HELM_DATA_HOME=%q\n' \
		"${STATE}/helm/cache" "${STATE}/helm/config" "${STATE}/helm/data"
} >"${STATE}/env"

started_ok=true
cp_log "control plane up in $((SECONDS - t_start))s at ${SERVER}; source ${STATE}/env to use it"
