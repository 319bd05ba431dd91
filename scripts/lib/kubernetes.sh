# Sourced by scripts/test and scripts/bench (and scripts/demo): a throwaway Kubernetes control
# plane for the kustomize driver's tests.
#
# After `kubernetes_up`: KUBECONFIG (and HEARTH_TEST_KUBECONFIG, the same path) names a
# kubeconfig for a cluster of our own, or HEARTH_TEST_KUBE_SKIP says why there is none. The
# cluster is real apart from the kubelet: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler (1.20, built from Debian's `kubernetes` source package), plus a fake kubelet
# (scripts/lib/fake_kubelet.py) that registers one Node and runs pods without containers. All
# of it listens on 127.0.0.1 only, on free ports, and lives in a private folder under $TMPDIR.
# `kubernetes_down` (call it from an EXIT trap) stops exactly the processes it started, by pid,
# and removes that folder. A caller that names a cluster with HEARTH_TEST_KUBECONFIG gets that
# one (a KUBECONFIG already in the environment is not used: it may be somebody's real cluster).
# Under CI=true, not having a cluster is an error.
#
# No kind, k3s or envtest: they download binaries or images at run time. The binaries are built
# once, on a cache miss, from Debian's `kubernetes` source package (its orig tarball holds the
# whole upstream tree with vendor/; fetched with a private apt configuration, the system's is left
# alone) and Debian's etcd-server (unpacked, never installed): about 7 minutes on 2 cores, as
# root (it installs golang-go and rsync when missing), about a minute with the Go cache kept beside
# them. They go to ${XDG_CACHE_HOME:-$HOME/.cache}/hearth/kubernetes/<debian version>/bin,
# outside the clone; one build at a time (flock), moved into place with one rename. The cluster
# is then ready in about 5 seconds.

HEARTH_KUBE_DEBIAN_VERSION="${HEARTH_KUBE_DEBIAN_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
HEARTH_KUBE_NODE="hearth-node-0"
# what the build does, as a version: binaries of another recipe are built again
HEARTH_KUBE_RECIPE="2: Debian's source, patches and reflect2 1.0.2; CGO_ENABLED=0"
_hearth_kube_lib="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_hearth_kube_dir=""
_hearth_kube_pids=()
_hearth_kube_binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler)

_kube_give_up() {
    if [ "${CI:-}" = "true" ]; then
        echo "kubernetes: $1 (CI needs a Kubernetes API server for the kustomize driver's tests)" >&2
        exit 1
    fi
    export HEARTH_TEST_KUBE_SKIP="$1"
    echo "kubernetes: $1; the Kubernetes tests will be skipped" >&2
}

_kube_cache() {
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/hearth/kubernetes/$HEARTH_KUBE_DEBIAN_VERSION"
}

_kube_have_binaries() {  # $1: a bin folder, made by this recipe
    [ "$(cat "$1/recipe" 2>/dev/null)" = "$HEARTH_KUBE_RECIPE" ] || return 1
    local name
    for name in "${_hearth_kube_binaries[@]}"; do
        [ -x "$1/$name" ] || return 1
    done
}

_kube_sources() {  # deb and deb-src lines (one-line format) for the machine's own Debian suites
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    {
        # one-line format: /etc/apt/sources.list and sources.list.d/*.list
        local file
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$file" ] || continue
            awk '$1 == "deb" { $1 = ""; print "L" $0 }' "$file"
        done
        # deb822 format: sources.list.d/*.sources, one stanza per paragraph
        for file in /etc/apt/sources.list.d/*.sources; do
            [ -f "$file" ] || continue
            awk 'function flush() {
                     if (uris != "" && suites != "" && enabled != "no" && types ~ /deb( |$)/) {
                         n = split(uris, u, " "); m = split(suites, s, " ")
                         for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                             print "S" (key != "" ? " [signed-by=" key "]" : "") " " u[i] " " s[j] " " comps
                     }
                     types = uris = suites = comps = key = ""; enabled = ""
                 }
                 /^[ \t]*#/ { next }
                 /^[ \t]*$/ { flush(); next }
                 { field = tolower($1); sub(/:$/, "", field); $1 = ""; sub(/^ +/, "")
                   if (field == "types") types = $0; else if (field == "uris") uris = $0
                   else if (field == "suites") suites = $0; else if (field == "components") comps = $0
                   else if (field == "signed-by") key = $0; else if (field == "enabled") enabled = tolower($0) }
                 END { flush() }' "$file"
        done
    } | sed 's/^[LS] *//' | awk -v c="$codename" 'c == "" || $0 ~ (" " c "([ -]|$)")' |
        while read -r line; do
            echo "deb $line"
            echo "deb-src $line"
        done
}

_kube_build() {  # build the binaries into the cache on a miss; one builder at a time (flock)
    local cache
    cache="$(_kube_cache)"
    mkdir -p "$cache" || return 1
    (
        if ! flock -w 1800 9; then
            echo "kubernetes: another build held $cache/.lock for 30 minutes" >&2
            exit 1
        fi
        _kube_have_binaries "$cache/bin" && exit 0
        echo "kubernetes: building the control plane from Debian's kubernetes $HEARTH_KUBE_DEBIAN_VERSION" \
            "(once; about 7 minutes; log: $cache/build.log)" >&2
        local started=$SECONDS
        if ! _kube_build_steps "$cache" >"$cache/build.log" 2>&1; then
            echo "kubernetes: the build failed; the end of $cache/build.log:" >&2
            tail -25 "$cache/build.log" >&2 || true
            exit 1
        fi
        echo "kubernetes: built in $((SECONDS - started)) s into $cache/bin" >&2
    ) 9>"$cache/.lock"
}

_kube_build_steps() {  # $1: the cache folder; runs with the lock held, output to the build log
    # in a bash of its own: `set -e` is ignored in a function or subshell called from a condition
    HEARTH_KUBE_DEBIAN_VERSION="$HEARTH_KUBE_DEBIAN_VERSION" HEARTH_KUBE_RECIPE="$HEARTH_KUBE_RECIPE" bash -c \
        'set -euxo pipefail; . "$1"; _kube_build_body "$2"' hearth-kube-build "$_hearth_kube_lib/kubernetes.sh" "$1"
}

_kube_build_body() {  # $1: the cache folder
    local cache="$1"
    if ! command -v go >/dev/null 2>&1 || ! command -v rsync >/dev/null 2>&1; then
        [ "$(id -u)" = "0" ] || { echo "Go and rsync are missing, and apt needs root"; exit 1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go rsync ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go rsync; }
    fi
    go version
    # the work folder is in the cache, so that the result moves into place with one rename, and
    # always the same one (the lock makes it ours): the Go cache's keys include the source folder
    local work="$cache/build"
    rm -rf "$work"
    mkdir "$work"
    _hearth_kube_work="$work" _hearth_kube_cache_dir="$cache"
    # the Go cache outlives the work folder, even a failed build's: the next build is warm (~1 min)
    # the source tree (2.3 GB with its _output) goes once the binaries are in place; a failed
    # build's stays for a look, until the next build
    _hearth_kube_built=""
    trap 'set +x; _kube_keep_go_cache "$_hearth_kube_work" "$_hearth_kube_cache_dir"
          if [ -n "$_hearth_kube_built" ]; then rm -rf "$_hearth_kube_work"; fi' EXIT
    # the sources, with a private apt configuration (the system's is left alone)
    local apt="$work/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$cache/sources"
    _kube_sources >"$apt/sources.list"
    cat "$apt/sources.list"
    [ -s "$apt/sources.list" ] || { echo "no Debian suite found in /etc/apt/sources.list*"; exit 1; }
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o APT::Get::List-Cleanup=false -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq || true  # a third-party suite without sources must not stop us
    # the downloaded source package stays in the cache (34 MB), for a rebuild without apt
    if ! ls "$cache"/sources/kubernetes_*.orig.tar.* "$cache"/sources/kubernetes_*.debian.tar.* \
            >/dev/null 2>&1; then
        (cd "$cache/sources" && apt-get "${opts[@]}" source --download-only -qq \
            "kubernetes=$HEARTH_KUBE_DEBIAN_VERSION")
    fi
    (cd "$work" && apt-get "${opts[@]}" download -qq etcd-server)
    mkdir "$work/etcd"
    dpkg -x "$work"/etcd-server_*.deb "$work/etcd"
    # the upstream tree, with Debian's packaging and patches
    mkdir "$work/src"
    tar -xf "$(ls "$cache"/sources/kubernetes_*.orig.tar.* | head -1)" -C "$work/src" --strip-components=1
    tar -xf "$(ls "$cache"/sources/kubernetes_*.debian.tar.* | head -1)" -C "$work/src"
    local src="$work/src" patch
    if [ -f "$src/debian/patches/series" ]; then
        while read -r patch _; do
            case "$patch" in ''|'#'*) continue ;; esac
            patch -d "$src" -p1 --forward --quiet <"$src/debian/patches/$patch"
        done <"$src/debian/patches/series"
    fi
    # k8s 1.20 vendors modern-go/reflect2 1.0.1, whose map iteration corrupts memory under Go
    # >= 1.18 (the API server dies with "fatal error: fault" encoding a map to JSON, e.g. a Node's
    # labels): Debian's golang-github-modern-go-reflect2-dev 1.0.2 takes its place
    (cd "$work" && apt-get "${opts[@]}" download -qq golang-github-modern-go-reflect2-dev)
    mkdir "$work/reflect2"
    dpkg -x "$work"/golang-github-modern-go-reflect2-dev_*.deb "$work/reflect2"
    local vendored="$src/vendor/github.com/modern-go/reflect2"
    rm -f "$vendored"/*.go "$vendored"/*.s
    cp "$work"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
        "$work"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vendored/"
    # build as debian/rules does: GOPATH mode, vendored modules, no network
    mkdir -p "$src/.go/src/k8s.io"
    ln -s ../../.. "$src/.go/src/k8s.io/kubernetes"
    # hack/lib/golang.sh sets GOCACHE to _output/local/go/cache: the previous build's goes there
    mkdir -p "$src/_output/local/go"
    if [ -d "$cache/go-build" ]; then
        mv -T "$cache/go-build" "$src/_output/local/go/cache"
    fi
    (
        cd "$src/.go/src/k8s.io/kubernetes"
        export GOPATH="$src/.go" GOCACHE="$cache/go-build" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
            KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean HOME="$work"
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
    )
    mkdir "$work/bin"
    local name
    for name in kube-apiserver kube-controller-manager kube-scheduler; do
        cp "$src/_output/bin/$name" "$work/bin/$name" 2>/dev/null ||
            cp "$src/_output/local/bin/linux/$(go env GOARCH)/$name" "$work/bin/$name"
    done
    cp "$work/etcd/usr/bin/etcd" "$work/bin/etcd"
    echo "$HEARTH_KUBE_RECIPE" >"$work/bin/recipe"
    "$work/bin/kube-apiserver" --version
    "$work/bin/etcd" --version
    rm -rf "$cache/bin"
    mv -T "$work/bin" "$cache/bin"  # one rename: a reader sees all the binaries or none
    _hearth_kube_built=1
}

_kube_keep_go_cache() {  # $1: the work folder; $2: the cache folder
    if [ -d "$1/src/_output/local/go/cache" ]; then
        rm -rf "$2/go-build"
        mv -T "$1/src/_output/local/go/cache" "$2/go-build" || true
    fi
}

_kube_python() {  # a Python with lightkube for the fake kubelet: the clone's .venv first
    local candidate
    for candidate in "${HEARTH_KUBE_PYTHON:-}" "$_hearth_kube_lib/../../.venv/bin/python" python3; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import importlib.util, sys; sys.exit(not importlib.util.find_spec("lightkube"))' \
                >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

_kube_start() {  # $1: a name for the log; the rest: the command. Records the pid.
    local name="$1"
    shift
    # stdin, stdout and stderr are not the caller's: a pipe on the caller's output is not held open
    "$@" </dev/null >"$_hearth_kube_dir/$name.log" 2>&1 &
    _hearth_kube_pids+=("$!")
    echo "$! $name" >>"$_hearth_kube_dir/pids"
}

_kube_ours() {  # $1: a pid; true while it is a live process we started (its command line names our folder)
    [ -n "$_hearth_kube_dir" ] && kill -0 "$1" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$_hearth_kube_dir"
}

_kube_api() {  # $1: a path on the API server; prints the answer
    curl -sS --max-time 2 --cacert "$_hearth_kube_dir/certs/apiserver.crt" \
        -H "Authorization: Bearer $(cat "$_hearth_kube_dir/token")" "$(cat "$_hearth_kube_dir/server")$1" 2>/dev/null
}

_kube_ready() {  # $1: what to check (readyz, serviceaccount, node)
    case "$1" in
        readyz) [ "$(_kube_api /readyz)" = "ok" ] ;;
        serviceaccount)  # the token controller has made its secret: pods may be created
            _kube_api /api/v1/namespaces/default/serviceaccounts/default | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("secrets") else 1)' 2>/dev/null ;;
        node)  # Ready, and the node-lifecycle controller took the not-ready taint away
            _kube_api "/api/v1/nodes/$HEARTH_KUBE_NODE" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
sys.exit(0 if ready and not tainted else 1)' 2>/dev/null ;;
    esac
}

_kube_wait() {  # $1: what (for _kube_ready); $2: seconds; $3: the log to show on failure
    local deadline=$((SECONDS + $2)) pid
    until _kube_ready "$1"; do
        for pid in "${_hearth_kube_pids[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                local name
                name="$(awk -v p="$pid" '$1 == p { print $2 }' "$_hearth_kube_dir/pids")"
                echo "kubernetes: $name (pid $pid) exited while waiting for $1; the end of its log:" >&2
                tail -15 "$_hearth_kube_dir/$name.log" >&2 || true
                return 1
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "kubernetes: no $1 after $2 s; the end of $3.log:" >&2
            tail -15 "$_hearth_kube_dir/$3.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

_kube_free_ports() {  # three free TCP ports on 127.0.0.1
    python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

kubernetes_up() {
    if [ -n "${HEARTH_TEST_KUBECONFIG:-}" ]; then
        export KUBECONFIG="$HEARTH_TEST_KUBECONFIG"
        return 0  # the caller named one, or this shell started one already
    fi
    local t0=$EPOCHREALTIME python bin tool
    bin="$(_kube_cache)/bin"
    if ! python="$(_kube_python)"; then
        _kube_give_up "no Python with lightkube for the fake kubelet (run scripts/setup)"
        return 0
    fi
    for tool in openssl curl python3; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            _kube_give_up "$tool is missing"
            return 0
        fi
    done
    if ! _kube_have_binaries "$bin"; then
        if [ "$(id -u)" != "0" ] && ! { command -v go && command -v rsync; } >/dev/null 2>&1; then
            _kube_give_up "no Kubernetes binaries in $bin, and building them needs Go and rsync (apt needs root)"
            return 0
        fi
        if ! _kube_build; then
            _kube_give_up "could not build the Kubernetes control plane (see $(_kube_cache)/build.log)"
            return 0
        fi
        t0=$EPOCHREALTIME
    fi
    _hearth_kube_dir="$(mktemp -d "${TMPDIR:-/tmp}/hearth-kube.XXXXXX")"
    _hearth_kube_pids=()
    chmod 0700 "$_hearth_kube_dir"
    local dir="$_hearth_kube_dir" etcd_port peer_port api_port token
    read -r etcd_port peer_port api_port < <(_kube_free_ports)
    token="$(openssl rand -hex 24)"
    echo "$token" >"$dir/token"
    echo "https://127.0.0.1:$api_port" >"$dir/server"
    echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
    mkdir -p "$dir/certs"
    if ! {
        # ECDSA P-256 (ES256 tokens): an RSA key takes 0.1-0.4 s to make, this one 5 ms
        openssl ecparam -name prime256v1 -genkey -noout -out "$dir/certs/service-account.key" &&
            openssl ec -in "$dir/certs/service-account.key" -pubout -out "$dir/certs/service-account.pub" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
                -subj /CN=hearth-test-apiserver \
                -keyout "$dir/certs/apiserver.key" -out "$dir/certs/apiserver.crt" \
                -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    } >"$dir/openssl.log" 2>&1; then
        tail -5 "$dir/openssl.log" >&2 || true
        kubernetes_down
        _kube_give_up "openssl could not make the keys (log above)"
        return 0
    fi
    cat >"$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: hearth-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$dir/certs/apiserver.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: hearth-test
  context:
    cluster: hearth-test
    user: admin
current-context: hearth-test
KUBECONFIG
    chmod 0600 "$dir/kubeconfig"
    _kube_start etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" --log-level warn
    _kube_start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --cert-dir "$dir/certs" --tls-cert-file "$dir/certs/apiserver.crt" \
        --tls-private-key-file "$dir/certs/apiserver.key" --token-auth-file "$dir/tokens.csv" \
        --authorization-mode Node,RBAC --service-cluster-ip-range 10.0.0.0/24 \
        --service-account-key-file "$dir/certs/service-account.pub" \
        --service-account-signing-key-file "$dir/certs/service-account.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --endpoint-reconciler-type none --allow-privileged=true --profiling=false
    # the others retry until the API server answers: starting them now saves seconds
    _kube_start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
        --leader-elect=false --secure-port 0 --port 0 --profiling=false \
        --service-account-private-key-file "$dir/certs/service-account.key" \
        --root-ca-file "$dir/certs/apiserver.crt" \
        --controllers '*,-nodeipam,-cloud-node-lifecycle,-service,-route'
    _kube_start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" \
        --leader-elect=false --secure-port 0 --port 0 --profiling=false
    _kube_start fake-kubelet "$python" "$_hearth_kube_lib/fake_kubelet.py" \
        --kubeconfig "$dir/kubeconfig" --node-name "$HEARTH_KUBE_NODE"
    if ! _kube_wait readyz 60 kube-apiserver || ! _kube_wait serviceaccount 60 kube-controller-manager ||
            ! _kube_wait node 60 fake-kubelet; then
        kubernetes_down
        _kube_give_up "the Kubernetes control plane did not become ready (log above)"
        return 0
    fi
    export KUBECONFIG="$dir/kubeconfig" HEARTH_TEST_KUBECONFIG="$dir/kubeconfig"
    local took
    took="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    echo "kubernetes: started etcd, kube-apiserver (https://127.0.0.1:$api_port), controller-manager," \
        "scheduler and a fake kubelet (node $HEARTH_KUBE_NODE) in $took s; KUBECONFIG=$dir/kubeconfig" >&2
}

kubernetes_down() {
    local pid waited=0 alive i
    if [ "${#_hearth_kube_pids[@]}" -gt 0 ]; then
        # the fake kubelet and the controllers first, etcd last
        for ((i = ${#_hearth_kube_pids[@]} - 1; i >= 0; i--)); do
            pid="${_hearth_kube_pids[$i]}"
            if _kube_ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
        done
        while [ "$waited" -lt 100 ]; do  # up to 10 s
            alive=0
            for pid in "${_hearth_kube_pids[@]}"; do
                if _kube_ours "$pid"; then alive=1; fi
            done
            if [ "$alive" = 0 ]; then break; fi
            sleep 0.1
            waited=$((waited + 1))
        done
        for pid in "${_hearth_kube_pids[@]}"; do
            if _kube_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done
        _hearth_kube_pids=()
    fi
    if [ -n "$_hearth_kube_dir" ]; then
        rm -rf "$_hearth_kube_dir" 2>/dev/null || true
        if [ "${KUBECONFIG:-}" = "$_hearth_kube_dir/kubeconfig" ]; then
            unset KUBECONFIG HEARTH_TEST_KUBECONFIG
        fi
        _hearth_kube_dir=""
    fi
    return 0
}
