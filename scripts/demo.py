"""The demo: discover an adapter, launch it, and walk one workspace through its lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from hearth import AdapterClient, HearthError, Progress, ProvisioningProfile, discover

DRIVERS = ("fake",)


def show_progress(event: Progress) -> None:
    fraction = f"{event.fraction:4.0%}" if event.fraction is not None else "    "
    print(f"    {fraction}  {event.message}")


async def lifecycle(driver: str, slug: str) -> None:
    found = discover(driver)
    print(f"adapter: {found.path} (found on {found.source})")
    with tempfile.TemporaryDirectory(prefix="hearth-demo-") as data_dir:
        async with await AdapterClient.launch(found.path, data_dir=Path(data_dir) / driver) as client:
            assert client.info is not None
            print(f"handshake: {client.info.adapter.name} {client.info.adapter.version}, "
                  f"methods {', '.join(client.info.capabilities.methods)}")
            solo = ProvisioningProfile(tier="solo", driver=driver,
                                       resource_caps={"cpu": 1, "memory_mb": 512})
            print(f"provision {slug} (tier solo):")
            ref = await client.provision(slug, solo, on_progress=show_progress)
            print(f"  -> {ref.model_dump_json()}")
            again = await client.provision(slug, solo)
            print(f"provision again (idempotent): same ref = {again == ref}")
            report = await client.status(ref)
            print(f"status: {report.state} at {report.endpoint}")
            team = solo.model_copy(update={"tier": "team"})
            print("upgrade to tier team:")
            ref = await client.upgrade(ref, team, on_progress=show_progress)
            print(f"  -> tier {ref.tier}, {ref.last_status}")
            print("teardown:")
            await client.teardown(ref, on_progress=show_progress)
            report = await client.status(ref)
            print(f"status after teardown: {report.state}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--driver", default="fake", choices=DRIVERS)
    parser.add_argument("--slug", default="demo")
    args = parser.parse_args()
    try:
        asyncio.run(lifecycle(args.driver, args.slug))
    except HearthError as exc:
        print(f"demo failed: {exc.kind}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
