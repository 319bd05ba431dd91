"""The demo: a whole workspace lifecycle through the ``hearth`` CLI, in a fresh temporary home."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVERS = ("fake", "docker", "tfgrid")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--driver", default="fake", choices=DRIVERS)
    parser.add_argument("--slug", default="demo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-demo-") as folder:
        home, project = Path(folder) / "home", Path(folder) / "project"
        (project / ".hearth").mkdir(parents=True)
        (project / ".hearth" / "hearth.toml").write_text(project_settings(args.driver))
        print(f"hearth demo: driver {args.driver}, home {home}")
        slug, driver = args.slug, args.driver
        run(home, project, "adapters")
        run(home, project, "provision", slug, "--tier", "solo", "--driver", driver)
        run(home, project, "provision", slug, "--tier", "solo", "--driver", driver, "--json")
        run(home, project, "status", slug)
        fetch(home, project, slug)
        run(home, project, "provision", slug, "--tier", "team", "--driver", driver, expect_failure=True)
        run(home, project, "upgrade", slug, "--tier", "team")
        run(home, project, "ls")
        fetch(home, project, slug)
        run(home, project, "teardown", slug)
        run(home, project, "status", slug)
        run(home, project, "logs", slug)
        run(home, project, "reconcile")
    print("\ndemo: done; the temporary home is removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
