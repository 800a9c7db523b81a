#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks, on 127.0.0.1 only.
#
# Source it and call the functions (what .ci/run does):
#     . .ci/postgres.sh
#     pg_start            # exports METERING_TEST_POSTGRESQL_URL and PM_PG_DIR
#     ...
#     pg_stop             # stops the server and deletes its directory
#
# or run it:
#     .ci/postgres.sh start     # prints `export METERING_TEST_POSTGRESQL_URL=...` and `export PM_PG_DIR=...`
#     .ci/postgres.sh stop DIR
#
# The server binaries come from the Debian packages (installed when `initdb` is missing). PostgreSQL
# refuses to run as root, so as root the cluster belongs to the `postgres` user and runs through runuser.
# Authentication is `trust`: the server listens on 127.0.0.1 and a private socket directory only, and
# lives as long as the CI job.

pg_bindir() {
    local found
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then
        echo "$found"
        return 0
    fi
    return 1
}

pg_install() {
    if pg_bindir >/dev/null; then
        return 0
    fi
    echo "postgres.sh: initdb not found; installing postgresql from the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2 || return 1
    pg_bindir >/dev/null
}

_pg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Run a server binary as the cluster's owner: `postgres` when we are root, ourselves otherwise.
_pg_as_owner() {
    if [ "$(id -u)" = "0" ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    local bindir dir port db url
    pg_install || { echo "postgres.sh: could not install PostgreSQL" >&2; return 1; }
    bindir=$(pg_bindir)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pm-pg.XXXXXX") || return 1
    if [ "$(id -u)" = "0" ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres || return 1
        chown postgres "$dir"
    fi
    chmod 700 "$dir"
    _pg_as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    # A few tries: another job may take the port between probing and binding.
    for _ in 1 2 3 4 5; do
        port=$(_pg_free_port)
        if _pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 ${PM_PG_OPTIONS:-}" \
            start >/dev/null; then
            break
        fi
        port=""
    done
    if [ -z "$port" ]; then
        echo "postgres.sh: the server did not start; log follows" >&2
        cat "$dir/server.log" >&2
        return 1
    fi
    db=${PM_PG_DATABASE:-metering_test}
    _pg_as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" || return 1
    url="postgresql://postgres@127.0.0.1:$port/$db"
    export PM_PG_DIR="$dir"
    export METERING_TEST_POSTGRESQL_URL="$url"
    echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') at $url (data in $dir)" >&2
}

pg_stop() {
    local dir=${1:-${PM_PG_DIR:-}}
    local bindir
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    bindir=$(pg_bindir) || return 1
    _pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    if [ "${PM_PG_DIR:-}" = "$dir" ]; then
        unset PM_PG_DIR METERING_TEST_POSTGRESQL_URL
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        start)
            pg_start
            echo "export METERING_TEST_POSTGRESQL_URL=$METERING_TEST_POSTGRESQL_URL"
            echo "export PM_PG_DIR=$PM_PG_DIR"
            ;;
        stop)
            pg_stop "${2:-}"
            ;;
        *)
            echo "usage: $0 start | stop DIR   (or source it and call pg_start / pg_stop)" >&2
            exit 2
            ;;
    esac
fi
