#!/usr/bin/env bash
# Installs what `make test` and `make demo` need and a fresh machine may lack:
# PostgreSQL server binaries, psql and pgbench, and redis-server (the operator's Redis
# tests). Idempotent and quiet when all is present.
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
if ! command -v redis-server >/dev/null; then
    echo "ensure-deps: installing redis-server from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
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
