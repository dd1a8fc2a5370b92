#!/usr/bin/env bash
# Installs what `make test` and `make demo` need and a fresh machine may lack:
# PostgreSQL server binaries, psql and pgbench, redis-server with redis-cli for the Redis
# data path's tests, and ip and nft for the network-fault tests. Idempotent and quiet when
# all is present.
set -euo pipefail

pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pgbench" ]] && { echo "$d"; return 0; }
    done
    return 1
}

if ! pg_bindir >/dev/null || ! command -v psql >/dev/null; then
    echo "ensure-deps: installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "ensure-deps: installing redis-server and redis-tools from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-tools >/dev/null
fi
if ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
    echo "ensure-deps: installing iproute2 and nftables for the network-fault tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iproute2 nftables >/dev/null
fi
if ! id postgres >/dev/null 2>&1; then
    echo "ensure-deps: no 'postgres' OS user; PostgreSQL refuses to run as root" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "ensure-deps: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
pg_bindir
