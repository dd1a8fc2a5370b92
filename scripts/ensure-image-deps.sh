#!/usr/bin/env bash
# Installs what `make image` needs and a fresh machine may lack: podman, runc (podman's
# default crun refuses this machine's hybrid cgroups), mmdebstrap (the local base image) and
# binutils (objcopy strips the binaries' debug info); python3-yaml for `make image-smoke`.
# Idempotent and quiet when all is present.
set -euo pipefail

missing=()
command -v podman >/dev/null || missing+=(podman)
[[ -x /usr/sbin/runc ]] || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v objcopy >/dev/null || missing+=(binutils)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if ((${#missing[@]})); then
    echo "ensure-image-deps: installing ${missing[*]} from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
