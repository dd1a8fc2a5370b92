#!/usr/bin/env bash
# Builds what a real node of the test cluster runs on the host: kubelet and kube-proxy
# from k8s.io/kubernetes (the API server's version, pinned in build.sh) and CoreDNS from
# its Go module. Cached per set of versions beside the control plane's binaries, so only
# the first run compiles.
#
# Usage: tests/controlplane/build-node.sh
# Prints the directory holding the binaries on stdout (progress goes to stderr).
# Environment: WEIR_CACHE_DIR, GO, WEIR_CONTROLPLANE_GOCACHE as for build.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Kubernetes version must match the API server's: take it from build.sh's pins.
KUBERNETES_VERSION="$(sed -n 's/^KUBERNETES_VERSION=//p' "${HERE}/build.sh")"
[[ -n "${KUBERNETES_VERSION}" ]] || { echo "build-node: no KUBERNETES_VERSION in build.sh" >&2; exit 1; }
COREDNS_VERSION=v1.14.7
RECIPE_REVISION=1

BINARIES=(kubelet kube-proxy coredns)
KEY="node-k8s-${KUBERNETES_VERSION}_coredns-${COREDNS_VERSION}_r${RECIPE_REVISION}"
ROOT="${WEIR_CACHE_DIR:-$HOME/.cache/weir}/controlplane/${KEY}"
BIN="${ROOT}/bin"
STAMP="${ROOT}/stamp"

log() { printf 'controlplane/build-node: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_built() {
	[[ -f "${STAMP}" && "$(head -n 1 "${STAMP}")" == "${KEY}" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "${BIN}/${b}" ]] || return 1
	done
}

if is_built; then
	printf '%s\n' "${BIN}"
	exit 0
fi
mkdir -p "${ROOT}"
exec 9>"${ROOT}/.lock"
flock 9
if is_built; then
	printf '%s\n' "${BIN}"
	exit 0
fi

GO="${GO:-$(command -v go || true)}"
[[ -n "${GO}" || ! -x /usr/local/go/bin/go ]] || GO=/usr/local/go/bin/go
[[ -n "${GO}" ]] || die "no go toolchain found (set GO=/path/to/go or put go on PATH)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-buildvcs=false"
export GOCACHE="${WEIR_CONTROLPLANE_GOCACHE:-${ROOT}/gocache}"

now() { printf '%s' "${EPOCHREALTIME}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
nice_go() { nice -n 19 "${GO}" "$@"; }
build_start="$(now)"
log "cold build of ${KEY} into ${ROOT}"
rm -f "${STAMP}"
mkdir -p "${BIN}" "${ROOT}/src"

# --- kubelet, kube-proxy: the control plane's wrapper module, with these two tools ---
cp_bin="$("${HERE}/build.sh")" || die "the control plane's build failed"
k8s_src="${ROOT}/src/kubernetes"
mkdir -p "${k8s_src}"
# Same requires and replaces as the API server's build, so both run the same code.
sed -e 's#^module .*#module weir.test/controlplane/node#' \
	-e '/^tool (/,/^)/c\tool (\n\tk8s.io/kubernetes/cmd/kubelet\n\tk8s.io/kubernetes/cmd/kube-proxy\n)' \
	"${cp_bin}/../src/kubernetes/go.mod" >"${k8s_src}/go.mod"
cp "${cp_bin}/../src/kubernetes/go.sum" "${k8s_src}/go.sum"
t="$(now)"
(cd "${k8s_src}" && nice_go mod tidy) >"${k8s_src}/tidy.log" 2>&1 ||
	{ tail -n 30 "${k8s_src}/tidy.log" >&2; die "go mod tidy failed in ${k8s_src}"; }
log "kubelet's dependencies resolved in $(elapsed "${t}")s"

k8s_major="${KUBERNETES_VERSION#v}"
k8s_major="${k8s_major%%.*}"
k8s_minor="${KUBERNETES_VERSION#v*.}"
k8s_minor="${k8s_minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=${k8s_major}"
	ldflags+=" -X ${pkg}.gitMinor=${k8s_minor} -X ${pkg}.gitCommit= -X ${pkg}.gitTreeState=clean"
done
for c in kubelet kube-proxy; do
	t="$(now)"
	log "building ${c} ..."
	(cd "${k8s_src}" && nice_go build -trimpath -ldflags "${ldflags}" -o "${BIN}/${c}.tmp" "k8s.io/kubernetes/cmd/${c}") ||
		die "building ${c} failed"
	mv -f "${BIN}/${c}.tmp" "${BIN}/${c}"
	log "built ${c} in $(elapsed "${t}")s"
done

# --- CoreDNS (a plain module: go install) ---------------------------------------------
t="$(now)"
log "building coredns ..."
# Its module download list is long: kept in a log shown only on failure.
(cd "${ROOT}/src" && GOBIN="${ROOT}/src/gobin" nice_go install -trimpath -ldflags "-s -w" \
	"github.com/coredns/coredns@${COREDNS_VERSION}") >"${ROOT}/src/coredns.log" 2>&1 ||
	{ tail -n 30 "${ROOT}/src/coredns.log" >&2; die "building coredns failed"; }
mv -f "${ROOT}/src/gobin/coredns" "${BIN}/coredns"
rm -rf "${ROOT}/src/gobin"
log "built coredns in $(elapsed "${t}")s"

[[ -n "${WEIR_CONTROLPLANE_GOCACHE:-}" ]] || rm -rf "${GOCACHE}"
printf '%s\nbuilt=%s\n' "${KEY}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"${STAMP}"
log "done in $(elapsed "${build_start}")s; binaries in ${BIN}"
printf '%s\n' "${BIN}"
