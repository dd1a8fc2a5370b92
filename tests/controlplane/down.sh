#!/usr/bin/env bash
# Stops a control plane started by up.sh: SIGTERM to every recorded process, SIGKILL
# to whatever is still alive after a grace period, then checks that no process of it
# is left. Keeps STATE_DIR (logs, etcd data, certificates) unless --purge is given.
#
# Usage: tests/controlplane/down.sh [--purge] STATE_DIR
# Exits non-zero if a process could not be stopped.
# Environment:
#   WEIR_CONTROLPLANE_GRACE  seconds between SIGTERM and SIGKILL (default 5)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${HERE}/lib.sh"

purge=false
state_arg=""
for arg in "$@"; do
	case "${arg}" in
	--purge) purge=true ;;
	-*) cp_die "unknown option ${arg}; usage: $0 [--purge] STATE_DIR" ;;
	*)
		[[ -z "${state_arg}" ]] || cp_die "usage: $0 [--purge] STATE_DIR"
		state_arg="${arg}"
		;;
	esac
done
[[ -n "${state_arg}" ]] || cp_die "usage: $0 [--purge] STATE_DIR"
if [[ ! -d "${state_arg}" ]]; then
	cp_log "${state_arg} does not exist; nothing to stop"
	exit 0
fi
STATE="$(cd "${state_arg}" && pwd)"
PIDS="${STATE}/pids"
GRACE="${WEIR_CONTROLPLANE_GRACE:-5}"
[[ "${GRACE}" =~ ^[0-9]+$ ]] || cp_die "WEIR_CONTROLPLANE_GRACE must be a number of seconds"

names=()
pids=()
starts=()
if [[ -f "${PIDS}" ]]; then
	while read -r name pid start_time; do
		[[ -n "${name}" ]] || continue
		[[ "${pid}" =~ ^[0-9]+$ ]] || cp_die "malformed line in ${PIDS}: ${name} ${pid} ${start_time}"
		names+=("${name}")
		pids+=("${pid}")
		starts+=("${start_time}")
	done <"${PIDS}"
fi

alive() {
	local i
	for i in "${!pids[@]}"; do
		if cp_is_ours "${pids[i]}" "${starts[i]}"; then
			printf '%s\n' "${i}"
		fi
	done
}

# A real node's containers first, while containerd still answers.
"${HERE}/node-down.sh" --pods "${STATE}"

# Stop in reverse start order so clients go before the servers they talk to.
mapfile -t running < <(alive)
for ((k = ${#running[@]} - 1; k >= 0; k--)); do
	i="${running[k]}"
	kill -TERM "${pids[i]}" 2>/dev/null || true
done
if ((${#running[@]} > 0)); then
	cp_log "sent SIGTERM to ${#running[@]} process(es); waiting up to ${GRACE}s"
fi

deadline=$((SECONDS + GRACE))
while true; do
	mapfile -t running < <(alive)
	((${#running[@]} > 0 && SECONDS < deadline)) || break
	sleep 0.2
done
for i in "${running[@]}"; do
	cp_log "${names[i]} (pid ${pids[i]}) still running ${GRACE}s after SIGTERM; sending SIGKILL"
	kill -KILL "${pids[i]}" 2>/dev/null || true
done

# SIGKILL is not instant either: give the kernel a moment, then verify.
deadline=$((SECONDS + 5))
while true; do
	mapfile -t running < <(alive)
	((${#running[@]} > 0 && SECONDS < deadline)) || break
	sleep 0.2
done
failed=false
for i in "${running[@]}"; do
	cp_log "error: ${names[i]} (pid ${pids[i]}) is still running"
	failed=true
done

# Anything else still running one of the control-plane binaries against this
# STATE_DIR (e.g. from a start whose pid file was lost) is reported, not guessed at.
for proc in /proc/[0-9]*; do
	exe="$(readlink "${proc}/exe" 2>/dev/null)" || continue
	case "${exe##*/}" in
	etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok | kubelet | kube-proxy | coredns | containerd | containerd-shim-runc-v2) ;;
	*) continue ;;
	esac
	if tr '\0' '\n' <"${proc}/cmdline" 2>/dev/null | grep -qF -- "${STATE}/"; then
		cp_log "error: unrecorded ${exe##*/} (pid ${proc#/proc/}) still uses ${STATE}"
		failed=true
	fi
done

# The real node's bridge, network namespaces, iptables chains and mounts.
"${HERE}/node-down.sh" --host "${STATE}"

if [[ "${failed}" == true ]]; then
	cp_die "some processes are still running; ${STATE} left in place"
fi
if [[ "${purge}" == true ]]; then
	rm -rf "${STATE}"
	cp_log "stopped and removed ${STATE}"
else
	cp_log "stopped; logs and data kept in ${STATE}"
fi
