"""``hearth adapters lock``: write the project's lock from what each adapter answers now.

It runs each adapter's handshake, so it sits above discovery and the client (it is what used to
make ``_discovery`` and ``_supervisor`` import each other).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._errors import AdapterRefused, StoreError
from ._client import AdapterClient
from ._discovery import (
    LOCK_FORMAT,
    LOCK_VERSION_PROBE,
    LockEntry,
    _check_driver,
    _choose,
    _collect,
    _data_dir,
    _not_found,
    _Policy,
    _version_of,
    _write_atomically,
    discover_all,
    file_sha256,
    lock_file,
    probe_version,
    read_lock,
)
from ._supervisor import named_variables


async def lock_adapters(
    project_dir: str | Path,
    home: str | Path | None = None,
    drivers: Iterable[str] | None = None,
    *,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    data_root: Path | None = None,
    version_probe: float = LOCK_VERSION_PROBE,
    handshake_timeout: float = 10.0,
    path_env: str | None = None,
) -> dict[str, LockEntry]:
    """Write the project's lock: for each driver (``drivers``, else every one found), the
    adapter a call would use now (the current lock aside), with its sha256, its ``--version``
    and the protocol version its handshake agrees on (``configs`` gives each driver's config,
    ``data_root`` the folder holding the drivers' data folders). With ``drivers``, the other
    entries of an existing lock are kept. Returns every entry the lock now holds."""
    policy = _Policy.load(project_dir, home, use_lock=False)
    if drivers is None:
        wanted = list(
            dict.fromkeys(
                c.driver for c in discover_all(project_dir=project_dir, home=home, path_env=path_env)
            )
        )
        entries: dict[str, LockEntry] = {}
    else:
        wanted = list(dict.fromkeys(drivers))
        entries = dict(read_lock(project_dir) or {})
    for driver in wanted:
        _check_driver(driver)
        found = _collect(driver, project_dir, home, path_env, policy)
        candidate = _choose(driver, found, policy, version_probe=version_probe, check_version=False)
        if candidate is None:
            raise _not_found(driver, project_dir, home, path_env)
        output = await probe_version(candidate.path, version_probe)
        version = _version_of(output)
        if version is None:
            raise AdapterRefused(
                f"{candidate.path} did not answer --version within {version_probe:g} s; "
                "the lock records each adapter's version"
            )
        config = dict((configs or {}).get(driver, {}))
        data_dir = _data_dir(data_root, driver) if data_root is not None else None
        client = await AdapterClient.launch(
            candidate.path,
            config=config,
            timeout=handshake_timeout,
            data_dir=data_dir,
            driver=driver,
            env=named_variables(config),
            cwd=project_dir,
        )
        try:
            assert client.info is not None
            protocol = client.info.protocol_version
        finally:
            await client.close()
        sha = candidate.sha256 or file_sha256(candidate.path)
        entries[driver] = LockEntry(driver, version, protocol, sha, candidate.source)
    document = {
        "lock_version": LOCK_FORMAT,
        "adapters": {driver: entries[driver].to_json() for driver in sorted(entries)},
    }
    path = lock_file(project_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(document, indent=2) + "\n", 0o644)
    except OSError as exc:
        raise StoreError(f"cannot write the lock {path}: {exc.strerror or exc}") from None
    return {driver: entries[driver] for driver in sorted(entries)}
