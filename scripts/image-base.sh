#!/usr/bin/env bash
# Builds the local runtime base image, localhost/weir-base:<release>, from Debian's package
# mirror (no image registry is reachable here), and prints its name. The same contents as
# the public default gcr.io/distroless/cc-debian12, minus tzdata and libssl, which Weir does
# not use (it links rustls): the files of libc6 and libgcc-s1, the CA bundle, passwd/group
# entries for root and nonroot (65532), a world-writable /tmp. No shell, no package manager.
# The rootfs tarball is cached in ~/.cache/weir/image/ and only imported when the image is
# missing, so a repeated `make image` costs nothing here.
set -euo pipefail

RELEASE=${DEBIAN_RELEASE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/weir-base:$RELEASE
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/weir/image
TARBALL=$CACHE/weir-base-$RELEASE.tar
PODMAN=(podman --runtime /usr/sbin/runc)

if [[ ! -s $TARBALL ]]; then
    mkdir -p "$CACHE"
    work=$(mktemp -d /tmp/weir-base.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    echo "image-base: debootstrapping $RELEASE (minbase + ca-certificates) from $MIRROR" >&2
    # A full minbase chroot, so that ca-certificates' postinst writes the bundle; only the
    # files listed below are taken out of it.
    mmdebstrap --quiet --variant=minbase --include=ca-certificates "$RELEASE" "$work/chroot" "$MIRROR" >&2
    mkdir "$work/root"
    (
        cd "$work/chroot"
        # Every path libc6 and libgcc-s1 ship (the dynamic loader, libc, libgcc_s), as dpkg
        # recorded them; directories are recreated by tar from the file paths.
        # Paths under the merged-/usr links (lib → usr/lib) are resolved, so that tar
        # never extracts through a link it has not yet made.
        cat var/lib/dpkg/info/libc6:amd64.list var/lib/dpkg/info/libgcc-s1:amd64.list |
            sed 's|^/||' | while read -r p; do
                [[ -d $p && ! -L $p ]] || echo "$(realpath -e --relative-to=. "$(dirname "$p")")/$(basename "$p")"
            done | sort -u >"$work/files"
        # The links themselves: the loader's path /lib64/ld-linux-x86-64.so.2 goes through one.
        for l in lib lib64; do if [[ -L $l ]]; then echo "$l"; fi; done >>"$work/files"
        echo etc/ssl/certs/ca-certificates.crt >>"$work/files"
        tar --create --file - --files-from "$work/files" | tar --extract --file - -C "$work/root"
    )
    cat >"$work/root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
    cat >"$work/root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
    mkdir -p "$work/root/tmp" "$work/root/home/nonroot" "$work/root/root"
    chmod 1777 "$work/root/tmp"
    chown 65532:65532 "$work/root/home/nonroot"
    chmod 700 "$work/root/root"
    # The same file a distroless image carries, for libraries that look the path up.
    ln -s certs/ca-certificates.crt "$work/root/etc/ssl/cert.pem"
    tar --create --numeric-owner --sort=name --mtime=@0 --file "$TARBALL.part" -C "$work/root" .
    mv "$TARBALL.part" "$TARBALL"
fi

if ! "${PODMAN[@]}" image exists "$IMAGE"; then
    "${PODMAN[@]}" import --quiet \
        --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        "$TARBALL" "$IMAGE" >/dev/null
fi
echo "$IMAGE"
