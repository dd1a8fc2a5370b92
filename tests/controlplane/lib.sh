# shellcheck shell=bash
# Helpers shared by up.sh, down.sh and smoke.sh; sourced, never run.

CP_SCRIPT="$(basename "$0" .sh)"

# Prefixes every message with the script's name so interleaved CI logs stay readable.
cp_log() { printf 'controlplane/%s: %s\n' "${CP_SCRIPT}" "$*" >&2; }
cp_die() {
	cp_log "error: $*"
	exit 1
}

# Prints "STATE STARTTIME" of PID from /proc (STARTTIME in clock ticks since boot).
# The pid plus its start time identify a process, so a recycled pid is never
# mistaken for one we started.
cp_proc_info() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	# Field 2 (comm) may contain spaces and parens; what follows its last paren is fixed.
	stat="${stat##*) }"
	local -a fields
	read -r -a fields <<<"${stat}"
	printf '%s %s\n' "${fields[0]}" "${fields[19]}"
}

# Prints the start time of PID, for recording next to it.
cp_start_time() {
	local info
	info="$(cp_proc_info "$1")" || return 1
	printf '%s\n' "${info#* }"
}

# Succeeds while PID is alive (not a zombie) and is still the process that started at START.
cp_is_ours() {
	local info
	info="$(cp_proc_info "$1")" || return 1
	[[ "${info#* }" == "$2" && "${info%% *}" != Z ]]
}
