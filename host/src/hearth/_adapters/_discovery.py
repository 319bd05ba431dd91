"""Find adapter executables: the project folder, then the user folder, then ``PATH``.

A candidate is refused when it, or any folder above it, could be changed by someone
other than the user or root: writable by group or others (a sticky folder such as
/tmp is fine, since others cannot replace what is in it) or owned by another user.

A project's own adapters (``<project>/.hearth/adapters``) run only once the user trusted them:
``trust_adapters`` records each one's sha256 in the home's ``trusted-adapters.json`` (mode 0600),
and one that is not recorded, or changed since, is refused, like direnv's ``allow``. The user
folder and ``PATH`` are trusted as they are. When the project has a lock
(``.hearth/adapters.lock``, written by ``lock_adapters``), the adapter a driver would use must
match it (sha256 and version) or is refused. A refusal for trust or the lock is final: discovery
does not fall back to an adapter of lower precedence, which would run something the project did
not choose.

``driver_infos`` answers "what could serve each driver" as JSON-ready ``DriverInfo`` models,
with each acceptable adapter's ``--version`` (``probe_versions``, also used by
``hearth adapters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hearth_adaptersdk import codes

from .._dirs import project_adapters_dir, user_adapters_dir
from .._errors import AdapterNotFound, AdapterRefused, InvalidInput, StoreError

Source = Literal["project", "user", "path"]
#: Whether a candidate may run as far as trust goes: a project adapter is ``trusted``,
#: ``untrusted`` (never trusted) or ``changed`` (its sha256 differs from the trusted one);
#: user-folder and PATH adapters are ``not_needed``.
TrustState = Literal["trusted", "untrusted", "changed", "not_needed"]
#: How a candidate stands to the project's lock: ``locked`` (it matches), ``mismatch``,
#: ``unlocked`` (the lock does not name its driver) or ``no_lock`` (the project has none).
LockState = Literal["locked", "mismatch", "unlocked", "no_lock"]

#: The file in the hearth home (next to ``adapters/``) that records trusted project adapters.
TRUST_FILE = "trusted-adapters.json"
#: The project's lock, in its ``.hearth`` folder.
LOCK_FILE = "adapters.lock"
LOCK_FORMAT = 1
#: The bound on the ``--version`` run that checks an adapter against the lock's version.
LOCK_VERSION_PROBE = 5.0
_NOT_TRUSTED = "not trusted (a project's adapters run only once you trust them)"
_CHANGED = "changed since you trusted it (a project's adapters run only once you trust them)"


@dataclass(frozen=True)
class Candidate:
    """One ``hearth-adapter-<driver>`` file found in one location."""

    driver: str
    path: Path
    source: Source
    #: Why it may not be run, or None when it is acceptable.
    refusal: str | None = None
    #: The sha256 of its content (hex), when trust or the lock needed it.
    sha256: str | None = None
    trust: TrustState = "not_needed"
    lock: LockState = "no_lock"
    #: The refusal is for trust or the lock: discovery stops here rather than fall back.
    blocking: bool = False

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
    seen: set[Path] = set()
    unique = []
    for source, folder in folders:  # a folder named twice (PATH often repeats) is searched once
        if folder not in seen:
            seen.add(folder)
            unique.append((source, folder))
    return unique


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


# --- trust and the lock ------------------------------------------------------------------------


def trust_file(home: str | Path | None = None) -> Path:
    """Where trusted project adapters are recorded: next to the user's ``adapters`` folder."""
    return user_adapters_dir(home).parent / TRUST_FILE


def lock_file(project_dir: str | Path) -> Path:
    """The project's adapter lock, ``<project>/.hearth/adapters.lock``."""
    return Path(project_dir) / ".hearth" / LOCK_FILE


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trust_key(path: Path) -> str:
    """A project adapter's key in the trust file: its absolute path (folders resolved)."""
    return str(path.absolute().parent.resolve() / path.name)


def _version_of(output: str | None) -> str | None:
    """The version in ``--version``'s output (``hearth-adapter-<driver> <version>``)."""
    words = (output or "").strip().splitlines()[0].split() if output and output.strip() else []
    return words[-1] if words else None


class _Unusable(Exception):
    """The trust file or the lock cannot be used; the message says why."""


def _read_trust(home: str | Path | None) -> dict[str, dict[str, Any]]:
    path = trust_file(home)
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _Unusable(f"the trust file {path} cannot be read: {exc.strerror}") from None
    problem = _unsafe(path, info, "file")
    if problem:
        raise _Unusable(f"the trust file cannot be used: {problem}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Unusable(f"the trust file {path} cannot be read: {exc}") from None
    adapters = data.get("adapters") if isinstance(data, dict) else None
    if not isinstance(adapters, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in adapters.values()
    ):
        raise _Unusable(f"the trust file {path} is not a hearth trust file")
    return adapters


@dataclass(frozen=True)
class LockEntry:
    """What the project's lock records for one driver."""

    driver: str
    #: The adapter's version, from its ``--version``; None when it gave none.
    version: str | None
    #: The protocol version the handshake agreed on.
    protocol_version: int | None
    sha256: str
    #: Where the adapter was found when the lock was written (for people; not checked).
    source: Source

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "protocol_version": self.protocol_version,
            "sha256": self.sha256,
            "source": self.source,
        }


def read_lock(project_dir: str | Path) -> dict[str, LockEntry] | None:
    """The project's lock by driver, or None when it has none; InvalidInput when it is broken."""
    path = lock_file(project_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"the lock file {path} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
        adapters = data["adapters"]
        if data.get("lock_version") != LOCK_FORMAT or not isinstance(adapters, dict):
            raise ValueError(f"not a version {LOCK_FORMAT} lock")
        entries = {}
        for driver, entry in adapters.items():
            source = entry.get("source")
            if (
                not re.fullmatch(codes.DRIVER_PATTERN, driver)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("version"), str | None)
                or not isinstance(entry.get("protocol_version"), int | None)
                or source not in ("project", "user", "path")
            ):
                raise ValueError(f"the entry for {driver!r} is not valid")
            entries[driver] = LockEntry(
                driver, entry.get("version"), entry.get("protocol_version"), entry["sha256"], source
            )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"the lock file {path} cannot be used: {exc}") from None
    return entries


@dataclass(frozen=True)
class _Policy:
    """What trust and the lock say, read once for one discovery."""

    trusted: Mapping[str, Mapping[str, Any]]
    trust_problem: str | None
    lock: Mapping[str, LockEntry] | None
    lock_problem: str | None
    lock_path: Path | None

    @classmethod
    def load(
        cls, project_dir: str | Path | None, home: str | Path | None, *, use_lock: bool = True
    ) -> _Policy:
        trusted: Mapping[str, Mapping[str, Any]] = {}
        trust_problem = lock_problem = None
        lock: dict[str, LockEntry] | None = None
        if project_dir is not None:
            try:
                trusted = _read_trust(home)
            except _Unusable as exc:
                trust_problem = str(exc)
            if use_lock:
                try:
                    lock = read_lock(project_dir)
                except InvalidInput as exc:
                    lock_problem = exc.message
        path = lock_file(project_dir) if project_dir is not None else None
        return cls(trusted, trust_problem, lock, lock_problem, path)

    def assess(self, candidate: Candidate) -> Candidate:
        """``candidate`` with its trust and lock state, refused (blocking) when they forbid it."""
        entry = self.lock.get(candidate.driver) if self.lock is not None else None
        sha: str | None = None
        if candidate.source == "project" or entry is not None:
            with contextlib.suppress(OSError):
                sha = file_sha256(candidate.path)
        refusal, blocking = candidate.refusal, False
        trust: TrustState = "not_needed"
        if candidate.source == "project":
            recorded = self.trusted.get(_trust_key(candidate.path))
            if self.trust_problem is None and recorded is not None and sha is not None:
                trust = "trusted" if recorded.get("sha256") == sha else "changed"
            else:
                trust = "changed" if recorded is not None else "untrusted"
            if trust != "trusted" and refusal is None:
                refusal = self.trust_problem or (_CHANGED if trust == "changed" else _NOT_TRUSTED)
                blocking = True
        lock: LockState = "no_lock"
        if self.lock_problem is not None:
            lock = "mismatch"
            if refusal is None:
                refusal, blocking = self.lock_problem, True
        elif self.lock is not None:
            lock = "unlocked" if entry is None else ("locked" if sha == entry.sha256 else "mismatch")
            if entry is not None and lock == "mismatch" and refusal is None:
                now = f"{sha[:12]}…" if sha else "unreadable"
                refusal = (
                    f"does not match {self.lock_path}: its sha256 is {now}, the lock has {entry.sha256[:12]}…"
                )
                blocking = True
        return dataclasses.replace(
            candidate, refusal=refusal, sha256=sha, trust=trust, lock=lock, blocking=blocking
        )

    def version_refusal(self, candidate: Candidate, output: str | None) -> str | None:
        """Why ``candidate``, whose ``--version`` said ``output``, does not match the lock."""
        entry = self.lock.get(candidate.driver) if self.lock is not None else None
        if entry is None or entry.version is None:
            return None
        version = _version_of(output)
        if version == entry.version:
            return None
        said = f"version {version!r}" if version else "no version (--version failed)"
        return f"does not match {self.lock_path}: it has {said}, the lock has {entry.version!r}"


def _probe_version_now(path: Path, bound: float) -> str | None:
    """``path --version``'s output, run at once (discovery is synchronous); None on failure.
    Runs in its own session: one that takes over ``bound`` is killed with its group."""
    try:
        process = subprocess.Popen(
            [str(path), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        out, _ = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=_REAP_BOUND)
        return None
    if process.returncode != 0:
        return None
    return out.decode("utf-8", errors="replace").strip() or None


def _with_version(candidate: Candidate, policy: _Policy, output: str | None) -> Candidate:
    if not candidate.acceptable or candidate.lock != "locked":
        return candidate
    refusal = policy.version_refusal(candidate, output)
    if refusal is None:
        return candidate
    return dataclasses.replace(candidate, refusal=refusal, lock="mismatch", blocking=True)


def check_lock_versions(
    found: Iterable[Candidate], versions: Mapping[Path, str | None], project_dir: str | Path | None
) -> list[Candidate]:
    """``found`` with the lock's versions checked against the ``--version`` outputs in
    ``versions`` (``probe_versions``): a locked candidate whose version differs is refused."""
    policy = _Policy.load(project_dir, None)
    return [_with_version(c, policy, versions.get(c.path)) for c in found]


def chosen(found: Iterable[Candidate]) -> list[bool]:
    """For each candidate (in ``discover_all``'s order), whether a call would use it: the first
    acceptable one of its driver, unless a blocking refusal came first."""
    decided: set[str] = set()
    flags = []
    for candidate in found:
        use = candidate.acceptable and candidate.driver not in decided
        if candidate.acceptable or candidate.blocking:
            decided.add(candidate.driver)
        flags.append(use)
    return flags


@dataclass(frozen=True)
class Trusted:
    """A project adapter ``trust_adapters`` recorded."""

    driver: str
    path: Path
    sha256: str
    #: Its trust before: ``untrusted``, ``changed`` or ``trusted`` (nothing changed).
    was: TrustState


def trust_adapters(
    project_dir: str | Path, home: str | Path | None = None, drivers: Iterable[str] | None = None
) -> list[Trusted]:
    """Trust the project's adapters (all of them, or those of ``drivers``) as they are now:
    record each one's sha256 in the home's trust file (mode 0600). Read them first: from then
    on they run on any call that needs their driver."""
    folder = project_adapters_dir(project_dir)
    found = [
        c for c in discover_all(project_dir=project_dir, home=home, path_env="") if c.source == "project"
    ]
    if drivers is not None:
        wanted = list(dict.fromkeys(drivers))
        for driver in wanted:
            _check_driver(driver)
            if not any(c.driver == driver for c in found):
                raise InvalidInput(
                    f"no project adapter for driver {driver!r}: {folder} has no "
                    f"{codes.ADAPTER_PREFIX}{driver}"
                )
        found = [c for c in found if c.driver in wanted]
    try:
        recorded = _read_trust(home)
    except _Unusable as exc:
        raise StoreError(f"{exc}; fix or remove it, then trust again") from None
    done = []
    for candidate in found:
        problem = refusal_reason(candidate.path)
        if problem is not None:
            raise AdapterRefused(f"{candidate.path} cannot be trusted: {problem}")
        sha = file_sha256(candidate.path)
        key = _trust_key(candidate.path)
        before = recorded.get(key)
        was: TrustState = (
            "untrusted" if before is None else ("trusted" if before.get("sha256") == sha else "changed")
        )
        if was != "trusted":
            recorded[key] = {
                "driver": candidate.driver,
                "sha256": sha,
                "trusted_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        done.append(Trusted(candidate.driver, candidate.path, sha, was))
    if any(item.was != "trusted" for item in done):
        _write_private(trust_file(home), {"version": 1, "adapters": dict(sorted(recorded.items()))})
    return done


def _write_atomically(path: Path, text: str, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_private(path: Path, document: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(document, indent=2) + "\n", 0o600)
    except OSError as exc:
        raise StoreError(f"cannot write the trust file {path}: {exc.strerror or exc}") from None


def _data_dir(data_root: Path, driver: str) -> Path:
    """The driver's private data folder (mode 0700), as the host gives it."""
    data_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = data_root / driver
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def candidates(
    driver: str,
    project_dir: str | Path | None = None,
    home: str | Path | None = None,
    path_env: str | None = None,
) -> list[Candidate]:
    """Every file that could serve ``driver``, in order of precedence, with its trust and lock
    state (the lock's version is checked by ``discover`` alone)."""
    _check_driver(driver)
    return _collect(driver, project_dir, home, path_env, _Policy.load(project_dir, home))


def _collect(
    driver: str,
    project_dir: str | Path | None,
    home: str | Path | None,
    path_env: str | None,
    policy: _Policy,
) -> list[Candidate]:
    found = []
    for source, folder in search_path(project_dir, home, path_env):
        path = folder / f"{codes.ADAPTER_PREFIX}{driver}"
        if path.is_file():
            found.append(policy.assess(Candidate(driver, path, source, refusal_reason(path))))
    return found


def discover(
    driver: str,
    *,
    project_dir: str | Path | None = None,
    home: str | Path | None = None,
    path_env: str | None = None,
    version_probe: float = LOCK_VERSION_PROBE,
) -> Discovered:
    """The first acceptable adapter for ``driver``; says why earlier candidates were refused.

    A project adapter that is not trusted (or changed since), and an adapter that does not match
    the project's lock, end the search with ``AdapterRefused``. With a lock that records a
    version, the chosen adapter's ``--version`` is asked (within ``version_probe`` seconds).
    """
    _check_driver(driver)
    policy = _Policy.load(project_dir, home)
    found = _collect(driver, project_dir, home, path_env, policy)
    candidate = _choose(driver, found, policy, version_probe=version_probe)
    if candidate is None:
        raise _not_found(driver, project_dir, home, path_env)
    refused = tuple(c for c in found[: [c.path for c in found].index(candidate.path)])
    return Discovered(driver, candidate.path, candidate.source, refused)


def _choose(
    driver: str, found: list[Candidate], policy: _Policy, *, version_probe: float, check_version: bool = True
) -> Candidate | None:
    """The candidate a call would use; None when there is none at all; AdapterRefused when
    every one is refused or a blocking refusal (trust, the lock) comes first."""
    refused: list[Candidate] = []
    for found_one in found:
        candidate = found_one
        if check_version and candidate.acceptable and candidate.lock == "locked":
            candidate = _with_version(candidate, policy, _probe_version_now(candidate.path, version_probe))
        if candidate.acceptable:
            return candidate
        if candidate.blocking:
            raise AdapterRefused(
                f"{codes.ADAPTER_PREFIX}{driver} at {candidate.path} ({candidate.source}) is "
                f"refused: {candidate.refusal}"
            )
        refused.append(candidate)
    if refused:
        reasons = "; ".join(f"{c.path} ({c.source}): {c.refusal}" for c in refused)
        raise AdapterRefused(f"every hearth-adapter-{driver} found was refused: {reasons}")
    return None


def _not_found(
    driver: str, project_dir: str | Path | None, home: str | Path | None, path_env: str | None
) -> AdapterNotFound:
    places = ", ".join(
        str(folder) for source, folder in search_path(project_dir, home, path_env) if source != "path"
    )
    return AdapterNotFound(
        f"no adapter for driver {driver!r}: hearth-adapter-{driver} is not in {places} nor on "
        f"PATH; install its package (pip install hearth-adapter-{driver}) or put the "
        "executable in the project's .hearth/adapters folder"
    )


def discover_all(
    *, project_dir: str | Path | None = None, home: str | Path | None = None, path_env: str | None = None
) -> list[Candidate]:
    """Every adapter executable in every location, grouped by driver in order of precedence.

    Trust and the lock's sha256 are checked; the lock's version is not (that needs the adapter's
    ``--version``: see ``check_lock_versions``).
    """
    policy = _Policy.load(project_dir, home)
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
                found.append(policy.assess(Candidate(driver, path, source, refusal_reason(path))))
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
    found = check_lock_versions(found, versions, project_dir)
    in_process = set(in_process_drivers)
    rows = [DriverInfo(driver=d, acceptable=True, in_process=True, chosen=True) for d in sorted(in_process)]
    for candidate, used in zip(found, chosen(found), strict=True):
        rows.append(
            DriverInfo(
                driver=candidate.driver,
                path=str(candidate.path),
                source=candidate.source,
                version=versions.get(candidate.path),
                acceptable=candidate.acceptable,
                refusal=candidate.refusal,
                chosen=used and candidate.driver not in in_process,
            )
        )
    # a stable sort: by driver, in-process first, then the candidates' own precedence
    return sorted(rows, key=lambda row: row.driver)
