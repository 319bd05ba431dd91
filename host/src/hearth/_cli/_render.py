"""What the CLI prints: each command's text, escaped so that nothing an adapter said can drive
the terminal, and the one way output is written (a reader that has gone ends the command
quietly). The renderers take plain values or the models' attributes, and import no model, so
that ``hearth ls`` and ``hearth status`` through a daemon use them without loading pydantic."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._exits import EXIT_FAILURE

if TYPE_CHECKING:
    from hearth_adaptersdk import DeploymentRef, PlanResult, Progress

    from .._models import Deployment, Operation, ReconcileReport
    from .._store._records import Listed

#: C0 and C1 control characters and DEL: what could move the cursor, recolour or retitle the
#: terminal, or start a fake line when printed raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: object) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\n``, ...)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def progress_printer(enabled: bool) -> Callable[[Progress], None] | None:
    """The listener that shows an operation's progress on stderr (a terminal only), or None."""

    def show(event: Progress) -> None:
        fraction = f"{event.fraction:4.0%}" if event.fraction is not None else "    "
        print(f"  {fraction}  {safe(event.message)}", file=sys.stderr, flush=True)

    return show if enabled else None


def ref_lines(ref: DeploymentRef) -> str:
    return f"{ref.workspace_slug}: {ref.last_status} (tier {safe(ref.tier)}, driver {ref.driver})" + (
        f"\n  endpoint: {safe(ref.endpoint)}" if ref.endpoint else ""
    )


def status_lines(slug: str, state: object, endpoint: object, message: object, details: object = None) -> str:
    """A status report's lines, from its fields: a ``StatusReport`` or the daemon's JSON of one
    (``details``: its ``autostop_at`` is shown)."""
    lines = [f"{slug}: {state}"]
    if endpoint:
        lines.append(f"  endpoint: {safe(endpoint)}")
    if message:
        lines.append(f"  {safe(message)}")
    autostop = details.get("autostop_at") if isinstance(details, dict) else None
    if autostop:
        lines.append(f"  autostop at {safe(autostop)} unless there is activity before")
    return "\n".join(lines)


def touch_line(record: Deployment) -> str:
    """What ``hearth touch`` answers: the activity recorded, and when autostop would act."""
    seen = record.last_activity.isoformat(timespec="seconds") if record.last_activity else "-"
    line = f"{safe(record.slug)}: activity recorded at {seen}"
    if record.autostop_at is not None:
        line += f"; autostop at {record.autostop_at.isoformat(timespec='seconds')}"
    return line


def ls_lines(listed: list[Listed]) -> str:
    if not listed:
        return "no workspaces"
    rows = [("SLUG", "STATE", "TIER", "DRIVER", "ENDPOINT")]
    rows += [(r.slug, r.state, safe(r.tier), r.driver, safe(r.ref.get("endpoint") or "-")) for r in listed]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)) for row in rows
    )


def labels_line(slug: str, labels: dict[str, str]) -> str:
    """A workspace's labels, as ``hearth label`` answers."""
    shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
    return f"{safe(slug)}: {safe(shown) if shown else 'no labels'}"


def logs_lines(slug: str, operations: list[Operation]) -> str:
    if not operations:
        return f"no operations recorded for {slug}"
    lines = []
    for op in operations:
        who = "" if op.actor is None else f" by {safe(op.actor)}"
        whom = "" if op.on_behalf_of is None else f" on behalf of {safe(op.on_behalf_of)}"
        lines.append(
            f"#{op.id} {op.verb} (generation {op.generation}) {op.outcome} "
            f"{op.started_at or op.created_at:%Y-%m-%d %H:%M:%S}{who}{whom}"
        )
        lines += [f"    {line.at:%H:%M:%S} {line.level:7} {safe(line.message)}" for line in op.log]
        if op.error:
            message = op.error.get("message") or "(no message recorded)"
            lines.append(f"    error: {safe(op.error.get('kind'))}: {safe(message)}")
    return "\n".join(lines)


def plan_lines(slug: str, tier: str, result: PlanResult) -> str:
    if not result.actions:
        return f"{slug} to tier {safe(tier)}: nothing to do"
    lines = [f"{slug} to tier {safe(tier)}:"]
    width = max(len(action.action) for action in result.actions)
    for action in result.actions:
        mark = "  (destructive)" if action.destructive else ""
        lines.append(f"  {action.action:{width}}  {safe(action.resource)}{mark}")
        lines.append(f"  {'':{width}}  {safe(action.reason)}")
    if result.destructive:
        lines.append("destructive: data would be destroyed")
    return "\n".join(lines)


def reconcile_lines(report: ReconcileReport) -> str:
    from .._states import resolution_note  # here: only a reconcile needs the rules

    would = "would resolve" if report.dry_run else "resolved"
    marked = "would be marked failed" if report.dry_run else "marked failed"
    lines = [
        f"{would} {slug}: {resolution_note(old, new, unconfirmed=slug in report.unconfirmed)}"
        for slug, old, new in report.resolved
    ]
    lines += [f"ghost {slug}: the backend has no trace; {marked}" for slug in report.ghosts]
    lines += [
        f"orphan {ref.workspace_slug} on {ref.driver}: no record (left in place)" for ref in report.orphans
    ]
    lines += [f"busy {slug}: another hearth process is working on it" for slug in report.busy]
    lines += [f"unreachable {driver}: {safe(why)}" for driver, why in report.unreachable.items()]
    if report.dry_run:
        lines.append("dry run: nothing was changed" + ("; drift found (exit 3)" if report.drift else ""))
    return "\n".join(lines) or "nothing to reconcile"


_TRUST_COLUMN = {"trusted": "trusted", "untrusted": "not-trusted", "changed": "changed", "not_needed": "-"}
_LOCK_COLUMN = {"locked": "locked", "mismatch": "lock-mismatch", "unlocked": "not-locked", "no_lock": "-"}


def adapters_lines(rows: list[dict[str, Any]]) -> str:
    """``hearth adapters``' table, from the rows its ``--json`` prints."""
    return (
        "\n".join(
            f"{r['driver']:12} {r['source']:8} {safe(r['status']):10} "
            f"{safe(r['version'] or '-'):28} {_TRUST_COLUMN[str(r['trust'])]:11} "
            f"{_LOCK_COLUMN[str(r['lock'])]:13} {safe(r['path'])}"
            for r in rows
        )
        or "no adapters found"
    )


def quiet_logs() -> None:
    """Without --verbose the one-line reason is the whole story: a NullHandler keeps what the
    host, the adapters or httpx log (warnings too) off stderr. Set before the commands that load
    them; ``hearth ls`` on the home's file and ``hearth status`` through a daemon load none of
    them, and so do without logging (some 5 ms of imports)."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def log(level: Literal["debug", "info"], message: str, *args: object, exc_info: Any = None) -> None:
    """Log to the ``hearth`` logger once logging is loaded (by --verbose, or by a command that
    loads the host or httpx). Before, nothing would show the line (the root logger keeps
    warnings and above): it is dropped without loading logging for it."""
    logging = sys.modules.get("logging")
    if logging is not None:
        getattr(logging.getLogger("hearth"), level)(message, *args, exc_info=exc_info)


def print_out(text: str, *, stream: Any = None) -> int:
    """Print; 0, or 1 when the output cannot be written (a full disk: one line on stderr). A
    reader that has gone (``hearth ls | head -1``) ends the command quietly."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        _silence(stream)
    except OSError as exc:
        _silence(stream)
        if stream is not sys.stderr:
            with contextlib.suppress(OSError):
                print(
                    f"hearth: output_error: cannot write the output: {exc.strerror or exc}",
                    file=sys.stderr,
                    flush=True,
                )
        return EXIT_FAILURE
    return 0


def _silence(stream: Any) -> None:
    """Python would fail again when it flushes the stream at exit: point it at /dev/null."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
