#!/usr/bin/env bash
# A PostgreSQL server (Debian's packages, loopback only) for tests and local trials.
#
#   scripts/postgres.sh start     install postgresql with apt if missing, initdb once, start, wait until it serves
#   scripts/postgres.sh stop      stop it (fast shutdown, then immediate after a grace period)
#   scripts/postgres.sh status    exit 0 when it runs and accepts connections
#   scripts/postgres.sh url       print its URL (postgresql://sidecar@127.0.0.1:PORT/postgres)
#
# Environment: PG_PORT (55432), PG_DATA (.cache/postgres/run-PORT), PG_BIN (the newest
# /usr/lib/postgresql/*/bin), PG_START_TIMEOUT (60 seconds).
# Trust authentication on 127.0.0.1 only: a throwaway server for this machine's user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PG_PORT:-55432}"
DATA="${PG_DATA:-$ROOT/.cache/postgres/run-$PORT}"
START_TIMEOUT="${PG_START_TIMEOUT:-60}"
USER_NAME=sidecar
LOG="$DATA/postgres.log"

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [[ -n "$found" ]] && echo "$found"
}

install() {
    [[ -n "$(find_bin)" ]] && return 0
    local sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    echo "postgres.sh: installing Debian's postgresql with apt" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    [[ -n "$(find_bin)" ]] || die "postgresql installed, but no /usr/lib/postgresql/*/bin"
}

# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` system user.
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ready() { "$(find_bin)/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" >/dev/null 2>&1; }

init() {
    [[ -f "$DATA/PG_VERSION" ]] && return 0
    mkdir -p "$DATA"
    if [[ "$(id -u)" -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        chown postgres "$DATA"
    fi
    chmod 700 "$DATA"
    as_owner "$(find_bin)/initdb" -D "$DATA" -U "$USER_NAME" --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$DATA.initdb.log" 2>&1 || { cat "$DATA.initdb.log" >&2; die "initdb failed"; }
    # A test server: no fsync waits (a crash of the machine may lose it; tests recreate it).
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
CONF
}

start() {
    install
    init
    if ready; then echo "postgres.sh: already running on 127.0.0.1:$PORT" >&2; return 0; fi
    as_owner "$(find_bin)/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$START_TIMEOUT" start >/dev/null \
        || { tail -n 40 "$LOG" >&2; die "server did not start"; }
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
        ((SECONDS < deadline)) || { tail -n 40 "$LOG" >&2; die "not ready after ${START_TIMEOUT}s"; }
        sleep 0.1
    done
    echo "postgres.sh: PostgreSQL serving on 127.0.0.1:$PORT (data $DATA)" >&2
}

stop() {
    [[ -f "$DATA/postmaster.pid" ]] || return 0
    as_owner "$(find_bin)/pg_ctl" -D "$DATA" -m fast -w -t 20 stop >/dev/null 2>&1 \
        || as_owner "$(find_bin)/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) [[ -n "$(find_bin)" ]] && ready ;;
    url) echo "postgresql://$USER_NAME@127.0.0.1:$PORT/postgres" ;;
    *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
