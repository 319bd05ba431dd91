# Sourced by scripts/test and scripts/bench: a throwaway PostgreSQL cluster for the store's tests.
#
# After `postgres_up`: HEARTH_TEST_PG_URL is a postgresql:// URL of a database in a cluster of
# our own (Unix socket only, in a private folder under $TMPDIR, trust authentication: nothing
# listens on TCP), or HEARTH_TEST_PG_SKIP says why there is none. Debian's `postgresql` is
# installed with apt when its server is missing. `initdb` refuses root, so as root the cluster
# runs as the `postgres` user. `postgres_down` (call it from an EXIT trap) stops the cluster by
# its own data folder and removes it. Under CI=true, not having a cluster is an error.

_hearth_pg_dir=""
_hearth_pg_bin=""
_hearth_pg_as=()

_pg_bindir() {  # the newest server's bin folder, or nothing
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/pg_ctl" ] && echo "$found"
}

_pg_give_up() {
    if [ "${CI:-}" = "true" ]; then
        echo "postgres: $1 (CI needs PostgreSQL for the store's tests)" >&2
        exit 1
    fi
    export HEARTH_TEST_PG_SKIP="$1"
    echo "postgres: $1; the PostgreSQL store's tests will be skipped" >&2
}

postgres_up() {
    if [ -n "${HEARTH_TEST_PG_URL:-}" ]; then
        return 0  # the caller named one
    fi
    _hearth_pg_bin="$(_pg_bindir)"
    if [ -z "$_hearth_pg_bin" ]; then
        if [ "$(id -u)" != "0" ]; then
            _pg_give_up "no PostgreSQL server installed, and apt needs root (apt install postgresql)"
            return 0
        fi
        echo "postgres: installing Debian's postgresql with apt" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends postgresql; } >/tmp/hearth-apt-postgresql.log 2>&1; then
            _pg_give_up "apt could not install postgresql (see /tmp/hearth-apt-postgresql.log)"
            return 0
        fi
        _hearth_pg_bin="$(_pg_bindir)"
        if [ -z "$_hearth_pg_bin" ]; then
            _pg_give_up "postgresql is installed but no server was found under /usr/lib/postgresql"
            return 0
        fi
    fi
    _hearth_pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/hearth-pg.XXXXXX")"
    _hearth_pg_as=()
    if [ "$(id -u)" = "0" ]; then
        if ! id postgres >/dev/null 2>&1; then
            _pg_give_up "running as root and there is no postgres user for initdb"
            return 0
        fi
        chown postgres: "$_hearth_pg_dir"
        _hearth_pg_as=(runuser -u postgres --)
    fi
    chmod 0700 "$_hearth_pg_dir"
    if ! "${_hearth_pg_as[@]}" "$_hearth_pg_bin/initdb" -D "$_hearth_pg_dir/data" -U hearth \
            -A trust -E UTF8 --no-sync >"$_hearth_pg_dir/initdb.log" 2>&1; then
        tail -5 "$_hearth_pg_dir/initdb.log" >&2 || true
        postgres_down
        _pg_give_up "initdb failed (log above)"
        return 0
    fi
    if ! "${_hearth_pg_as[@]}" "$_hearth_pg_bin/pg_ctl" -D "$_hearth_pg_dir/data" -w -t 60 \
            -l "$_hearth_pg_dir/server.log" \
            -o "-c listen_addresses='' -c unix_socket_directories='$_hearth_pg_dir' -c fsync=off -c max_connections=200" \
            start >/dev/null 2>&1; then
        tail -5 "$_hearth_pg_dir/server.log" >&2 || true
        postgres_down
        _pg_give_up "the PostgreSQL server did not start (log above)"
        return 0
    fi
    export HEARTH_TEST_PG_URL="postgresql://hearth@/postgres?host=$_hearth_pg_dir"
    echo "postgres: started a cluster at $_hearth_pg_dir (Unix socket only)" >&2
}

postgres_down() {
    if [ -n "$_hearth_pg_dir" ]; then
        if [ -f "$_hearth_pg_dir/data/postmaster.pid" ]; then
            "${_hearth_pg_as[@]}" "$_hearth_pg_bin/pg_ctl" -D "$_hearth_pg_dir/data" -m fast -w -t 60 \
                stop >/dev/null 2>&1 || true
        fi
        rm -rf "$_hearth_pg_dir" 2>/dev/null || true
        _hearth_pg_dir=""
    fi
}
