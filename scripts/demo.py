"""The demo: a whole workspace lifecycle through the ``hearth`` CLI, in a fresh temporary home.

With ``--serve`` the same lifecycle goes through a daemon (``hearth serve``) the demo starts on
the home's socket and stops with SIGTERM at the end: the CLI finds it by itself, and the demo
also asks the API directly (what a console does)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DRIVERS = ("fake", "docker", "tfgrid", "kustomize")
DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnYNXg+KtbLdjvZbHcsS47WEm6JfEDyh1QKwP3ZUW7O demo@hearth"


def project_settings(driver: str) -> str:
    """The demo project's .hearth/hearth.toml: what each driver needs from a tier."""
    if driver == "tfgrid":
        socket = os.environ["HEARTH_DEMO_TFGRID_SOCKET"]
        return (
            f'[tiers.solo.driver_flags.tfgrid]\nssh_keys = ["{DEMO_KEY}"]\n'
            # solo is 1 slice, team 2: resizing a TFGrid VM means redeploying it
            f'[tiers.team.driver_flags.tfgrid]\nssh_keys = ["{DEMO_KEY}"]\n'
            "allow_destructive_upgrade = true\n"
            f'[adapters.tfgrid]\nsocket = "{socket}"\npoll_interval = 0.2\n'
        )
    if driver == "kustomize":
        kubeconfig = os.environ["HEARTH_DEMO_KUBECONFIG"]
        flags = 'image = "hearth-test/httpd:1"\nport = 8080\n'
        return (
            "[tiers.solo]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
            f"[tiers.solo.driver_flags.kustomize]\n{flags}"
            "[tiers.team]\nresource_caps = { cpu = 1, memory_mb = 128 }\n"
            f"[tiers.team.driver_flags.kustomize]\n{flags}"
            f'[adapters.kustomize]\nkubeconfig = "{kubeconfig}"\n'
        )
    if driver != "docker":
        return ""
    image = os.environ.get("HEARTH_DEMO_DOCKER_IMAGE", "hearth-test/httpd:1")
    url = os.environ.get("HEARTH_DEMO_DOCKER_URL", "unix:///var/run/docker.sock")
    flags = f'image = "{image}"\nport = 8080\ndata_path = "/www"\n'
    return (
        f"[tiers.solo]\nresource_caps = {{ cpu = 0.5, memory_mb = 64 }}\n"
        f"[tiers.solo.driver_flags.docker]\n{flags}"
        f"[tiers.team]\nresource_caps = {{ cpu = 1, memory_mb = 128 }}\n"
        f"[tiers.team.driver_flags.docker]\n{flags}"
        f'[adapters.docker]\nurl = "{url}"\n'
    )


def fetch(home: Path, project: Path, slug: str) -> None:
    """Show that the workspace answers at its endpoint."""
    import urllib.request

    done = subprocess.run(
        ["hearth", "status", slug, "--json", "--home", str(home), "--project", str(project)],
        capture_output=True,
        text=True,
        check=True,
    )
    endpoint = json.loads(done.stdout)["endpoint"]
    if endpoint and endpoint.startswith("http://127.0.0.1"):
        with urllib.request.urlopen(endpoint, timeout=10) as response:
            print(f"\n$ GET {endpoint}\n{response.read().decode().strip()}")


def run(home: Path, project: Path, *args: str, expect_failure: bool = False) -> None:
    shown = ["hearth", *args]
    print(f"\n$ {shlex.join(shown)}", flush=True)
    done = subprocess.run([*shown, "--home", str(home), "--project", str(project)], check=False)
    if (done.returncode != 0) != expect_failure:
        print(f"demo: '{shlex.join(shown)}' exited with {done.returncode}", file=sys.stderr)
        sys.exit(1)


#: How long the demo waits for the daemon to start or stop (seconds).
DAEMON_BOUND = 30.0


@contextmanager
def daemon(home: Path, project: Path) -> Iterator[list[str]]:
    """``hearth serve`` on the home's socket for the block; its log lines, as they come."""
    argv = ["hearth", "serve", "--home", str(home), "--project", str(project)]
    print(f"\n$ {shlex.join(argv[:2])} &", flush=True)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if "serving" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(DAEMON_BOUND) or process.poll() is not None:
            print("demo: hearth serve did not start:\n" + "\n".join(lines), file=sys.stderr)
            sys.exit(1)
        print(lines[-1])
        yield lines
    finally:
        if process.poll() is None:
            print(f"\n$ kill -TERM {process.pid}   # the daemon drains and stops", flush=True)
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=DAEMON_BOUND)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            reader.join(DAEMON_BOUND)
            print(lines[-1] if lines else "", f"(exit {code})")
            if code != 0:
                print("demo: hearth serve did not stop cleanly:\n" + "\n".join(lines), file=sys.stderr)
                sys.exit(1)


def api(home: Path, slug: str) -> None:
    """What a console does: ask the daemon's API v1 over its Unix socket."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(home / "hearth.sock"))
    with httpx.Client(transport=transport, base_url="http://hearth", timeout=DAEMON_BOUND) as client:
        print(f"\n$ curl --unix-socket {home / 'hearth.sock'} http://hearth/v1/workspaces/{slug}")
        record = client.get(f"/v1/workspaces/{slug}")
        print(json.dumps(record.json(), indent=2))
        if record.status_code != 200:
            sys.exit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--driver", default="fake", choices=DRIVERS)
    parser.add_argument("--slug", default="demo")
    parser.add_argument("--serve", action="store_true", help="go through a daemon the demo starts and stops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-demo-") as folder:
        home, project = Path(folder) / "home", Path(folder) / "project"
        (project / ".hearth").mkdir(parents=True)
        (project / ".hearth" / "hearth.toml").write_text(project_settings(args.driver))
        how = "through a daemon (hearth serve)" if args.serve else "embedded"
        print(f"hearth demo: driver {args.driver}, {how}, home {home}")
        if args.serve:
            with daemon(home, project) as log:
                lifecycle(home, project, args.slug, args.driver, serve=True)
                served = [line for line in log if "HTTP/1.1" in line]
                print(f"\ndemo: the daemon answered {len(served)} requests; the CLI found it by itself")
                if not served:
                    print("demo: the CLI did not go through the daemon", file=sys.stderr)
                    return 1
        else:
            lifecycle(home, project, args.slug, args.driver, serve=False)
    print("\ndemo: done; the temporary home is removed")
    return 0


def lifecycle(home: Path, project: Path, slug: str, driver: str, *, serve: bool) -> None:
    """The lifecycle through the CLI (which finds a daemon on the home by itself)."""
    run(home, project, "adapters")
    run(home, project, "provision", slug, "--tier", "solo", "--driver", driver)
    run(home, project, "provision", slug, "--tier", "solo", "--driver", driver, "--json")
    run(home, project, "status", slug)
    fetch(home, project, slug)
    if serve:
        api(home, slug)
    run(home, project, "provision", slug, "--tier", "team", "--driver", driver, expect_failure=True)
    run(home, project, "upgrade", slug, "--tier", "team")
    run(home, project, "ls")
    # stop keeps the disk and start brings the same workspace back; tfgrid cannot (unsupported)
    run(home, project, "stop", slug, expect_failure=driver == "tfgrid")
    if driver != "tfgrid":
        run(home, project, "status", slug)
        run(home, project, "start", slug)
    fetch(home, project, slug)
    run(home, project, "teardown", slug)
    run(home, project, "status", slug)
    run(home, project, "logs", slug)
    run(home, project, "reconcile")


if __name__ == "__main__":
    sys.exit(main())
