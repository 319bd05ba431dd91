# Sourced by scripts/test, scripts/demo and scripts/bench: find or start a Docker engine for the
# docker driver, and build the local test image (no registry is needed).
#
# After `docker_engine_up`: HEARTH_TEST_DOCKER_URL is the engine's URL, or HEARTH_TEST_DOCKER_SKIP
# says why there is none. A daemon started here is stopped by `docker_engine_down` (call it from
# an EXIT trap). Under CI=true, not having an engine is an error.

HEARTH_TEST_IMAGE="hearth-test/httpd:1"
export HEARTH_TEST_IMAGE
_hearth_dockerd_pid=""
_hearth_dockerd_dir=""

_docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

_docker_reachable() {  # $1: URL
    local cli
    cli="$(_docker_cli)" || return 1
    [ -n "$cli" ] && timeout 10 "$cli" -H "$1" version >/dev/null 2>&1
}

_docker_give_up() {
    if [ "${CI:-}" = "true" ]; then
        echo "docker-engine: $1 (CI needs the Docker engine for the docker driver's tests)" >&2
        exit 1
    fi
    export HEARTH_TEST_DOCKER_SKIP="$1"
    echo "docker-engine: $1; the docker driver's tests will be skipped" >&2
}

docker_engine_up() {
    local url="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    if ! _docker_reachable "$url"; then
        if [ "$(id -u)" != "0" ]; then
            _docker_give_up "no Docker engine at $url, and starting one needs root"
            return 0
        fi
        if ! command -v dockerd >/dev/null 2>&1 || [ ! -x /bin/busybox ]; then
            echo "docker-engine: installing docker.io and busybox-static with apt" >&2
            if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    docker.io busybox-static; } >/tmp/hearth-apt-docker.log 2>&1; then
                _docker_give_up "apt could not install docker.io (see /tmp/hearth-apt-docker.log)"
                return 0
            fi
        fi
        _hearth_dockerd_dir="$(mktemp -d "${TMPDIR:-/tmp}/hearth-dockerd.XXXXXX")"
        url="unix://$_hearth_dockerd_dir/docker.sock"
        dockerd --host "$url" --data-root "$_hearth_dockerd_dir/data" \
            --exec-root "$_hearth_dockerd_dir/exec" --pidfile "$_hearth_dockerd_dir/docker.pid" \
            >"$_hearth_dockerd_dir/dockerd.log" 2>&1 &
        _hearth_dockerd_pid=$!
        local waited=0
        until _docker_reachable "$url"; do
            if ! kill -0 "$_hearth_dockerd_pid" 2>/dev/null || [ "$waited" -ge 120 ]; then
                tail -5 "$_hearth_dockerd_dir/dockerd.log" >&2 || true
                docker_engine_down
                _docker_give_up "dockerd did not start (log above)"
                return 0
            fi
            sleep 0.5
            waited=$((waited + 1))
        done
        echo "docker-engine: started dockerd (pid $_hearth_dockerd_pid) at $url" >&2
    fi
    export HEARTH_TEST_DOCKER_URL="$url"
    _docker_test_image "$url" || { _docker_give_up "could not build $HEARTH_TEST_IMAGE"; unset HEARTH_TEST_DOCKER_URL; }
}

_docker_test_image() {  # an httpd on port 8080 serving /www, from busybox-static: no registry
    local cli
    cli="$(_docker_cli)"
    "$cli" -H "$1" image inspect "$HEARTH_TEST_IMAGE" >/dev/null 2>&1 && return 0
    [ -x /bin/busybox ] || { echo "docker-engine: /bin/busybox missing (apt install busybox-static)" >&2; return 1; }
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/www" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for tool in sh httpd sleep cat echo ls mkdir rm false true wget; do ln -s busybox "$root/bin/$tool"; done
    echo "hello from hearth" >"$root/www/index.html"
    tar -C "$root" -c . | "$cli" -H "$1" import \
        -c 'CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]' - "$HEARTH_TEST_IMAGE" >/dev/null
    local status=$?
    rm -rf "$root"
    return $status
}

docker_engine_down() {
    if [ -n "$_hearth_dockerd_pid" ]; then
        kill "$_hearth_dockerd_pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$_hearth_dockerd_pid" 2>/dev/null && [ "$waited" -lt 60 ]; do
            sleep 0.5
            waited=$((waited + 1))
        done
        kill -9 "$_hearth_dockerd_pid" 2>/dev/null || true
        # containerd-shim processes of containers the daemon ran, if any are left: by the pid
        # each one recorded under this daemon's own folder (never by name or pattern)
        local shim
        for shim in "$_hearth_dockerd_dir"/exec/containerd/daemon/io.containerd.runtime.v2.task/*/*/shim.pid; do
            [ -f "$shim" ] && kill -9 "$(cat "$shim")" 2>/dev/null || true
        done
        _hearth_dockerd_pid=""
    fi
    if [ -n "$_hearth_dockerd_dir" ]; then
        umount "$_hearth_dockerd_dir"/data/overlay2/*/merged 2>/dev/null || true
        rm -rf "$_hearth_dockerd_dir" 2>/dev/null || true
        _hearth_dockerd_dir=""
    fi
}
