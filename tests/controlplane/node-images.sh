#!/usr/bin/env bash
# Builds the images a real test node runs, without a registry, and saves each as an OCI
# archive that `ctr images import` loads:
#   localhost/weir-pause:1      the pod sandbox (pause/main.go, static, FROM scratch)
#   localhost/weir-pgbench:15   this machine's pgbench and the libraries it links, on the
#                               Weir base image (scripts/image-base.sh)
#   localhost/weir:test         only with --weir DIR: the Containerfile's prebuilt target on
#                               the binaries in DIR (e.g. target/debug), debug info stripped
# Pause and pgbench are cached under ~/.cache/weir/controlplane/node-images; the weir
# image is rebuilt on every call with --weir, since its binaries change.
# Usage: tests/controlplane/node-images.sh [--weir DIR]
# Prints the archive paths, one a line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
PAUSE_REVISION=1
CACHE="${WEIR_CACHE_DIR:-$HOME/.cache/weir}/controlplane/node-images"
PODMAN=(podman --runtime /usr/sbin/runc)
log() { printf 'controlplane/node-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

weir_dir=""
if [[ "${1:-}" == --weir ]]; then
	weir_dir="${2:?--weir needs a directory}"
fi
mkdir -p "${CACHE}"
exec 9>"${CACHE}/.lock"
flock 9
"${ROOT}/scripts/ensure-image-deps.sh"
work="$(mktemp -d /tmp/weir-node-images.XXXXXX)"
trap 'rm -rf "${work}"' EXIT

save() { # IMAGE ARCHIVE
	"${PODMAN[@]}" save --quiet --format oci-archive --output "$2.part" "$1"
	mv -f "$2.part" "$2"
}

pause="${CACHE}/pause-${PAUSE_REVISION}.oci.tar"
if [[ ! -s "${pause}" ]]; then
	log "building the pause image"
	mkdir -p "${work}/pause"
	(cd "${HERE}/pause" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
		go build -trimpath -ldflags "-s -w" -o "${work}/pause/pause" .) || die "building pause failed"
	printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"${work}/pause/Containerfile"
	"${PODMAN[@]}" build --quiet --tag localhost/weir-pause:1 "${work}/pause" >/dev/null
	save localhost/weir-pause:1 "${pause}"
fi
printf '%s\n' "${pause}"

pgbench_bin="$(ls -d /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)"
pgbench="${CACHE}/pgbench-r2-$(sha256sum "${pgbench_bin}" | cut -c1-12).oci.tar"
if [[ ! -s "${pgbench}" ]]; then
	log "building the pgbench image from ${pgbench_bin}"
	base="$("${ROOT}/scripts/image-base.sh")"
	mkdir -p "${work}/pgbench/root/usr/local/bin"
	cp "${pgbench_bin}" "${work}/pgbench/root/usr/local/bin/pgbench"
	# Each library by the path the loader finds it at, links resolved, so that no loader
	# configuration is needed and the base's merged-/usr links (/lib -> usr/lib) survive.
	ldd "${pgbench_bin}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
		dir="$(realpath -e "$(dirname "${lib}")")"
		mkdir -p "${work}/pgbench/root${dir}"
		cp -L "${lib}" "${work}/pgbench/root${dir}/$(basename "${lib}")"
	done
	printf 'FROM %s\nCOPY root/ /\nENTRYPOINT ["/usr/local/bin/pgbench"]\n' "${base}" >"${work}/pgbench/Containerfile"
	"${PODMAN[@]}" build --quiet --tag localhost/weir-pgbench:15 "${work}/pgbench" >/dev/null
	save localhost/weir-pgbench:15 "${pgbench}"
fi
printf '%s\n' "${pgbench}"

if [[ -n "${weir_dir}" ]]; then
	mkdir -p "${work}/weir"
	for bin in weir weir-operator; do
		[[ -x "${weir_dir}/${bin}" ]] || die "${weir_dir}/${bin} not built"
		objcopy --strip-debug "${weir_dir}/${bin}" "${work}/weir/${bin}"
	done
	base="$("${ROOT}/scripts/image-base.sh")"
	"${PODMAN[@]}" build --quiet --file "${ROOT}/Containerfile" --target prebuilt \
		--build-arg RUNTIME_IMAGE="${base}" --build-arg PREBUILT_DIR=. \
		--tag localhost/weir:test "${work}/weir" >/dev/null 2>"${work}/build.log" ||
		{ cat "${work}/build.log" >&2; die "building localhost/weir:test failed"; }
	save localhost/weir:test "${CACHE}/weir-test.oci.tar"
	printf '%s\n' "${CACHE}/weir-test.oci.tar"
fi
