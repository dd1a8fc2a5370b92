#!/usr/bin/env bash
# Prints the directory holding `prometheus` and `promtool`, building them once from the Go
# module (service discovery plugins left out to save build time) and caching them by version.
set -euo pipefail
version=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
dir=$HOME/.cache/weir/bin/prometheus-$version

if [ -x "$dir/prometheus" ] && [ -x "$dir/promtool" ]; then
    echo "$dir"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "ensure-prometheus: go not found; install Go first" >&2
    exit 1
fi
echo "ensure-prometheus: building prometheus and promtool $version (once)" >&2
mkdir -p "$dir.part"
# remove_all_sd drops the cloud service-discovery plugins: tests use static targets only.
GOBIN="$dir.part" GOFLAGS=-buildvcs=false go install -trimpath -ldflags='-s -w' \
    -tags remove_all_sd \
    "github.com/prometheus/prometheus/cmd/prometheus@$version" \
    "github.com/prometheus/prometheus/cmd/promtool@$version" >&2
rm -rf "$dir"
mv "$dir.part" "$dir"
echo "$dir"
