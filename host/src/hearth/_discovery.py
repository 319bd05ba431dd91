"""Find adapter executables: the project folder, then the user folder, then ``PATH``.

A candidate is refused when it, or any folder above it, could be changed by someone
other than the user or root: writable by group or others (a sticky folder such as
/tmp is fine, since others cannot replace what is in it) or owned by another user.

``driver_infos`` answers "what could serve each driver" as JSON-ready ``DriverInfo`` models,
with each acceptable adapter's ``--version`` (``probe_versions``, also used by
``hearth adapters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hearth_adaptersdk import codes

from ._dirs import project_adapters_dir, user_adapters_dir
from ._errors import AdapterNotFound, AdapterRefused, InvalidInput

Source = Literal["project", "user", "path"]


@dataclass(frozen=True)
class Candidate:
    """One ``hearth-adapter-<driver>`` file found in one location."""

    driver: str
    path: Path
    source: Source
    #: Why it may not be run, or None when it is acceptable.
    refusal: str | None = None

    @property
    def acceptable(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class Discovered:
    """The adapter chosen for a driver, and the earlier candidates that were refused."""

    driver: str
    path: Path
    source: Source
    refused: tuple[Candidate, ...] = field(default=())


def search_path(
    project_dir: str | Path | None = None, home: str | Path | None = None, path_env: str | None = None
) -> list[tuple[Source, Path]]:
    """The folders searched, in order of precedence."""
    folders: list[tuple[Source, Path]] = []
    if project_dir is not None:
        folders.append(("project", project_adapters_dir(project_dir)))
    folders.append(("user", user_adapters_dir(home)))
    path_value = os.environ.get("PATH", "") if path_env is None else path_env
    folders += [("path", Path(entry)) for entry in path_value.split(os.pathsep) if entry]
    return folders


def refusal_reason(path: Path) -> str | None:
    """Why ``path`` must not be run as an adapter, or None when it is safe."""
    try:
        real = path.resolve(strict=True)
        info = real.stat()
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not os.access(real, os.X_OK):
        return "not executable (chmod +x)"
    problem = _unsafe(real, info, "file")
    if problem:
        return problem
    for folder in {
        *real.parents,
        *path.absolute().parent.resolve().parents,
        path.absolute().parent.resolve(),
    }:
        try:
            folder_info = folder.stat()
        except OSError as exc:
            return f"folder {folder} cannot be read: {exc.strerror}"
        problem = _unsafe(folder, folder_info, "folder")
        if problem:
            return problem
    return None


def _unsafe(where: Path, info: os.stat_result, what: str) -> str | None:
    if info.st_uid not in (os.getuid(), 0):
        return f"{what} {where} is owned by uid {info.st_uid}, not by you or root"
    sticky_folder = what == "folder" and info.st_mode & stat.S_ISVTX
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_folder:
        return (
            f"{what} {where} is writable by group or others "
            f"(mode {stat.filemode(info.st_mode)}); chmod go-w it"
        )
    return None


def _check_driver(driver: str) -> None:
    if not re.fullmatch(codes.DRIVER_PATTERN, driver):
        raise InvalidInput(
            f"{driver!r} is not a driver name (lowercase letters, digits and "
            "dashes, starting with a letter or digit, at most 40)"
        )


def candidates(
    driver: str,
    project_dir: str | Path | None = None,
    home: str | Path | None = None,
    path_env: str | None = None,
) -> list[Candidate]:
    """Every file that could serve ``driver``, in order of precedence."""
    _check_driver(driver)
    found = []
    for source, folder in search_path(project_dir, home, path_env):
        path = folder / f"{codes.ADAPTER_PREFIX}{driver}"
        if path.is_file():
            found.append(Candidate(driver, path, source, refusal_reason(path)))
    return found


def discover(
    driver: str,
    *,
    project_dir: str | Path | None = None,
    home: str | Path | None = None,
    path_env: str | None = None,
) -> Discovered:
    """The first acceptable adapter for ``driver``; says why earlier candidates were refused."""
    found = candidates(driver, project_dir, home, path_env)
    refused: list[Candidate] = []
    for candidate in found:
        if candidate.acceptable:
            return Discovered(driver, candidate.path, candidate.source, tuple(refused))
        refused.append(candidate)
    if refused:
        reasons = "; ".join(f"{c.path} ({c.source}): {c.refusal}" for c in refused)
        raise AdapterRefused(f"every hearth-adapter-{driver} found was refused: {reasons}")
    places = ", ".join(
        str(folder) for source, folder in search_path(project_dir, home, path_env) if source != "path"
    )
    raise AdapterNotFound(
        f"no adapter for driver {driver!r}: hearth-adapter-{driver} is not in {places} nor on "
        f"PATH; install its package (pip install hearth-adapter-{driver}) or put the "
        "executable in the project's .hearth/adapters folder"
    )


def discover_all(
    *, project_dir: str | Path | None = None, home: str | Path | None = None, path_env: str | None = None
) -> list[Candidate]:
    """Every adapter executable in every location, grouped by driver in order of precedence."""
    found: list[Candidate] = []
    for source, folder in search_path(project_dir, home, path_env):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            driver = path.name.removeprefix(codes.ADAPTER_PREFIX)
            if (
                path.name.startswith(codes.ADAPTER_PREFIX)
                and re.fullmatch(codes.DRIVER_PATTERN, driver)
                and path.is_file()
            ):
                found.append(Candidate(driver, path, source, refusal_reason(path)))
    order = {driver: index for index, driver in enumerate(sorted({c.driver for c in found}))}
    return sorted(found, key=lambda c: order[c.driver])


#: How long a timed-out ``--version`` probe's killed process group gets to be reaped.
_REAP_BOUND = 2.0


class DriverInfo(BaseModel):
    """One way a driver could be served, as discovery sees it now (for queries and ``--json``).

    One per candidate executable, in order of precedence, plus one per in-process driver.
    ``chosen`` marks the one a call would use: an in-process driver wins over executables,
    then the first acceptable candidate; the others are shadowed or refused.
    """

    model_config = ConfigDict(frozen=True)

    driver: str
    #: The executable; None for an in-process driver.
    path: str | None = None
    #: Where it was found: the project's ``.hearth/adapters``, the user folder, or ``PATH``;
    #: None for an in-process driver.
    source: Source | None = None
    #: Its ``--version`` output; None when refused, in process, or it did not answer in time.
    version: str | None = None
    acceptable: bool
    #: Why it may not be run (None when ``acceptable``).
    refusal: str | None = None
    in_process: bool = False
    chosen: bool = False


async def probe_version(path: str | Path, bound: float) -> str | None:
    """``path --version``'s output, or None when it fails, says nothing or takes over ``bound``.

    Runs in its own session, so that one that does not answer in time is stopped with its
    whole process group; awaiting it never blocks the event loop.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            str(path),
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None
    finished = False
    try:
        async with asyncio.timeout(bound):
            out, _ = await process.communicate()
        finished = True
    except TimeoutError:
        return None
    finally:
        if not finished:  # timed out or cancelled: stop the group this call started
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_BOUND):
                    await process.wait()
    if process.returncode != 0:
        return None
    return out.decode("utf-8", errors="replace").strip() or None


async def probe_versions(paths: Iterable[str | Path], bound: float) -> dict[Path, str | None]:
    """Each executable's ``--version`` (see ``probe_version``), all asked at once."""
    unique = list(dict.fromkeys(Path(path) for path in paths))
    versions = await asyncio.gather(*(probe_version(path, bound) for path in unique))
    return dict(zip(unique, versions, strict=True))


async def driver_infos(
    project_dir: str | Path | None,
    home: str | Path | None,
    *,
    in_process_drivers: Iterable[str] = (),
    version_probe: float,
    path_env: str | None = None,
) -> list[DriverInfo]:
    """Every driver this host could serve and how: in-process drivers, then each executable
    found (``discover_all``), grouped by driver in order of precedence, with the version of
    each acceptable executable (asked in parallel, each within ``version_probe`` seconds)."""
    found = discover_all(project_dir=project_dir, home=home, path_env=path_env)
    versions = await probe_versions((c.path for c in found if c.acceptable), version_probe)
    in_process = set(in_process_drivers)
    rows = [DriverInfo(driver=d, acceptable=True, in_process=True, chosen=True) for d in sorted(in_process)]
    served = set(in_process)
    for candidate in found:
        chosen = candidate.acceptable and candidate.driver not in served
        if chosen:
            served.add(candidate.driver)
        rows.append(
            DriverInfo(
                driver=candidate.driver,
                path=str(candidate.path),
                source=candidate.source,
                version=versions.get(candidate.path),
                acceptable=candidate.acceptable,
                refusal=candidate.refusal,
                chosen=chosen,
            )
        )
    # a stable sort: by driver, in-process first, then the candidates' own precedence
    return sorted(rows, key=lambda row: row.driver)
