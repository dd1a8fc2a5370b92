#!/usr/bin/env bash
# Builds the binaries of a real (but kubelet-less) Kubernetes control plane from Go
# modules: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd,
# kwok and helm. The result is cached per set of pinned versions outside the repo,
# so only the first run pays for compilation.
#
# Usage: tests/controlplane/build.sh
# Prints the directory holding the binaries on stdout (progress goes to stderr).
# Environment:
#   WEIR_CACHE_DIR  cache root (default: $HOME/.cache/weir)
#   GO              go binary to use (default: go on PATH, else /usr/local/go/bin/go)
#   WEIR_CONTROLPLANE_GOCACHE
#                   go build cache to use and keep; by default a private one under the
#                   cache dir is used and deleted after a successful build (it grows to
#                   several GB and is worthless once the binaries exist)
set -euo pipefail

# --- Pinned versions: change them here and nowhere else. ---------------------
KUBERNETES_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
# Bumped whenever the build recipe below changes, so that stale caches rebuild.
RECIPE_REVISION=1
# ------------------------------------------------------------------------------

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_r${RECIPE_REVISION}"
ROOT="${WEIR_CACHE_DIR:-$HOME/.cache/weir}/controlplane/${KEY}"
BIN="${ROOT}/bin"
STAMP="${ROOT}/stamp"
STAMP_WANT="${KEY}"

log() { printf 'controlplane/build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Warm path: no go, no network, no lock; just files.
is_built() {
	[[ -f "${STAMP}" ]] || return 1
	[[ "$(head -n 1 "${STAMP}")" == "${STAMP_WANT}" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "${BIN}/${b}" ]] || return 1
	done
	[[ -f "${ROOT}/share/kwok-stages.yaml" ]]
}

if is_built; then
	printf '%s\n' "${BIN}"
	exit 0
fi

mkdir -p "${ROOT}"
# Serialise concurrent cold builds of the same key; the loser finds a warm cache.
exec 9>"${ROOT}/.lock"
flock 9
if is_built; then
	printf '%s\n' "${BIN}"
	exit 0
fi

GO="${GO:-$(command -v go || true)}"
if [[ -z "${GO}" && -x /usr/local/go/bin/go ]]; then
	GO=/usr/local/go/bin/go
fi
[[ -n "${GO}" ]] || die "no go toolchain found (set GO=/path/to/go or put go on PATH)"

# The pinned modules declare `go 1.26.0`; use the local toolchain and say so
# plainly instead of letting go try to download another one.
export GOTOOLCHAIN=local
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"
export GOCACHE="${WEIR_CONTROLPLANE_GOCACHE:-${ROOT}/gocache}"
go_version="$("${GO}" env GOVERSION)"
go_minor="$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"${go_version}")"
if [[ ! "${go_minor}" =~ ^[0-9]+$ ]] || ((go_minor < 26)); then
	die "need go >= 1.26 (the pinned modules require it), found ${go_version} at ${GO}"
fi

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Runs a go command at the lowest CPU priority: the machine is shared with other builds.
nice_go() { nice -n 19 "${GO}" "$@"; }

# Runs `go mod tidy` in DIR; its long download list goes to a log shown only on failure.
tidy() {
	local t
	t="$(now)"
	if ! (cd "$1" && nice_go mod tidy) >"$1/tidy.log" 2>&1; then
		tail -n 30 "$1/tidy.log" >&2
		die "go mod tidy failed in $1 (full output in $1/tidy.log)"
	fi
	log "dependencies of $(basename "$1") resolved in $(elapsed "${t}")s"
}

# Prints one field of `go mod download -json MODULE@VERSION`.
module_field() {
	"${GO}" mod download -json "$1" |
		awk -v f="\"$2\":" '$1 == f { sub(/^[^:]*: *"/, ""); sub(/",?$/, ""); print; exit }'
}

build_start="$(now)"
log "cold build of ${KEY} with ${go_version} into ${ROOT}"
rm -f "${STAMP}"
mkdir -p "${BIN}" "${ROOT}/src" "${ROOT}/share"

# --- Kubernetes ---------------------------------------------------------------
# k8s.io/kubernetes points its staging modules at ./staging via replace directives,
# which `go install pkg@version` refuses. A wrapper module requires it and maps each
# staging module to its published v0.<minor>.<patch> tag instead.
log "resolving k8s.io/kubernetes@${KUBERNETES_VERSION}"
k8s_mod="$(module_field "k8s.io/kubernetes@${KUBERNETES_VERSION}" GoMod)" || true
k8s_info="$(module_field "k8s.io/kubernetes@${KUBERNETES_VERSION}" Info)" || true
[[ -f "${k8s_mod}" && -f "${k8s_info}" ]] || die "could not download k8s.io/kubernetes@${KUBERNETES_VERSION}"
staging_version="v0.${KUBERNETES_VERSION#v1.}"
k8s_src="${ROOT}/src/kubernetes"
mkdir -p "${k8s_src}"
{
	printf 'module weir.test/controlplane/kubernetes\n\ngo 1.26\n\n'
	# Keep upstream's runtime behaviour defaults (godebug lines or block).
	awk '/^godebug \(/ { inblock = 1 } inblock || /^godebug / { print } inblock && /^\)/ { inblock = 0 }' "${k8s_mod}"
	printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${KUBERNETES_VERSION}"
	awk -v v="${staging_version}" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "${k8s_mod}"
	printf ')\n\ntool (\n'
	for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
		printf '\tk8s.io/kubernetes/cmd/%s\n' "${c}"
	done
	printf ')\n'
} >"${k8s_src}/go.mod"
replaced="$(grep -c "=> k8s.io/.* ${staging_version}\$" "${k8s_src}/go.mod" || true)"
((replaced > 10)) || die "found only ${replaced} staging modules in ${k8s_mod}; has its layout changed?"
log "wrapper module maps ${replaced} staging modules to ${staging_version}"
tidy "${k8s_src}"

k8s_major="${KUBERNETES_VERSION#v}"
k8s_major="${k8s_major%%.*}"
k8s_minor="${KUBERNETES_VERSION#v*.}"
k8s_minor="${k8s_minor%%.*}"
k8s_date="$(sed -E 's/.*"Time":"([^"]+)".*/\1/' "${k8s_info}")"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
	k8s_ldflags+=" -X ${pkg}.gitMajor=${k8s_major}"
	k8s_ldflags+=" -X ${pkg}.gitMinor=${k8s_minor}"
	# The proxy does not record the tag's commit; an empty value beats "$Format:%H$".
	k8s_ldflags+=" -X ${pkg}.gitCommit="
	k8s_ldflags+=" -X ${pkg}.gitTreeState=clean"
	k8s_ldflags+=" -X ${pkg}.buildDate=${k8s_date}"
done

build_one() { # NAME DIR PACKAGE LDFLAGS
	local t
	t="$(now)"
	log "building $1 ..."
	(cd "$2" && nice_go build -trimpath -ldflags "$4" -o "${BIN}/$1.tmp" "$3") || die "building $1 failed"
	mv -f "${BIN}/$1.tmp" "${BIN}/$1"
	log "built $1 in $(elapsed "${t}")s"
}

for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	build_one "${c}" "${k8s_src}" "k8s.io/kubernetes/cmd/${c}" "${k8s_ldflags}"
done

# --- etcd -------------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 also carries relative replace directives; as a plain
# dependency of a wrapper module they are ignored and its pinned siblings are used.
etcd_src="${ROOT}/src/etcd"
mkdir -p "${etcd_src}"
printf 'module weir.test/controlplane/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' \
	"${ETCD_VERSION}" >"${etcd_src}/go.mod"
tidy "${etcd_src}"
build_one etcd "${etcd_src}" go.etcd.io/etcd/server/v3 "-s -w"

# --- kwok and helm (plain modules, no replace directives) ---------------------------
install_one() { # NAME PACKAGE@VERSION LDFLAGS
	local t
	t="$(now)"
	log "building $1 ..."
	(cd "${ROOT}/src" && GOBIN="${ROOT}/src/gobin" nice_go install -trimpath -ldflags "$3" "$2") ||
		die "building $1 failed"
	mv -f "${ROOT}/src/gobin/$1" "${BIN}/$1"
	log "built $1 in $(elapsed "${t}")s"
}

install_one kwok "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" \
	"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"

# Offline rendering (helm template/lint) assumes the Kubernetes version baked in here;
# pin it to the cluster these tests run so chart kubeVersion checks agree.
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
	helm_ldflags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done
install_one helm "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" "${helm_ldflags}"

# kwok has no built-in behaviour: it needs Stage objects. Take the "fast" node and pod
# stages plus the lease heartbeat that ship with the pinned kwok module.
kwok_dir="$(module_field "sigs.k8s.io/kwok@${KWOK_VERSION}" Dir)" || true
[[ -d "${kwok_dir}" ]] || die "could not download sigs.k8s.io/kwok@${KWOK_VERSION}"
stages=(
	kustomize/stage/node/fast/node-initialize.yaml
	kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
	kustomize/stage/pod/fast/pod-ready.yaml
	kustomize/stage/pod/fast/pod-complete.yaml
	kustomize/stage/pod/fast/pod-delete.yaml
)
{
	for s in "${stages[@]}"; do
		[[ -f "${kwok_dir}/${s}" ]] || die "kwok ${KWOK_VERSION} has no ${s}"
		printf -- '---\n'
		cat "${kwok_dir}/${s}"
	done
} >"${ROOT}/share/kwok-stages.yaml.tmp"
mv -f "${ROOT}/share/kwok-stages.yaml.tmp" "${ROOT}/share/kwok-stages.yaml"

rm -rf "${ROOT}/src/gobin"
if [[ -z "${WEIR_CONTROLPLANE_GOCACHE:-}" ]]; then
	rm -rf "${GOCACHE}"
fi
{
	printf '%s\n' "${STAMP_WANT}"
	printf 'kubernetes=%s etcd=%s kwok=%s helm=%s go=%s built=%s\n' \
		"${KUBERNETES_VERSION}" "${ETCD_VERSION}" "${KWOK_VERSION}" "${HELM_VERSION}" \
		"${go_version}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"${STAMP}"
log "done in $(elapsed "${build_start}")s; binaries in ${BIN}"
printf '%s\n' "${BIN}"
