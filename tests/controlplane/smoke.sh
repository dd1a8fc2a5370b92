#!/usr/bin/env bash
# Proves the test control plane works end to end: starts it, rolls out a two-replica
# Deployment onto the kwok nodes, deletes it and watches the garbage collector remove
# its ReplicaSet and Pods, checks that kubectl and helm see Kubernetes v1.34.x (helm
# through a chart whose kubeVersion constraint must match), and stops it again, also
# when a step fails.
#
# Usage: tests/controlplane/smoke.sh [STATE_DIR]
# Without STATE_DIR a temporary one is used and removed after a successful run; after a
# failure it is kept so its logs can be read.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${HERE}/lib.sh"

EXPECT_MINOR=v1.34.
TIMEOUT=120
APP=weir-smoke

if [[ $# -ge 1 ]]; then
	STATE="$1"
	own_state=false
else
	STATE="$(mktemp -d "${TMPDIR:-/tmp}/weir-controlplane-smoke.XXXXXX")"
	own_state=true
fi

passed=0
current="starting"
t_total="${SECONDS}"
finish() {
	local rc=$?
	trap - EXIT
	if ((rc != 0)); then
		cp_log "FAILED during: ${current}"
		for log in "${STATE}"/logs/*.log; do
			[[ -f "${log}" ]] || continue
			cp_log "--- last lines of ${log}"
			tail -n 15 "${log}" >&2 || true
		done
	fi
	local down_args=("${STATE}")
	if ((rc == 0)) && [[ "${own_state}" == true ]]; then
		down_args=(--purge "${STATE}")
	fi
	local t_down="${SECONDS}"
	if "${HERE}/down.sh" "${down_args[@]}"; then
		((rc != 0)) || passed=$((passed + 1))
		cp_log "ok: control plane down ($((SECONDS - t_down))s); whole run $((SECONDS - t_total))s"
	else
		rc=1
	fi
	if ((rc == 0)); then
		printf 'smoke: %d passed, 0 failed\n' "${passed}"
	else
		printf 'smoke: %d passed, 1 failed\n' "${passed}"
	fi
	exit "${rc}"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
	current="$1"
	t_step="${SECONDS}"
}
pass() {
	passed=$((passed + 1))
	cp_log "ok: ${current} ($((SECONDS - t_step))s)"
}

# Polls CMD until its output equals WANT. Args: WANT CMD...
wait_output() {
	local want="$1" got=""
	shift
	local deadline=$((SECONDS + TIMEOUT))
	while true; do
		got="$("$@" 2>&1)" || true
		[[ "${got}" == "${want}" ]] && return 0
		((SECONDS < deadline)) || cp_die "timed out after ${TIMEOUT}s; wanted '${want}', last saw '${got}'"
		sleep 0.5
	done
}

step "control plane up"
"${HERE}/up.sh" "${STATE}"
# shellcheck source=/dev/null
source "${STATE}/env"
pass

step "Deployment with 2 replicas Running and Ready on fake nodes"
kubectl apply -f - >/dev/null <<-EOF
	apiVersion: apps/v1
	kind: Deployment
	metadata:
	  name: ${APP}
	  namespace: default
	spec:
	  replicas: 2
	  selector:
	    matchLabels: {app: ${APP}}
	  template:
	    metadata:
	      labels: {app: ${APP}}
	    spec:
	      containers:
	      - name: app
	        image: registry.invalid/weir/smoke:0
EOF
kubectl rollout status "deployment/${APP}" --timeout="${TIMEOUT}s" >/dev/null
# One line per pod: phase, Ready condition, and whether its node is a kwok node.
pods_state() {
	kubectl get pods -l "app=${APP}" -o \
		jsonpath='{range .items[*]}{.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.spec.nodeName}{"\n"}{end}' |
		sed -E 's/ kwok-node-[0-9]+$/ fake-node/'
}
wait_output $'Running True fake-node\nRunning True fake-node' pods_state
pass

step "ReplicaSet and Pods garbage-collected after deleting the Deployment"
[[ "$(kubectl get replicasets -l "app=${APP}" -o name | wc -l)" -eq 1 ]] ||
	cp_die "expected exactly one ReplicaSet for ${APP}"
kubectl delete "deployment/${APP}" --cascade=background --wait=true >/dev/null
wait_output "" kubectl get replicasets,pods -l "app=${APP}" -o name
pass

step "kubectl client and server report ${EXPECT_MINOR}x"
versions="$(kubectl version)"
client_version="$(awk '/^Client Version:/ { print $3 }' <<<"${versions}")"
server_version="$(awk '/^Server Version:/ { print $3 }' <<<"${versions}")"
[[ "${client_version}" == "${EXPECT_MINOR}"* && "${server_version}" == "${EXPECT_MINOR}"* ]] ||
	cp_die "kubectl reports client ${client_version}, server ${server_version}"
cp_log "kubectl client ${client_version}, server ${server_version}"
pass

step "helm installs a chart that requires Kubernetes ${EXPECT_MINOR}x"
helm_version="$(helm version --template '{{ .Version }}')"
[[ "${helm_version}" == v3.* ]] || cp_die "unexpected helm version ${helm_version}"
chart="${STATE}/smoke-chart"
mkdir -p "${chart}/templates"
cat >"${chart}/Chart.yaml" <<-EOF
	apiVersion: v2
	name: ${APP}
	version: 0.1.0
	kubeVersion: ">=1.34.0-0 <1.35.0-0"
EOF
cat >"${chart}/templates/configmap.yaml" <<-'EOF'
	apiVersion: v1
	kind: ConfigMap
	metadata:
	  name: {{ .Release.Name }}
	data:
	  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
EOF
offline="$(helm template "${APP}" "${chart}" | sed -n 's/^ *kubeVersion: "\(.*\)"$/\1/p')"
[[ "${offline}" == "${EXPECT_MINOR}"* ]] || cp_die "helm template assumes Kubernetes '${offline}'"
helm install "${APP}" "${chart}" --namespace default --wait --timeout "${TIMEOUT}s" >/dev/null
live="$(kubectl get configmap "${APP}" -o jsonpath='{.data.kubeVersion}')"
[[ "${live}" == "${server_version}" ]] || cp_die "helm saw Kubernetes '${live}', server is ${server_version}"
helm uninstall "${APP}" --namespace default --wait >/dev/null
cp_log "helm ${helm_version}: offline Kubernetes ${offline}, live ${live}"
pass

current="control plane down"
