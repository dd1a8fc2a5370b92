#!/usr/bin/env bash
# Tears down what node-up.sh set up, in two phases that down.sh runs around stopping the
# processes:
#   node-down.sh --pods STATE_DIR   while containerd runs: every container and sandbox of
#                                   the node killed and removed
#   node-down.sh --host STATE_DIR   once every process is gone: mounts under STATE_DIR
#                                   (volumes, rootfs, the sandboxes' network namespaces),
#                                   kube-proxy's iptables chains, the weir0 bridge, the lock
# Both are idempotent and succeed on a half-started node.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${HERE}/lib.sh"
[[ $# -eq 2 ]] || cp_die "usage: $0 --pods|--host STATE_DIR"
STATE="$(cd "$2" 2>/dev/null && pwd)" || exit 0
NODE_DIR="${STATE}/node"
[[ -d "${NODE_DIR}" ]] || exit 0
SOCK="${NODE_DIR}/containerd.sock"
BRIDGE=weir0
ctr() { command ctr --address "${SOCK}" --namespace k8s.io "$@"; }

# Prints PID and every descendant of it, children before parents.
descendants() {
	local child
	for child in $(ps -o pid= --ppid "$1"); do
		descendants "${child}"
	done
	printf '%s\n' "$1"
}

case "$1" in
--pods)
	if ! { [[ -S "${SOCK}" ]] && ctr version >/dev/null 2>&1; }; then
		# containerd is gone but its shims, and the containers under them, may not be.
		for proc in /proc/[0-9]*; do
			[[ "$(readlink "${proc}/exe" 2>/dev/null)" == */containerd-shim-runc-v2 ]] || continue
			tr '\0' '\n' <"${proc}/cmdline" 2>/dev/null | grep -qxF -- "${SOCK}" || continue
			descendants "${proc#/proc/}" | xargs -r kill -KILL 2>/dev/null
		done
		exit 0
	fi
	# Stop the kubelet from restarting anything first, then kill and remove every task;
	# their network namespaces go in the --host phase.
	while read -r name pid start; do
		[[ "${name}" == kubelet ]] && cp_is_ours "${pid}" "${start}" && kill -TERM "${pid}"
	done <"${STATE}/pids"
	for task in $(ctr tasks list -q 2>/dev/null); do
		ctr tasks delete --force "${task}" >/dev/null 2>&1
	done
	;;
--host)
	# Every mount the kubelet or containerd left below the state directory, deepest first.
	awk -v d="${STATE}/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "${m}" 2>/dev/null
	done
	bin="$(ls -d "${WEIR_CACHE_DIR:-$HOME/.cache/weir}"/controlplane/node-*/bin 2>/dev/null | head -n 1)"
	if [[ -x "${bin}/kube-proxy" ]]; then
		"${bin}/kube-proxy" --cleanup >/dev/null 2>&1
	fi
	# What kube-proxy's cleanup leaves: the kubelet's KUBE-FIREWALL and canary chains.
	for ipt in iptables ip6tables; do
		for table in filter nat mangle; do
			"${ipt}-save" -t "${table}" 2>/dev/null | awk '/^-A .* -j KUBE-/ { $1 = ""; print }' |
				while read -r rule; do
					# shellcheck disable=SC2086 # the rule's words are separate arguments
					"${ipt}" -t "${table}" -D ${rule} 2>/dev/null
				done
			"${ipt}-save" -t "${table}" 2>/dev/null | awk -F'[: ]' '/^:KUBE-/ { print $2 }' |
				while read -r chain; do
					"${ipt}" -t "${table}" -F "${chain}" 2>/dev/null
					"${ipt}" -t "${table}" -X "${chain}" 2>/dev/null
				done
		done
	done
	ip link show "${BRIDGE}" >/dev/null 2>&1 && ip link delete "${BRIDGE}"
	rm -f /run/weir-test-node.owner
	;;
*) cp_die "usage: $0 --pods|--host STATE_DIR" ;;
esac
exit 0
