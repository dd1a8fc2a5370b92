#!/usr/bin/env bash
# Checks the Helm chart charts/weir and the plain manifests made from it:
#   - the chart's CRD is byte-identical to crds/ (which `weir-operator crd` generates);
#   - `helm lint --strict` passes with the defaults and with every switch flipped;
#   - `helm template` renders those and a few other combinations, and the schema and the
#     template guards refuse values that would install something broken;
#   - deploy/weir.yaml is exactly what the chart renders today;
#   - the rendered manifests are accepted by a real API server (server-side dry run, in a
#     namespace that enforces the restricted Pod Security level) when a test control plane
#     is up; without one, every rendered document is parsed as a Kubernetes object.
#
# Usage: scripts/lint-chart.sh [--update] [--cluster]
#   --update   rewrite deploy/weir.yaml instead of failing when it has drifted
#   --cluster  start a throwaway control plane (tests/controlplane/up.sh) for the dry run
# Only the test control plane is ever contacted: the cluster in KUBECONFIG is used when
# WEIR_CONTROLPLANE_SERVER is set too (`source STATE_DIR/env` of tests/controlplane/up.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHART=$ROOT/charts/weir
CRD=connectionpools.weir.dev.yaml
PLAIN=$ROOT/deploy/weir.yaml
# deploy/weir.yaml installs into this namespace, as release "weir".
PLAIN_NAMESPACE=weir-system

update=false
start_cluster=false
for arg in "$@"; do
    case $arg in
    --update) update=true ;;
    --cluster) start_cluster=true ;;
    *)
        echo "usage: $0 [--update] [--cluster]" >&2
        exit 2
        ;;
    esac
done

failures=0
say() { printf 'lint-chart: %s\n' "$*" >&2; }
ok() { printf 'lint-chart: ok    %s\n' "$*" >&2; }
fail() {
    printf 'lint-chart: FAIL  %s\n' "$*" >&2
    failures=$((failures + 1))
}

# helm and kubectl: from PATH, else the pinned ones the test control plane is built with.
if ! command -v helm >/dev/null || ! command -v kubectl >/dev/null; then
    say "helm or kubectl not on PATH; using tests/controlplane's (built once, then cached)"
    PATH=$("$ROOT/tests/controlplane/build.sh"):$PATH
fi

WORK=$(mktemp -d /tmp/weir-lint-chart.XXXXXX)
CP_STATE=
LINT_NAMESPACES=()
cleanup() {
    local ns
    for ns in "${LINT_NAMESPACES[@]}"; do
        kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
    done
    if [[ -n $CP_STATE ]]; then
        "$ROOT/tests/controlplane/down.sh" --purge "$CP_STATE" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the CRD ------------------------------------------------------------------------
if cmp -s "$ROOT/crds/$CRD" "$CHART/crds/$CRD"; then
    ok "charts/weir/crds/$CRD is identical to crds/$CRD"
else
    fail "charts/weir/crds/$CRD differs from crds/$CRD (cp crds/$CRD charts/weir/crds/)"
fi

# --- helm lint ----------------------------------------------------------------------
ALL_SWITCHES=$CHART/ci/all-switches-values.yaml
for values in "" "$ALL_SWITCHES"; do
    label=${values:+with ${values#"$ROOT"/}}
    if out=$(helm lint --strict "$CHART" ${values:+-f "$values"} 2>&1); then
        ok "helm lint --strict ${label:-with the defaults}"
    else
        fail "helm lint --strict ${label:-with the defaults}"
        printf '%s\n' "$out" >&2
    fi
done

# --- helm template: renderings that must succeed --------------------------------------
# Each case: a name, then helm arguments. The release namespace is "weir-lint" here and
# replaced by a real one for the server-side dry run.
CASES=(
    "defaults|"
    "all-switches|-f $ALL_SWITCHES"
    "bare|--set rbac.create=false --set serviceAccount.create=false --set serviceAccount.name=existing --set leaderElection.enabled=false --set replicaCount=0"
)
# Renders case NAME into WORK/NAME.yaml for release namespace NS (and watched namespace
# WATCH when the case sets one). Args: NAME NS WATCH ARGS...
render() {
    local name=$1 ns=$2 watch=$3
    shift 3
    local extra=()
    if [[ $name == all-switches ]]; then
        extra=(--set "watchNamespace=$watch" --set "monitoring.dashboard.namespace=$watch")
    fi
    helm template weir "$CHART" --namespace "$ns" "$@" "${extra[@]}" >"$WORK/$name.yaml"
}
for case in "${CASES[@]}"; do
    name=${case%%|*}
    read -r -a args <<<"${case#*|}"
    if out=$(render "$name" weir-lint weir-lint-apps "${args[@]}" 2>&1); then
        ok "helm template: $name ($(grep -c '^kind:' "$WORK/$name.yaml") objects)"
    else
        fail "helm template: $name"
        printf '%s\n' "$out" >&2
    fi
done

# --- the PrometheusRule: only where its CRD is served -----------------------------------
PROM_RULE=monitoring.coreos.com/v1/PrometheusRule
if helm template weir "$CHART" --api-versions "$PROM_RULE" | grep -q '^kind: PrometheusRule$'; then
    ok "helm template renders the PrometheusRule when the API has $PROM_RULE"
else
    fail "helm template leaves the PrometheusRule out although the API has $PROM_RULE"
fi
if helm template weir "$CHART" | grep -q '^kind: PrometheusRule$'; then
    fail "helm template renders a PrometheusRule without its CRD"
else
    ok "helm template leaves the PrometheusRule out without its CRD"
fi
if helm template weir "$CHART" --api-versions "$PROM_RULE" \
    --set monitoring.rules.prometheusRule.enabled=false | grep -q '^kind: PrometheusRule$'; then
    fail "helm template renders the PrometheusRule although monitoring.rules.prometheusRule.enabled=false"
else
    ok "monitoring.rules.prometheusRule.enabled=false leaves the PrometheusRule out"
fi

# --- helm template: values that must be refused, with the reason expected -------------
REFUSALS=(
    "an unknown key|--set replicas=2|additional properties 'replicas' not allowed"
    "a negative replicaCount|--set replicaCount=-1|minimum"
    "an invalid watchNamespace|--set watchNamespace=Not_A_Namespace|does not match pattern"
    "two replicas without leader election|--set replicaCount=2 --set leaderElection.enabled=false|needs leaderElection.enabled"
    "no ServiceAccount at all|--set serviceAccount.create=false|serviceAccount.name is required"
    "an invalid dashboard namespace|--set monitoring.dashboard.namespace=Not_A_Namespace|does not match pattern"
)
for refusal in "${REFUSALS[@]}"; do
    IFS='|' read -r what set_args expected <<<"$refusal"
    read -r -a args <<<"$set_args"
    if out=$(helm template weir "$CHART" "${args[@]}" 2>&1); then
        fail "helm template accepted $what"
    elif grep -qF -- "$expected" <<<"$out"; then
        ok "helm template refuses $what"
    else
        fail "helm template refused $what, but not with \"$expected\":"
        printf '%s\n' "$out" >&2
    fi
done

# --- deploy/weir.yaml -----------------------------------------------------------------
render_plain() {
    printf '# The Weir operator as plain manifests, rendered from charts/weir with its default\n'
    printf '# values (release "weir", namespace %s) by scripts/lint-chart.sh --update.\n' "$PLAIN_NAMESPACE"
    printf '# Do not edit; change the chart instead. Install with\n'
    printf '#   kubectl apply --server-side -f crds/ -f deploy/weir.yaml\n'
    printf -- '---\n'
    printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$PLAIN_NAMESPACE"
    printf '  labels:\n    pod-security.kubernetes.io/enforce: restricted\n'
    helm template weir "$CHART" --namespace "$PLAIN_NAMESPACE"
}
render_plain >"$WORK/plain.yaml"
if cmp -s "$WORK/plain.yaml" "$PLAIN"; then
    ok "deploy/weir.yaml matches the chart"
elif [[ $update == true ]]; then
    mkdir -p "$(dirname "$PLAIN")"
    cp "$WORK/plain.yaml" "$PLAIN"
    ok "deploy/weir.yaml rewritten from the chart"
else
    fail "deploy/weir.yaml has drifted from the chart (scripts/lint-chart.sh --update):"
    diff -u "$PLAIN" "$WORK/plain.yaml" >&2 || true
fi

# --- the API server's opinion, or at least a parse ------------------------------------
if [[ $start_cluster == true && -z ${WEIR_CONTROLPLANE_SERVER:-} ]]; then
    CP_STATE=$WORK/controlplane
    say "starting a throwaway control plane"
    "$ROOT/tests/controlplane/up.sh" "$CP_STATE" 2>"$WORK/controlplane-up.log" ||
        { cat "$WORK/controlplane-up.log" >&2; exit 1; }
    # shellcheck source=/dev/null
    source "$CP_STATE/env"
fi

cluster_up() {
    [[ -n ${WEIR_CONTROLPLANE_SERVER:-} && -n ${KUBECONFIG:-} ]] &&
        kubectl get --raw=/readyz --request-timeout=5s >/dev/null 2>&1
}

if cluster_up; then
    say "control plane at $WEIR_CONTROLPLANE_SERVER: server-side dry runs"
    suffix=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    ns=weir-lint-$suffix
    watch=weir-lint-apps-$suffix
    # Dry-run objects need their namespaces to exist for real; these are deleted on exit.
    for n in "$ns" "$watch"; do
        kubectl create namespace "$n" >/dev/null
        LINT_NAMESPACES+=("$n")
        kubectl label namespace "$n" pod-security.kubernetes.io/enforce=restricted \
            pod-security.kubernetes.io/warn=restricted >/dev/null
    done
    if out=$(kubectl apply --dry-run=server --server-side -f "$CHART/crds/$CRD" 2>&1); then
        ok "API server accepts the CRD"
    else
        fail "API server refuses the CRD"
        printf '%s\n' "$out" >&2
    fi
    for case in "${CASES[@]}"; do
        name=${case%%|*}
        read -r -a args <<<"${case#*|}"
        render "$name" "$ns" "$watch" "${args[@]}"
        # Pod Security admission only warns about a Deployment's pod template; a warning is
        # a failure here all the same.
        if out=$(kubectl apply --dry-run=server -f "$WORK/$name.yaml" 2>&1) &&
            ! grep -q 'would violate PodSecurity' <<<"$out"; then
            ok "API server accepts $name (restricted Pod Security)"
        else
            fail "API server refuses $name"
            printf '%s\n' "$out" >&2
        fi
    done
else
    say "no test control plane up: parsing the rendered documents only (--cluster for more)"
    # `kubectl patch --local` decodes every document offline and prints kind/name.
    for file in "$WORK"/*.yaml; do
        if out=$(KUBECONFIG=/dev/null kubectl patch --local --type=merge -p '{}' -o name \
            -f "$file" 2>&1); then
            ok "$(basename "$file" .yaml): $(wc -l <<<"$out") objects parse"
        else
            fail "$(basename "$file" .yaml) does not parse"
            printf '%s\n' "$out" >&2
        fi
    done
fi

if ((failures > 0)); then
    say "$failures check(s) failed"
    exit 1
fi
say "all checks passed"
