#!/usr/bin/env bash
# `make image`: the Weir image built here with podman, from a Debian base made locally
# (scripts/image-base.sh) and the host-built release binaries (the Containerfile's
# `prebuilt` target), since no image registry is reachable. Saves it as an OCI archive that
# `ctr -n k8s.io images import` loads, and prints its size.
# Environment: IMAGE (localhost/weir:<version>), VERSION (the workspace's), REVISION (git's).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=${VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
IMAGE=${IMAGE:-localhost/weir:$VERSION}
NAME=${IMAGE##*/}
ARCHIVE=target/image/${NAME%%[:@]*}-$VERSION.oci.tar
# crun, podman's default, refuses this machine's hybrid cgroups.
PODMAN=(podman --runtime /usr/sbin/runc)

for bin in weir weir-operator; do
    [[ -x target/release/$bin ]] || { echo "image: target/release/$bin not built (make release)" >&2; exit 1; }
done
"$ROOT/scripts/ensure-image-deps.sh"
start=$SECONDS
BASE=$("$ROOT/scripts/image-base.sh")
base_seconds=$((SECONDS - start))

# The binaries without debug info, symbols kept: what the Containerfile's release target
# ships too (CARGO_PROFILE_RELEASE_STRIP=debuginfo), without relinking target/release here.
mkdir -p target/image/bin
for bin in weir weir-operator; do
    objcopy --strip-debug target/release/$bin target/image/bin/$bin
done

start=$SECONDS
"${PODMAN[@]}" build --quiet --file Containerfile --target prebuilt \
    --build-arg RUNTIME_IMAGE="$BASE" --build-arg PREBUILT_DIR=target/image/bin \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    --tag "$IMAGE" . >/dev/null
build_seconds=$((SECONDS - start))

mkdir -p target/image
rm -f "$ARCHIVE"
"${PODMAN[@]}" save --quiet --format oci-archive --output "$ARCHIVE" "$IMAGE"

mb() { awk -v b="$1" 'BEGIN { printf "%6.1f MB", b / 1000000 }'; }
size() { "${PODMAN[@]}" image inspect --format '{{.Size}}' "$1"; }
echo "image: $IMAGE (version $VERSION, revision ${REVISION:0:12})"
printf '  %-36s %s\n' "image" "$(mb "$(size "$IMAGE")")" \
    "  base ($BASE)" "$(mb "$(size "$BASE")")" \
    "  weir" "$(mb "$(stat -c %s target/image/bin/weir)")" \
    "  weir-operator" "$(mb "$(stat -c %s target/image/bin/weir-operator)")" \
    "OCI archive (compressed layers)" "$(mb "$(stat -c %s "$ARCHIVE")") $ARCHIVE"
echo "  base ${base_seconds}s (cached in ~/.cache/weir/image after the first run), podman build ${build_seconds}s"
