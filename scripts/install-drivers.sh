#!/usr/bin/env bash
# Installs the pinned client drivers of the compatibility matrix (tests/drivers/) from their
# own registries and builds the programs that use them:
#   python/.venv            psycopg, asyncpg and redis-py from PyPI (pip --require-hashes)
#   node/node_modules       pg and node-redis (@redis/client) from npm (npm ci, from package-lock.json)
#   go/bin/pgxcheck         pgx from the Go module proxy (go build, checked against go.sum)
#   go/bin/pgxbatch         the same pgx, running batches (tests/tests/pooler_pipeline.rs)
#   go/bin/goredischeck     go-redis from the same module (tests/tests/redis_clients.rs)
#   java/target/*.jar       the PostgreSQL JDBC driver and Jedis from Maven Central (mvn package)
# Everything lands in git-ignored folders beside the manifests; download caches stay in the
# tools' own places under $HOME. Idempotent: a part is redone only when one of its inputs is
# newer than what it produced, so a warm run only looks at timestamps.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
drivers=$root/tests/drivers

log() { echo "install-drivers: $*"; }
die() { echo "install-drivers: $*" >&2; exit 1; }

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found; the driver checks need it"
    done
}

# quietly WHAT COMMAND...: runs COMMAND, showing its output only when it fails.
quietly() {
    local what=$1 out
    shift
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "$what failed"
    fi
    rm -f "$out"
}

# up_to_date ARTIFACT INPUT...: ARTIFACT exists and no INPUT is newer. The integration test
# applies the same rule before it runs a driver, so the two never disagree.
up_to_date() {
    local artifact=$1 input
    shift
    [[ -e $artifact ]] || return 1
    for input in "$@"; do
        [[ $input -nt $artifact ]] && return 1
    done
    return 0
}

python_drivers() {
    local dir=$drivers/python venv=$drivers/python/.venv
    local stamp=$venv/.installed
    if up_to_date "$stamp" "$dir/requirements.txt" &&
        "$venv/bin/python" -c 'import psycopg, asyncpg, redis' 2>/dev/null; then
        log "python: up to date"
    else
        need python3
        log "python: installing requirements.txt into $venv"
        rm -f "$stamp"
        quietly "python3 -m venv" python3 -m venv --clear "$venv"
        quietly "pip install" "$venv/bin/pip" install --disable-pip-version-check --no-input \
            --require-hashes --only-binary=:all: -r "$dir/requirements.txt"
        touch "$stamp"
    fi
    "$venv/bin/python" - <<'EOF'
import asyncpg, psycopg, redis
libpq = psycopg.pq.version()
print(f"  psycopg {psycopg.__version__} (libpq {libpq // 10000}.{libpq % 10000}),",
      f"asyncpg {asyncpg.__version__}, redis-py {redis.__version__}")
EOF
}

node_drivers() {
    local dir=$drivers/node
    local stamp=$dir/node_modules/.installed
    if up_to_date "$stamp" "$dir/package.json" "$dir/package-lock.json"; then
        log "node: up to date"
    else
        need node npm
        log "node: npm ci in $dir"
        quietly "npm ci" npm ci --prefix "$dir" --no-audit --no-fund --ignore-scripts
        touch "$stamp"
    fi
    local pg redis
    pg=$(cd "$dir" && node -p 'require("pg/package.json").version')
    redis=$(cd "$dir" && node -p 'require("@redis/client/package.json").version')
    echo "  pg $pg, node-redis (@redis/client) $redis (node $(node --version))"
}

go_drivers() {
    local dir=$drivers/go binary=$drivers/go/bin/pgxcheck batch=$drivers/go/bin/pgxbatch
    local redis=$drivers/go/bin/goredischeck
    if up_to_date "$binary" "$dir/go.mod" "$dir/go.sum" "$dir/main.go"; then
        log "go: up to date"
    else
        need go
        log "go: building $binary"
        quietly "go build" nice -n 10 go -C "$dir" build -mod=readonly -trimpath -o "$binary" .
    fi
    if up_to_date "$batch" "$dir/go.mod" "$dir/go.sum" "$dir/batch/main.go"; then
        log "go: batch program up to date"
    else
        need go
        log "go: building $batch"
        quietly "go build" nice -n 10 go -C "$dir" build -mod=readonly -trimpath -o "$batch" ./batch
    fi
    if up_to_date "$redis" "$dir/go.mod" "$dir/go.sum" "$dir/redis/main.go"; then
        log "go: redis program up to date"
    else
        need go
        log "go: building $redis"
        quietly "go build" nice -n 10 go -C "$dir" build -mod=readonly -trimpath -o "$redis" ./redis
    fi
    # The module versions are recorded in the binary itself.
    go version -m "$binary" | awk '
        NR == 1 { toolchain = $2 }
        $1 == "dep" && $2 == "github.com/jackc/pgx/v5" { pgx = $3 }
        END { print "  pgx " pgx " (" toolchain ")" }'
    go version -m "$redis" | awk '$1 == "dep" && $2 == "github.com/redis/go-redis/v9" { print "  go-redis " $3 }'
}

java_drivers() {
    local dir=$drivers/java jar=$drivers/java/target/jdbc-check.jar
    local sources
    mapfile -t sources < <(find "$dir/src" -type f)
    if up_to_date "$jar" "$dir/pom.xml" "${sources[@]}"; then
        log "java: up to date"
    else
        need java mvn
        log "java: mvn package in $dir"
        quietly "mvn package" nice -n 10 mvn -B -f "$dir/pom.xml" package
        touch "$jar"
    fi
    echo "  postgresql (JDBC) $(java -cp "$jar" org.postgresql.util.PGJDBCMain 2>/dev/null |
        awk '/PostgreSQL JDBC Driver/ { print $NF; exit }') (java $(java -version 2>&1 |
        awk -F'"' '/version/ { print $2; exit }'))"
    echo "  jedis $(python3 -c 'import sys, zipfile
props = zipfile.ZipFile(sys.argv[1]).read("META-INF/maven/redis.clients/jedis/pom.properties")
print(dict(l.split("=", 1) for l in props.decode().splitlines() if "=" in l)["version"])' "$jar")"
}

python_drivers
node_drivers
go_drivers
java_drivers
