"""The demo: a whole workspace lifecycle through the ``hearth`` CLI, in a fresh temporary home."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVERS = ("fake",)


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
        project.mkdir()
        print(f"hearth demo: driver {args.driver}, home {home}")
        slug, driver = args.slug, args.driver
        run(home, project, "adapters")
        run(home, project, "provision", slug, "--tier", "solo", "--driver", driver)
        run(home, project, "provision", slug, "--tier", "solo", "--driver", driver, "--json")
        run(home, project, "status", slug)
        run(home, project, "provision", slug, "--tier", "team", "--driver", driver,
            expect_failure=True)
        run(home, project, "upgrade", slug, "--tier", "team")
        run(home, project, "ls")
        run(home, project, "teardown", slug)
        run(home, project, "status", slug)
        run(home, project, "logs", slug)
        run(home, project, "reconcile")
    print("\ndemo: done; the temporary home is removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
