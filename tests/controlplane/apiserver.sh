#!/usr/bin/env bash
# Stops or starts again the kube-apiserver of a control plane started by up.sh, leaving etcd
# and every other process running: the API server away, as in an outage or an upgrade.
#
# Usage: tests/controlplane/apiserver.sh stop|start STATE_DIR
#   stop   SIGTERM (SIGKILL after WEIR_CONTROLPLANE_GRACE, default 5, seconds), waits until
#          it is gone and keeps its command line in STATE_DIR/kube-apiserver.cmdline
#   start  runs that command line again (same port, certificates and etcd), records the new
#          pid in STATE_DIR/pids for down.sh, and waits until /readyz answers ok
# Environment:
#   WEIR_CONTROLPLANE_TIMEOUT  seconds allowed for /readyz (default 180)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${HERE}/lib.sh"

[[ $# -eq 2 && ( "$1" == stop || "$1" == start ) ]] || cp_die "usage: $0 stop|start STATE_DIR"
[[ -d "$2" ]] || cp_die "$2 does not exist"
ACTION="$1"
STATE="$(cd "$2" && pwd)"
PIDS="${STATE}/pids"
SAVED="${STATE}/kube-apiserver.cmdline"
LOG="${STATE}/logs/kube-apiserver.log"
GRACE="${WEIR_CONTROLPLANE_GRACE:-5}"
TIMEOUT="${WEIR_CONTROLPLANE_TIMEOUT:-180}"

# Prints "pid starttime" of the recorded kube-apiserver.
recorded() {
	local name pid start_time
	while read -r name pid start_time; do
		if [[ "${name}" == kube-apiserver ]]; then
			printf '%s %s\n' "${pid}" "${start_time}"
			return 0
		fi
	done <"${PIDS}"
	return 1
}

line="$(recorded)" || cp_die "no kube-apiserver recorded in ${PIDS}"
read -r pid start_time <<<"${line}"

if [[ "${ACTION}" == stop ]]; then
	cp_is_ours "${pid}" "${start_time}" || cp_die "kube-apiserver (pid ${pid}) is not running"
	cp "/proc/${pid}/cmdline" "${SAVED}"
	kill -TERM "${pid}"
	deadline=$((SECONDS + GRACE))
	while cp_is_ours "${pid}" "${start_time}" && ((SECONDS < deadline)); do sleep 0.1; done
	if cp_is_ours "${pid}" "${start_time}"; then
		kill -KILL "${pid}" 2>/dev/null || true
		deadline=$((SECONDS + 5))
		while cp_is_ours "${pid}" "${start_time}" && ((SECONDS < deadline)); do sleep 0.1; done
	fi
	! cp_is_ours "${pid}" "${start_time}" || cp_die "kube-apiserver (pid ${pid}) did not stop"
	cp_log "stopped kube-apiserver (pid ${pid})"
	exit 0
fi

! cp_is_ours "${pid}" "${start_time}" || cp_die "kube-apiserver (pid ${pid}) is still running"
[[ -s "${SAVED}" ]] || cp_die "${SAVED} is missing: stop it with $0 stop first"
mapfile -d '' -t argv <"${SAVED}"
printf '=== %s: starting again %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${argv[*]}" >>"${LOG}"
# As up.sh starts it: its own session, so it outlives this shell.
setsid "${argv[@]}" </dev/null >>"${LOG}" 2>&1 &
new_pid=$!
new_start="$(cp_start_time "${new_pid}")" || cp_die "kube-apiserver exited at once; see ${LOG}"
sed -i "s/^kube-apiserver .*/kube-apiserver ${new_pid} ${new_start}/" "${PIDS}"
cp_log "started kube-apiserver again (pid ${new_pid})"

BIN="$("${HERE}/build.sh")" || cp_die "building the control-plane binaries failed"
deadline=$((SECONDS + TIMEOUT))
until "${BIN}/kubectl" --kubeconfig "${STATE}/kubeconfig" get --raw=/readyz >/dev/null 2>&1; do
	cp_is_ours "${new_pid}" "${new_start}" || cp_die "kube-apiserver exited; see ${LOG}"
	((SECONDS < deadline)) || cp_die "kube-apiserver not ready within ${TIMEOUT}s"
	sleep 0.5
done
cp_log "kube-apiserver ready again"
