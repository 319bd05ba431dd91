"""One replica for tests/test_replicas.py: a ``Host`` on a shared PostgreSQL store, in a process
of its own, driven by the test through its stdin and reporting one JSON object per line.

    python -m tests.replica_worker race URL HOME PROJECT SLUG COUNT
        opens its host, says {"ready"}, waits for a line on stdin, then runs COUNT provisions
        of SLUG at once and says {"done": [...]}
    python -m tests.replica_worker slow URL HOME PROJECT SLUG
        starts a slow provision of SLUG, says {"running": id} once the adapter reports
        progress, then {"result": ...} or {"error": kind, "message": ...} when it ends
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from hearth import HearthError, Host


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def race(url: str, home: str, project: str, slug: str, count: int) -> None:
    async with Host(project_dir=project, home=home, store_url=url) as host:
        say(ready=host.owner)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(
            *(host.provision(slug, tier="solo", driver="fake") for _ in range(count)), return_exceptions=True
        )
        say(done=[r.kind if isinstance(r, HearthError) else type(r).__name__ for r in results])


async def slow(url: str, home: str, project: str, slug: str) -> None:
    async with Host(project_dir=project, home=home, store_url=url) as host:
        op = await host.start_provision(slug, tier="glacial", driver="fake")
        async for event in op.events():
            if event.kind == "progress":
                say(running=op.id, owner=host.owner)
                break
        try:
            ref = await op.result()
        except HearthError as exc:
            say(error=exc.kind, message=exc.message)
        else:
            say(result=None if ref is None else ref.last_status)


def main() -> None:
    mode, url, home, project, slug, *rest = sys.argv[1:]
    if mode == "race":
        asyncio.run(race(url, home, project, slug, int(rest[0])))
    else:
        asyncio.run(slow(url, home, project, slug))


if __name__ == "__main__":
    main()
