#!/usr/bin/env bash
# Prints the directory holding `prometheus` and `promtool`, building them once from the Go
# module (service discovery plugins left out to save build time) and caching them by version.
set -euo pipefail
version=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
dir=$HOME/.cache/weir/bin/prometheus-$version

built() { [ -x "$dir/prometheus" ] && [ -x "$dir/promtool" ]; }
if built; then
    echo "$dir"
    exit 0
fi
# One build at a time per machine: test processes of several checkouts may ask at once.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if built; then
    echo "$dir"
    exit 0
fi
GO=${GO:-$(command -v go || true)}
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
fi
if [ -z "$GO" ]; then
    echo "ensure-prometheus: no go toolchain found (set GO=/path/to/go or put go on PATH)" >&2
    exit 1
fi
echo "ensure-prometheus: building prometheus and promtool $version (once)" >&2
mkdir -p "$dir.part"
# The module and build caches (over 2 GB) are thrown away afterwards: only the binaries stay.
scratch=$(mktemp -d /tmp/weir-prometheus-build.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
# remove_all_sd drops the cloud service-discovery plugins: tests use static targets only.
GOBIN="$dir.part" GOCACHE="$scratch/cache" GOMODCACHE="$scratch/mod" \
    GOFLAGS='-buildvcs=false -modcacherw' GOTOOLCHAIN=local CGO_ENABLED=0 "$GO" install -trimpath -ldflags='-s -w' \
    -tags remove_all_sd \
    "github.com/prometheus/prometheus/cmd/prometheus@$version" \
    "github.com/prometheus/prometheus/cmd/promtool@$version" >&2
rm -rf "$dir"
mv "$dir.part" "$dir"
echo "$dir"
