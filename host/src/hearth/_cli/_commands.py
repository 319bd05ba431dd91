"""Each command: what it asks of the host (or a daemon) and what it answers, as its ``--json``
document, its text and its exit status. Where the work runs is ``_route``'s to say, how it is
stopped by a signal ``_main``'s. Nothing beyond the standard library loads at import: each
command loads what it uses, so ``hearth ls`` reads the home's SQLite file and nothing more."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._dirs import find_project_dir, state_dir
from .._errors import HearthError, InvalidInput
from .._store._records import STORE_FILE, Listed, current
from ._exits import EXIT_DRIFT, NotConfirmed
from ._render import (
    adapters_lines,
    labels_line,
    logs_lines,
    ls_lines,
    plan_lines,
    progress_printer,
    quiet_logs,
    reconcile_lines,
    ref_lines,
    safe,
    status_lines,
    touch_line,
)
from ._route import configured_store, daemon, named_daemon

if TYPE_CHECKING:
    from .._adapters._discovery import Candidate
    from .._lifecycle._host import Host
    from .._remote import RemoteHost


def ls(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth ls``: the records, read straight from the home's store (no adapter, no models;
    a daemon on the home reads the same store). A daemon ``HEARTH_URL`` names is asked."""
    if named_daemon(args) is not None:
        import asyncio

        quiet_logs()
        listed = asyncio.run(_ls_remote(args))
    elif configured_store(args):
        import asyncio

        quiet_logs()
        listed = asyncio.run(_ls_store(args))
    else:
        listed = current(state_dir(getattr(args, "home", None)) / STORE_FILE, labels=_wanted(args))
    return [r.ref for r in listed], ls_lines(listed)


async def _ls_store(args: argparse.Namespace) -> list[Listed]:
    from .._lifecycle._host import Host

    async with Host(
        project_dir=getattr(args, "project", None),
        home=getattr(args, "home", None),
        store_url=getattr(args, "store", None),
    ) as host:
        return _listed(await host.deployments(include_torn_down=True, labels=_wanted(args)))


def _wanted(args: argparse.Namespace) -> dict[str, str] | None:
    """``--label``'s labels, checked (the store's reader checks none), None without any."""
    from .._labels import labels_given

    return labels_given(dict(getattr(args, "labels", None) or [])) or None


async def _ls_remote(args: argparse.Namespace) -> list[Listed]:
    remote = daemon(args)
    assert remote is not None
    async with remote:
        return _listed(await remote.deployments(include_torn_down=True, labels=_wanted(args)))


def _listed(records: list[Any]) -> list[Listed]:
    from .._models import synthesized_ref

    listed = []
    for record in records:
        document = (record.ref or synthesized_ref(record)).model_dump(mode="json")
        document["last_status"] = record.state
        listed.append(
            Listed(record.slug, record.state, record.tier, record.driver, document, dict(record.labels))
        )
    return listed


def adapters(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth adapters``: every candidate, its version, and whether it is used (or why not)."""
    import asyncio

    from .._adapters._discovery import check_lock_versions, chosen, discover_all, probe_versions
    from .._settings import load_settings

    if getattr(args, "adapters_command", None) == "trust":
        return _adapters_trust(args)
    if getattr(args, "adapters_command", None) == "lock":
        return _adapters_lock(args)
    project = _project(args)
    found = discover_all(project_dir=project, home=getattr(args, "home", None))
    bound = load_settings(project).timeouts.version_probe
    versions = asyncio.run(probe_versions((c.path for c in found if c.acceptable), bound))
    found = check_lock_versions(found, versions, project)
    rows = []
    for candidate, used in zip(found, chosen(found), strict=True):
        status = (
            "refused: " + candidate.refusal + _refusal_advice(candidate)
            if candidate.refusal
            else ("ok" if used else "shadowed")
        )
        rows.append(
            {
                "driver": candidate.driver,
                "source": candidate.source,
                "path": str(candidate.path),
                "version": versions.get(candidate.path),
                "status": status,
                "trust": candidate.trust,
                "lock": candidate.lock,
                "sha256": candidate.sha256,
            }
        )
    return rows, adapters_lines(rows)


def _refusal_advice(candidate: Candidate) -> str:
    """The command that lifts a trust or lock refusal (the library's reasons name none)."""
    if not candidate.blocking:
        return ""
    if candidate.trust in ("untrusted", "changed"):
        return f"; run 'hearth adapters trust {candidate.driver}' after reading it"
    return "; 'hearth adapters lock' records the adapters in use now, if the project wants them"


def _adapters_trust(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth adapters trust [DRIVER ...]``: record the project's adapters as they are now."""
    from .._adapters._discovery import trust_adapters

    done = trust_adapters(_project(args), getattr(args, "home", None), args.drivers or None)
    document = [{"driver": t.driver, "path": str(t.path), "sha256": t.sha256, "was": t.was} for t in done]
    lines = [
        f"{'already trusted' if t.was == 'trusted' else 'trusted'} {t.driver}: {safe(t.path)} "
        f"(sha256 {t.sha256[:12]}…)"
        for t in done
    ]
    return document, "\n".join(lines) or "no project adapters to trust"


def _adapters_lock(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth adapters lock [DRIVER ...]``: write ``.hearth/adapters.lock``."""
    import asyncio

    from .._adapters._discovery import lock_file
    from .._adapters._locking import lock_adapters
    from .._settings import load_settings

    project = _project(args)
    home = getattr(args, "home", None)
    settings = load_settings(project)
    entries = asyncio.run(
        lock_adapters(
            project,
            home,
            args.drivers or None,
            configs=settings.adapters,
            data_root=state_dir(home) / "data",
            version_probe=settings.timeouts.version_probe,
            handshake_timeout=settings.timeouts.handshake,
        )
    )
    path = lock_file(project)
    document = {"path": str(path), "adapters": {d: e.to_json() for d, e in entries.items()}}
    lines = [f"wrote {safe(path)}:"] + [
        f"  {d} {safe(e.version or '-')} (protocol {e.protocol_version}, {e.source}, sha256 {e.sha256[:12]}…)"
        for d, e in entries.items()
    ]
    return document, "\n".join(lines)


def _project(args: argparse.Namespace) -> Path:
    return find_project_dir(getattr(args, "project", None))


async def command(host: Host | RemoteHost, args: argparse.Namespace) -> tuple[Any, str, int]:
    """A command on a host or a daemon: its JSON document, its text and its exit status."""
    from pydantic import TypeAdapter

    timeout = getattr(args, "timeout", None)
    progress = progress_printer(sys.stderr.isatty() and not getattr(args, "json", False))
    verb = args.command
    if verb == "provision":
        ref = await host.provision(
            args.slug,
            tier=args.tier,
            driver=args.driver,
            on_progress=progress,
            timeout=timeout,
            reuse=args.reuse,
            labels=_wanted(args),
            on_behalf_of=args.on_behalf_of,
        )
        return ref.model_dump(mode="json"), ref_lines(ref), 0
    if verb == "status":
        report = await host.status(args.slug, timeout=timeout)
        lines = status_lines(args.slug, report.state, report.endpoint, report.message, report.details)
        return report.model_dump(mode="json"), lines, 0
    if verb == "upgrade":
        if not args.yes:
            await _confirm_upgrade(host, args.slug, args.tier, timeout)
        ref = await host.upgrade(
            args.slug, tier=args.tier, on_progress=progress, timeout=timeout, on_behalf_of=args.on_behalf_of
        )
        return ref.model_dump(mode="json"), ref_lines(ref), 0
    if verb == "plan":
        planned = await host.plan(args.slug, tier=args.tier, driver=args.driver, timeout=timeout)
        return planned.model_dump(mode="json"), plan_lines(args.slug, args.tier, planned), 0
    if verb == "teardown":
        await host.teardown(args.slug, on_progress=progress, timeout=timeout, on_behalf_of=args.on_behalf_of)
        report = await host.status(args.slug)
        return report.model_dump(mode="json"), f"{args.slug}: {report.state}", 0
    if verb in ("stop", "start"):
        run = host.stop if verb == "stop" else host.start
        ref = await run(args.slug, on_progress=progress, timeout=timeout, on_behalf_of=args.on_behalf_of)
        return ref.model_dump(mode="json"), ref_lines(ref), 0
    if verb == "adopt":
        record = await host.adopt(
            args.slug, driver=args.driver, tier=args.tier, timeout=timeout, on_behalf_of=args.on_behalf_of
        )
        assert record.ref is not None
        return record.model_dump(mode="json"), "adopted " + ref_lines(record.ref), 0
    if verb == "forget":
        record = await host.forget(args.slug, on_behalf_of=args.on_behalf_of)
        return (
            record.model_dump(mode="json"),
            f"{args.slug}: forgotten (it was {record.state} on {record.driver}); "
            "its backend was left as it is",
            0,
        )
    if verb == "label":
        record = await host.label(args.slug, dict(args.changes))
        return record.model_dump(mode="json"), labels_line(args.slug, record.labels), 0
    if verb == "touch":
        record = await host.touch(args.slug)
        return record.model_dump(mode="json"), touch_line(record), 0
    if verb == "logs":
        operations = await host.logs(args.slug)
        from .._models import Operation  # --json documents come from the models themselves

        document = TypeAdapter(list[Operation]).dump_python(operations, mode="json")
        return document, logs_lines(args.slug, operations), 0
    report_ = await host.reconcile(args.slug, dry_run=args.dry_run, timeout=timeout)
    from .._models import ReconcileReport

    document = TypeAdapter(ReconcileReport).dump_python(report_, mode="json")
    return document, reconcile_lines(report_), EXIT_DRIFT if report_.dry_run and report_.drift else 0


async def _confirm_upgrade(host: Host | RemoteHost, slug: str, tier: str, timeout: float | None) -> None:
    """Ask before an upgrade whose plan is destructive, on a terminal. A script (no terminal)
    is not asked and runs as it always did: a destructive upgrade already needs the tier's own
    consent (e.g. tfgrid's ``allow_destructive_upgrade``). An adapter that does not plan, or a
    plan that fails, asks nothing: the upgrade then answers for itself."""
    if not sys.stdin.isatty():
        return
    try:
        planned = await host.plan(slug, tier=tier, timeout=timeout)
    except HearthError as exc:
        if exc.kind == "store_error":
            raise
        return
    if not planned.destructive:
        return
    destroys = "; ".join(
        f"{action.action} {action.resource}: {action.reason}"
        for action in planned.actions
        if action.destructive
    )
    question = (
        f"upgrade workspace {safe(slug)} to tier {safe(tier)}? It is destructive: {safe(destroys)} [y/N] "
    )
    if not await _ask(question):
        raise NotConfirmed


async def _ask(question: str) -> bool:
    """Ask on the terminal without blocking the event loop, so a signal still cancels the wait."""
    import asyncio

    print(question, end="", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(sys.stdin.readline())

    fd = sys.stdin.fileno()
    loop.add_reader(fd, readable)
    try:
        line = await answer
    finally:
        loop.remove_reader(fd)
    return line.strip().lower() in ("y", "yes")


def forget_confirmed(args: argparse.Namespace) -> bool:
    """``forget`` asks on a terminal; elsewhere it needs ``--yes`` (a script says what it means)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidInput("forget asks for confirmation: on no terminal, pass --yes")
    found = [r for r in current(state_dir(getattr(args, "home", None)) / STORE_FILE) if r.slug == args.slug]
    what = f"{found[0].state} on {found[0].driver}" if found else "no record found"
    print(
        f"forget workspace {safe(args.slug)} ({what})? hearth drops its record and leaves its backend "
        "as it is [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def serve(args: argparse.Namespace) -> int:
    """``hearth serve``: runs until SIGTERM or SIGINT (operations in flight drain), then 0."""
    try:
        from .._server._daemon import configure_logging
        from .._server._daemon import serve as run
    except ImportError as exc:
        raise InvalidInput(
            f"hearth serve needs the serve extra (pip install 'hearth[serve]'): {exc}"
        ) from None
    configure_logging(args.log_json)
    run(
        socket_path=args.socket,
        listen=args.listen,
        token_file=args.token_file,
        tokens_file=args.tokens,
        socket_scopes=args.socket_scopes,
        store_url=getattr(args, "store", None),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        socket_group=args.socket_group,
        home=getattr(args, "home", None),
        project=getattr(args, "project", None),
    )
    return 0
