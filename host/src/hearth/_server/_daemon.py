"""``hearth serve``: the daemon that runs the API v1 (``_app.create_app``) on uvicorn.

``serve(...)`` runs it on the home's Unix socket (mode 0600; one daemon per home, held by a lock
file for the daemon's life) and, with ``listen=``, on a TCP port that asks for a bearer token
(read from a token file of mode 0600), with TLS when given a certificate and key. It logs
(``configure_logging``), stops on SIGTERM or SIGINT (a second one cancels the operations in
flight at once, a third stops waiting for their rollbacks), re-reads hearth.toml on SIGHUP, and
reconciles periodically.

A stop is a drain, not an outage: the listeners stay open while the work in flight ends
(``_drain_then_stop``): reads, cancels, waits, event streams and ``/v1/health`` (``stopping``)
are answered, starts get 503 ``unavailable`` with ``Retry-After``. Only then does uvicorn close
the listeners and the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import json
import logging
import os
import random
import signal
import socket
import ssl
import stat
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, cast

import uvicorn

from .._actors import RECONCILE_ACTOR, acting
from .._dirs import SERVE_LOCK_FILE, SOCKET_FILE, find_project_dir, state_dir
from .._errors import HearthError, InvalidInput
from .._lifecycle._host import Host
from .._states import resolution_note
from ._app import AppState, create_app
from ._auth import DEFAULT_TOKEN, SCOPES, SECRET_MIN, Credentials, Token, access_json, parse_scopes
from ._limits import QuietAccept, bounded_protocol, connection_caps, raise_open_files

log = logging.getLogger("hearth.serve")

LOCK_FILE = SERVE_LOCK_FILE
#: How long uvicorn lets requests in flight finish once the drain ended (streams end within
#: ``_app.LAST_CALL_MAX``, waits at once).
GRACEFUL = 5
#: Seconds between the daemon's prunings of old progress events (``[events] keep_days``).
PRUNE_EVERY = 3600.0
#: The longest path a Unix socket may have (sun_path is 108 bytes with its NUL).
SUN_PATH_MAX = 107


# --- the daemon ----------------------------------------------------------------------------------
class ServeError(HearthError):
    """The daemon cannot start (another one runs, a socket or token problem)."""

    kind = "serve_error"


def default_socket(home: str | Path | None = None) -> Path:
    return state_dir(home) / SOCKET_FILE


@contextlib.contextmanager
def _held(path: Path, what: str, project: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (the daemon's life), with our pid and the
    project we serve in it (the CLI reads them to choose between the daemon and itself)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ServeError(f"cannot lock {path} for {what}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = (os.pread(fd, 32, 0).decode(errors="replace").splitlines() or ["?"])[0].strip() or "?"
            raise ServeError(f"another hearth daemon (pid {other}) already serves {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{project}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _unix_socket(path: Path, group: str | None = None) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 (0660 and owned by ``group`` when given);
    a stale file there (we hold the lock, so no live daemon owns it) is replaced."""
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ServeError(f"--socket-group {group[:80]!r}: no such group") from None
    if len(str(path)) > SUN_PATH_MAX:
        raise ServeError(f"the socket path {path} is longer than {SUN_PATH_MAX} bytes; use --socket")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServeError(f"{path} exists and is not a socket; remove it or choose another --socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o600 if gid is None else 0o660)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ServeError(f"cannot give the socket {path} to group {group}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _private_file(file: Path, what: str) -> str:
    """The text of ``file``: a regular file of ours, mode 0600 (no group or other bits)."""
    try:
        info = file.stat()
    except OSError as exc:
        raise ServeError(f"the {what} {file} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ServeError(f"the {what} {file} is not a regular file")
    if info.st_mode & 0o077:
        raise ServeError(f"the {what} {file} is mode {stat.S_IMODE(info.st_mode):o}; make it 0600")
    if info.st_uid != os.getuid():
        raise ServeError(f"the {what} {file} is not yours (the daemon's user must own it)")
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"the {what} {file} cannot be read: {exc}") from None


def _one_word(secret: str) -> bool:
    """Printable ASCII without a space: what every client can send in ``Authorization`` (the
    CLI's ``HEARTH_TOKEN`` goes through httpx, which sends only ASCII)."""
    return secret.isascii() and secret.isprintable() and " " not in secret


def read_token(path: str | Path) -> str:
    """The bearer token in ``path``: a regular file of ours, mode 0600 (no group or other bits)."""
    file = Path(path)
    token = _private_file(file, "token file").strip()
    if len(token) < 16 or not _one_word(token):
        raise ServeError(f"the token in {file} must be one word of at least 16 printable ASCII characters")
    return token


#: A token's name: what operations it starts record as their actor (``token:<name>``).
TOKEN_NAME_MAX = 64


def read_tokens(path: str | Path) -> dict[str, Token]:
    """The named tokens of the TOML file ``path`` (a regular file of ours, mode 0600): one table
    per token, ``[tokens.<name>]``, with ``secret`` (one word of at least 16 characters, no two
    tokens alike) and ``scopes`` (some of ``read``, ``operate``, ``admin``). ``ServeError``
    saying what is wrong, never what a secret is."""
    file = Path(path)
    text = _private_file(file, "tokens file")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServeError(f"the tokens file {file} is not valid TOML: {exc}") from None
    unknown = set(document) - {"tokens"}
    if unknown:
        raise ServeError(
            f"the tokens file {file}: unknown key {sorted(unknown)[0]!r:.40} (only [tokens.NAME])"
        )
    tables = document.get("tokens")
    if not isinstance(tables, dict) or not tables:
        raise ServeError(f"the tokens file {file} names no token: add [tokens.NAME] with secret and scopes")
    tokens: dict[str, Token] = {}
    secrets: set[str] = set()
    for name, table in tables.items():
        where = f"the tokens file {file}: [tokens.{name[:TOKEN_NAME_MAX]}]"
        if not (
            0 < len(name) <= TOKEN_NAME_MAX
            and name.isascii()
            and name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise ServeError(
                f"{where}: a token's name is 1 to {TOKEN_NAME_MAX} letters, digits, '-', '_' or '.'"
            )
        if not isinstance(table, dict):
            raise ServeError(f"{where} must be a table with secret and scopes")
        extra = set(table) - {"secret", "scopes"}
        if extra:
            raise ServeError(f"{where}: unknown key {sorted(extra)[0]!r:.40} (secret and scopes only)")
        secret = table.get("secret")
        if not isinstance(secret, str) or len(secret) < SECRET_MIN or not _one_word(secret):
            raise ServeError(
                f"{where}: secret must be one word of at least {SECRET_MIN} printable ASCII characters"
            )
        if secret in secrets:
            raise ServeError(f"{where}: its secret is another token's; each token needs its own")
        secrets.add(secret)
        scopes = table.get("scopes")
        if not isinstance(scopes, list) or not scopes:
            raise ServeError(f"{where}: scopes must be a list of some of {', '.join(SCOPES)}")
        try:
            given = parse_scopes(scopes, where)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        tokens[name] = Token.of(name, secret, given)
    return tokens


def parse_socket_scopes(given: str | Iterable[str] | None) -> frozenset[str]:
    """``--socket-scopes read,operate`` as a set of scopes (every scope when None)."""
    if given is None:
        return frozenset(SCOPES)
    items = [item.strip() for item in given.split(",")] if isinstance(given, str) else list(given)
    try:
        scopes = parse_scopes([item for item in items if item], "--socket-scopes")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not scopes:
        raise InvalidInput(f"--socket-scopes: name at least one of {', '.join(SCOPES)}")
    return scopes


def _tcp_socket(listen: str) -> socket.socket:
    """The TCP listener of ``--listen HOST:PORT``. Made with ``IPPROTO_TCP`` (not protocol 0) so
    that asyncio sets ``TCP_NODELAY`` on each connection it accepts: uvicorn writes a response's
    head and body apart, and without it the body waits for the client's delayed ACK (~40 ms)."""
    address, _, port = listen.rpartition(":")
    address = address.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"--listen {listen[:80]!r}: expected HOST:PORT")
    try:
        family = socket.getaddrinfo(address, int(port), type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, int(port)))
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen[:80]}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(access_json(record))  # an access line's fields (method, path, status, ...)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines() if log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _Server(uvicorn.Server):
    """uvicorn, which keeps serving when the daemon is told to stop: the first signal starts
    the drain (``AppState.drain``; ``_drain_then_stop`` tells uvicorn and the daemon's other
    listener to stop once it ended), a later one hurries it (``_signals``)."""

    def __init__(self, config: uvicorn.Config, state: AppState, ready: str = "") -> None:
        super().__init__(config)
        self.hearth = state
        self.loop = asyncio.get_running_loop()
        self.siblings: list[uvicorn.Server] = []
        #: Logged once listening, with uvicorn's signal handlers in place: from then on a
        #: SIGTERM stops the daemon (one that came earlier is acted on here).
        self.ready = ready
        #: Whether a signal started the drain.
        self.draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready:
            log.info("%s", self.ready)
        if _signals.received:  # one that came before uvicorn took the signals over
            self._drain(_signals.received[0])
            if len(_signals.received) > 1:
                _signals.hurry(_signals.received[-1])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        _signals.received.append(sig)
        if self.should_exit:  # the drain ended and uvicorn is closing: stop waiting for clients
            self.force_exit = True
            for sibling in self.siblings:
                sibling.force_exit = True
        self._drain(sig)
        if len(_signals.received) > 1:
            _signals.hurry(sig)

    def _drain(self, sig: int) -> None:
        """Start the drain (once); uvicorn goes on serving. The daemon acts on every signal
        itself (``_signals``): uvicorn neither sees nor re-raises any."""
        if not self.draining:
            self.draining = True
            log.info(
                "%s: stopping; operations in flight get the drain grace, starts are refused meanwhile",
                signal.Signals(sig).name,
            )
            self.loop.call_soon_threadsafe(self.hearth.drain, self.hearth.host.timeouts.drain_grace)
        captured = getattr(self, "_captured_signals", None)  # uvicorn >= 0.29 keeps them there
        if captured is not None:
            captured.clear()


class _Sibling(uvicorn.Server):
    """The TCP listener's server (its own config: TLS applies to it alone); the Unix socket's
    server takes the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Signals:
    """The SIGTERMs and SIGINTs the daemon received, as the CLI's: the first stops it (the
    operations in flight get ``drain_grace`` while the daemon still answers, then uvicorn
    stops); the second cancels them at once (recorded ``interrupted``, their rollback still
    awaited within ``cancel_grace``); any later one stops waiting for the rollbacks (their
    records say it is not confirmed).

    It is the handler while uvicorn does not hold the signals: before it started, a signal is
    only kept (the server acts on it once started); after it stopped (the host closes), a second
    one hurries the close. While uvicorn holds them, ``_Server.handle_exit`` counts them here."""

    def __init__(self) -> None:
        self.received: list[int] = []
        #: The host and its loop while the daemon serves or drains.
        self.host: Host | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            self.hurry(signum)

    def reset(self) -> None:
        self.received.clear()
        self.host = self.loop = None

    def hurry(self, signum: int) -> None:
        """A second (or later) signal: cancel the work now, in the loop's own time."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._cancel, signum, len(self.received) > 2)

    def _cancel(self, signum: int, again: bool) -> None:
        host = self.host
        if host is None:
            return
        name = signal.Signals(signum).name
        if again:
            log.warning("%s again: no longer waiting for the rollbacks of cancelled operations", name)
        else:
            grace = host.timeouts.cancel_grace
            log.warning(
                "%s again: cancelling the operations in flight now (recorded interrupted; "
                "their rollback awaited within the cancel grace, %s s)",
                name,
                grace,
            )
        reason = f"the daemon was stopped ({name} again)"
        host.cancel_running(reason, outcome="interrupted", again=again)


#: Every SIGTERM and SIGINT of the daemon's life (the handler outside uvicorn).
_signals = _Signals()


async def _reconcile_periodically(host: Host, stopping: asyncio.Event, reload: asyncio.Event) -> None:
    """The daemon's self-healing: ``reconcile`` once at start (what a dead daemon left is
    settled before anyone asks, and its watchers hear how it ended), then every ``[serve]
    reconcile_interval`` seconds, each wait varied by ``reconcile_jitter`` so that replicas do
    not run in step; a SIGHUP (``reload``) makes a new interval count at once. An interval of 0
    turns off only the periodic rounds: the one at start always runs. It changes what reconcile
    changes (records a dead host left; ghosts marked failed) and logs it; an orphan is logged
    once."""
    orphans: set[tuple[str, str]] = set()
    delay = 0.0  # the first one at once
    started = False  # the round at start has run
    while True:
        reload.clear()
        if await _woken(stopping, reload, delay):
            if stopping.is_set():
                return
            delay = _next_delay(host, _interval(host))  # reloaded: the new interval counts
            continue
        interval = _interval(host)
        delay = _next_delay(host, interval)
        if not interval and started:
            continue  # off (0), or no settings to go by: look again later
        started = True
        try:
            with acting(RECONCILE_ACTOR):  # what it records is the daemon's own doing
                report = await host.reconcile()
        except HearthError as exc:
            log.warning("reconcile failed: %s: %s", exc.kind, exc.message)
            continue
        except Exception:
            log.exception("reconcile failed unexpectedly")
            continue
        found = [
            f"{slug}: {resolution_note(old, new, unconfirmed=slug in report.unconfirmed)}"
            for slug, old, new in report.resolved
        ] + [f"ghost {slug}" for slug in report.ghosts]
        for ref in report.orphans:
            if (ref.workspace_slug, ref.driver) not in orphans:
                orphans.add((ref.workspace_slug, ref.driver))
                found.append(f"orphan {ref.workspace_slug} on {ref.driver} (no record; left in place)")
        found += [f"unreachable {driver}: {why}" for driver, why in report.unreachable.items()]
        if found:
            log.info("reconcile: %s", "; ".join(found))


def _interval(host: Host) -> float:
    try:
        return host.reload_settings().serve.reconcile_interval
    except HearthError as exc:
        log.warning("reconcile: the settings cannot be read (%s); trying again in 60 s", exc.message)
        return 0.0


def _next_delay(host: Host, interval: float) -> float:
    """The wait before the next reconcile: the interval, varied by the settings' jitter (60 s
    when off, to look at the settings again)."""
    jitter = host.settings.serve.reconcile_jitter
    return (interval or 60.0) * (1 + random.uniform(-jitter, jitter))


async def _prune_periodically(host: Host, stopping: asyncio.Event) -> None:
    """The event log's upkeep: at start, then every ``PRUNE_EVERY`` seconds, the progress events
    of operations finished more than ``[events] keep_days`` ago are deleted (what happened stays;
    how far along it was goes). A round that fails is logged; the next one tries again."""
    while not stopping.is_set():
        try:
            pruned = await host.prune_events()
        except HearthError as exc:
            log.error("pruning old progress events failed: %s", exc.message)
        else:
            if pruned:
                days = host.settings.events.keep_days
                log.info(
                    "pruned %d progress event(s) of operations finished over %g day(s) ago", pruned, days
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), PRUNE_EVERY)


async def _autostop_periodically(host: Host, stopping: asyncio.Event) -> None:
    """Autostop (README "Autostop"): every ``[serve] autostop_interval`` seconds (jittered by
    ``reconcile_jitter``; 0 turns it off and the settings are looked at again each minute),
    ``Host.autostop_sweep`` stops the ready workspaces idle past their tier's ``autostop``,
    each as an operation of its own (actor ``hearth:autostop``). Ends when the daemon drains."""
    while not stopping.is_set():
        interval = host.settings.serve.autostop_interval
        if interval:
            try:
                for op in await host.autostop_sweep():
                    log.info(
                        "autostop: operation #%s stops %r (idle past its tier's autostop)", op.id, op.slug
                    )
            except HearthError as exc:
                log.warning("autostop sweep failed: %s: %s", exc.kind, exc.message)
            except Exception:
                log.exception("autostop sweep failed unexpectedly")
            interval = host.settings.serve.autostop_interval  # the sweep re-read the settings
        jitter = host.settings.serve.reconcile_jitter
        delay = (interval or 60.0) * (1 + random.uniform(-jitter, jitter))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)


async def _woken(stopping: asyncio.Event, reload: asyncio.Event, timeout: float) -> bool:
    """Whether the daemon is stopping or was told to reload within ``timeout`` seconds."""
    waiting = {asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(reload.wait())}
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for task in waiting:
            task.cancel()
    return bool(done)


#: Where the daemon's tokens come from, and how that file is read (re-read on SIGHUP).
TokenSource = tuple[Path, Callable[[Path], dict[str, Token]]]


def _default_token(path: Path) -> dict[str, Token]:
    """``--token-file``: one token, ``default``, with every scope."""
    return {DEFAULT_TOKEN: Token.of(DEFAULT_TOKEN, read_token(path), SCOPES)}


def _on_sighup(
    host: Host, reload: asyncio.Event, state: AppState | None = None, tokens: TokenSource | None = None
) -> None:
    try:
        host.reload_settings()
    except HearthError as exc:
        log.error("SIGHUP: the settings are invalid and every call fails until fixed: %s", exc.message)
    else:
        log.info("SIGHUP: settings re-read from %s", host.settings.source or "the built-in defaults")
    if state is not None and tokens is not None:
        _reload_tokens(state, tokens)
    reload.set()


def _reload_tokens(state: AppState, source: TokenSource) -> None:
    """Re-read the tokens file (``--tokens``, or ``--token-file``'s one token): a token that
    went (or changed) stops working at once and the streams and waits it opened end. An
    invalid file leaves no token (every TCP request is refused until it is fixed), never the
    old ones."""
    path, read = source
    try:
        tokens = read(path)
    except ServeError as exc:
        gone = state.credentials.replace({})
        ended = state.revoke(gone)
        log.error(
            "SIGHUP: %s; every TCP request is refused until it is fixed (%d stream(s) ended)",
            exc.message,
            ended,
        )
        return
    gone = state.credentials.replace(tokens)
    ended = state.revoke(gone)
    log.info(
        "SIGHUP: tokens re-read from %s: %s%s",
        path,
        ", ".join(sorted(tokens)),
        f"; revoked or changed: {', '.join(sorted(gone))} ({ended} stream(s) ended)" if gone else "",
    )


async def _drain_then_stop(host: Host, state: AppState, servers: list[uvicorn.Server]) -> None:
    """Once the first signal set ``state.draining``: the host's work in flight ends (within the
    drain grace; a later signal hurries it) while uvicorn still serves; then the streams and
    waits end (``state.stopping``) and uvicorn closes the listeners. A restart is no outage:
    until then reads, cancels and the streams that follow the work are answered."""
    await state.draining.wait()
    log.info(
        "draining: reads, cancels and streams are answered, starts get 503; "
        "closing the host (drain grace %s s)",
        host.timeouts.drain_grace,
    )
    try:
        await host.drain()
    except Exception:  # a bug: the daemon must stop all the same (Host.close drains again)
        log.exception("the drain failed")
    finally:
        state.stopping.set()
        for each in servers:
            each.should_exit = True


async def _serve_until_stopped(
    *,
    project: str | None,
    home: str | None,
    store_url: str | None,
    unix: socket.socket,
    tcp: socket.socket | None,
    tls: tuple[str, str] | None,
    credentials: Credentials,
    tokens_file: TokenSource | None,
    where: str,
    open_files: int,
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(QuietAccept())
    async with Host(project_dir=project, home=home, idle_timeout=None, store_url=store_url) as host:
        _signals.host, _signals.loop = host, loop
        app = create_app(host, credentials=credentials)
        state = cast(AppState, app.state.hearth)
        options: dict[str, Any] = {
            "log_config": None,
            "timeout_graceful_shutdown": GRACEFUL,
            "lifespan": "off",
            "access_log": False,  # the app logs its own line per request (hearth.access)
        }
        limits = host.settings.serve
        cap = connection_caps(limits.max_connections, 1 if tcp is None else 2, open_files)

        def bounded(listener: str) -> type[asyncio.Protocol]:
            return bounded_protocol(listener, limits.request_timeout, cap)

        ready = f"hearth daemon {host.owner} serving {where} (home {host.state_dir})"
        server = _Server(uvicorn.Config(app, http=bounded("Unix socket"), **options), state, ready)
        servers: list[uvicorn.Server] = [server]
        serving = [server.serve(sockets=[unix])]
        if tcp is not None:
            certificate: dict[str, Any] = (
                {} if tls is None else {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}
            )
            sibling = _Sibling(uvicorn.Config(app, http=bounded("TCP port"), **options, **certificate))
            server.siblings.append(sibling)
            servers.append(sibling)
            serving.append(sibling.serve(sockets=[tcp]))
        reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, host, reload, state, tokens_file)
        healing = loop.create_task(
            _reconcile_periodically(host, state.draining, reload), name="hearth-reconcile"
        )
        pruning = loop.create_task(_prune_periodically(host, state.draining), name="hearth-prune")
        autostopping = loop.create_task(_autostop_periodically(host, state.draining), name="hearth-autostop")
        drainer = loop.create_task(_drain_then_stop(host, state, servers), name="hearth-drain")
        failed: list[BaseException] = []
        try:
            for done in asyncio.as_completed(serving):
                try:
                    await done
                except Exception as exc:  # one listener down: the daemon stops, and says why
                    log.error("a listener failed: %r; stopping", exc)
                    failed.append(exc)
                    state.stopping.set()
                    for each in servers:
                        each.should_exit = True
        finally:
            state.stopping.set()
            for each in servers:
                each.should_exit = True
            for task in (healing, pruning, autostopping, drainer):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            loop.remove_signal_handler(signal.SIGHUP)
            log.info("stopped serving; closing the host")
    log.info("hearth daemon stopped")
    if failed:
        raise ServeError(f"a listener failed: {failed[0]!r}")


def _readable_file(path: str | Path, what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ServeError(f"the {what} {file} is not a readable file")
    return str(file)


def _credentials(
    listen: str | None,
    token_file: str | Path | None,
    tokens_file: str | Path | None,
    socket_scopes: str | Iterable[str] | None,
) -> Credentials:
    """Who may ask what: the tokens of ``--token-file`` (one, ``default``, every scope) or of
    ``--tokens``, and the Unix socket's scopes."""
    if token_file is not None and tokens_file is not None:
        raise InvalidInput("--token-file and --tokens do not go together: name the token in the tokens file")
    if listen is not None and token_file is None and tokens_file is None:
        raise ServeError(
            "--listen needs --token-file (a file of mode 0600 holding the bearer token) or --tokens "
            "(a TOML file of mode 0600 naming tokens and their scopes)"
        )
    if token_file is not None and listen is None:
        raise InvalidInput("--token-file is only for --listen")
    if tokens_file is not None and listen is None:
        raise InvalidInput("--tokens is only for --listen")
    scopes = parse_socket_scopes(socket_scopes)
    tokens: dict[str, Token] = {}
    if token_file is not None:
        tokens = _default_token(Path(token_file))
    if tokens_file is not None:
        tokens = read_tokens(tokens_file)
    return Credentials(tokens, scopes, required=listen is not None)


def serve(
    *,
    socket_path: str | Path | None = None,
    listen: str | None = None,
    token_file: str | Path | None = None,
    home: str | Path | None = None,
    project: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    socket_group: str | None = None,
    store_url: str | None = None,
    tokens_file: str | Path | None = None,
    socket_scopes: str | Iterable[str] | None = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT; ``ServeError`` when it cannot start.
    ``tokens_file``: named tokens with scopes (``read_tokens``), re-read on SIGHUP;
    ``socket_scopes``: what the Unix socket may do (every scope by default)."""
    credentials = _credentials(listen, token_file, tokens_file, socket_scopes)
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if tls_cert is not None and listen is None:
        raise InvalidInput("--tls-cert and --tls-key are for --listen (the Unix socket needs no TLS)")
    tls = None
    if tls_cert is not None and tls_key is not None:
        tls = (_readable_file(tls_cert, "certificate"), _readable_file(tls_key, "key"))
        if Path(tls[1]).stat().st_mode & 0o077:
            raise ServeError(f"the TLS key {tls[1]} is readable by others; make it 0600")
        try:  # what uvicorn will load: a bad pair is refused now, not when a client connects
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls[0], tls[1])
        except (ssl.SSLError, OSError) as exc:
            raise ServeError(f"--tls-cert {tls[0]} and --tls-key {tls[1]} cannot be used: {exc}") from None
    folder = state_dir(home)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"the hearth home {folder} cannot be created: {exc.strerror or exc}") from None
    project_dir = find_project_dir(project)
    path = Path(socket_path) if socket_path is not None else folder / SOCKET_FILE
    open_files = raise_open_files()
    _signals.reset()
    previous = {signum: signal.signal(signum, _signals) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_held(folder / LOCK_FILE, f"the home {folder}", project_dir))
            # the socket's own lock, whichever home it belongs to: a daemon never takes over a
            # socket another one serves, even from another home
            lock = path.with_name(path.name + ".lock")
            stack.enter_context(_held(lock, f"the socket {path}", project_dir))
            unix = _unix_socket(path, socket_group)
            stack.callback(lambda: path.unlink(missing_ok=True))
            stack.callback(unix.close)
            where = f"unix:{path}"
            tcp = None
            if listen is not None:
                tcp = _tcp_socket(listen)
                stack.callback(tcp.close)
                where += f" and {'https' if tls else 'http'}://{listen} (bearer token)"
            asyncio.run(
                _serve_until_stopped(
                    project=str(project_dir),
                    home=None if home is None else str(home),
                    store_url=store_url,
                    unix=unix,
                    tcp=tcp,
                    tls=tls,
                    credentials=credentials,
                    tokens_file=(
                        (Path(tokens_file), read_tokens)
                        if tokens_file is not None
                        else (Path(token_file), _default_token)
                        if token_file is not None
                        else None
                    ),
                    where=where,
                    open_files=open_files,
                )
            )
    finally:
        _signals.reset()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = [
    "ServeError",
    "configure_logging",
    "default_socket",
    "parse_socket_scopes",
    "read_token",
    "read_tokens",
    "serve",
]
