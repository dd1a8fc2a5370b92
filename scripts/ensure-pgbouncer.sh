#!/usr/bin/env bash
# Prints the path of a PgBouncer binary to compare Weir with, building the newest release once.
#
# Where it comes from, first match wins:
#   1. a build cached under ~/.cache/weir/anchors/pgbouncer-$VERSION (from an earlier run);
#   2. a source tarball: $PGBOUNCER_TARBALL, or pgbouncer-$VERSION*.tar.gz in
#      ~/.cache/weir/anchors, in $WEIR_ANCHORS_DIR, or in ../shared/anchors beside the
#      checkout (where a team keeps the release sources for machines without internet) or
#      beside the local checkout this one was cloned from (a CI's fresh clone elsewhere);
#   3. the release downloaded from pgbouncer.org, checked against its published SHA-256;
#   4. Debian's package, as a last resort: older, and labelled so on stderr
#      (PGBOUNCER_ALLOW_DEBIAN=0 refuses it).
# The last line of stdout is the binary; progress goes to stderr.
set -euo pipefail
version=${PGBOUNCER_VERSION:-1.25.2}
cache=$HOME/.cache/weir/anchors
prefix=$cache/pgbouncer-$version
bin=$prefix/bin/pgbouncer

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "PgBouncer $version"; then
    echo "$bin"
    exit 0
fi

find_tarball() {
    if [ -n "${PGBOUNCER_TARBALL:-}" ] && [ -f "$PGBOUNCER_TARBALL" ]; then
        echo "$PGBOUNCER_TARBALL"
        return
    fi
    local dir f repo origin beside_origin=
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    origin=$(git -C "$repo" config --get remote.origin.url 2>/dev/null || true)
    origin=${origin#file://}
    [ -n "$origin" ] && [ -d "$origin" ] && beside_origin=$(cd "$origin/.." && pwd)/shared/anchors
    for dir in "$cache" "${WEIR_ANCHORS_DIR:-}" "$(dirname "$repo")/shared/anchors" "$beside_origin"; do
        [ -n "$dir" ] || continue
        for f in "$dir"/pgbouncer-"$version"*.tar.gz; do
            [ -f "$f" ] && { echo "$f"; return; }
        done
    done
}

download() {
    local url=https://www.pgbouncer.org/downloads/files/$version/pgbouncer-$version.tar.gz
    local dest=$cache/pgbouncer-$version.tar.gz
    mkdir -p "$cache"
    echo "ensure-pgbouncer: downloading $url" >&2
    curl -fsSL --max-time 120 -o "$dest.part" "$url" || return 1
    local want
    want=$(curl -fsSL --max-time 30 "$url.sha256" | awk '{print $1}') || return 1
    if [ -z "$want" ] || [ "$(sha256sum "$dest.part" | awk '{print $1}')" != "$want" ]; then
        echo "ensure-pgbouncer: checksum mismatch for $url" >&2
        rm -f "$dest.part"
        return 1
    fi
    mv "$dest.part" "$dest"
    echo "$dest"
}

build() {
    local tarball=$1 need=() p
    for p in libevent-dev libssl-dev pkg-config autoconf automake libtool make gcc python3; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "ensure-pgbouncer: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    tar -xzf "$tarball" -C "$work"
    echo "ensure-pgbouncer: building PgBouncer $version from $tarball" >&2
    (
        cd "$work/pgbouncer-$version"
        [ -x configure ] || ./autogen.sh
        ./configure --prefix="$prefix" --with-openssl --without-cares --without-pam --without-ldap
        # The binary only: the manual pages need pandoc.
        make -j"$(nproc)" pgbouncer
    ) >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; return 1; }
    mkdir -p "$prefix/bin"
    install -m 0755 "$work/pgbouncer-$version/pgbouncer" "$bin"
}

tarball=$(find_tarball || true)
[ -n "$tarball" ] || tarball=$(download || true)
if [ -n "$tarball" ] && build "$tarball"; then
    echo "$bin"
    exit 0
fi

if [ "${PGBOUNCER_ALLOW_DEBIAN:-1}" = 0 ]; then
    echo "ensure-pgbouncer: no PgBouncer $version source and Debian's package refused" >&2
    exit 1
fi
if ! command -v pgbouncer >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null
fi
echo "ensure-pgbouncer: WARNING: PgBouncer $version unavailable; using Debian's $(pgbouncer --version | head -1), which is older" >&2
command -v pgbouncer
