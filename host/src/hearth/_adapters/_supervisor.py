"""One live adapter process per driver, shared by every caller in this host.

Started on first use, with the driver's config from the settings and its private data
folder (``<state>/data/<driver>``, mode 0700); started again on the next call after it
crashed or broke the protocol; closed after ``idle_timeout`` seconds without calls (never,
when it is None: a long-lived host keeps its adapters warm), and when the host closes.
``update_settings`` hands over reloaded settings: an adapter whose config changed is closed
once idle, so the next call starts it with the new config. Nothing outlives the host: every
close is the bounded shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth_adaptersdk import Connection

from .._errors import CallTimeout, HearthError, StoreError
from .._observe import Observer
from .._settings import Settings
from ._client import CANCEL_GRACE, AdapterClient
from ._discovery import discover

ConnectionFactory = Callable[[], Connection]


@dataclass
class _Slot:
    lock: asyncio.Lock
    client: AdapterClient | None = None
    in_flight: int = 0
    idle_timer: asyncio.TimerHandle | None = None
    #: The config ``client`` was started with: a client whose config differs from the
    #: settings' is closed as soon as no call holds it.
    config: dict[str, Any] = field(default_factory=dict)
    #: Whether ``client`` crashed: the next start is a restart.
    crashed: bool = False


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        *,
        project_dir: Path | None,
        home: Path | None,
        handshake_timeout: float,
        idle_timeout: float | None,
        in_process: Mapping[str, ConnectionFactory] | None = None,
        cancel_grace: float = CANCEL_GRACE,
        observer: Observer | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer or Observer()
        self._state_dir = state_dir
        self._project_dir = project_dir
        self._home = home
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._cancel_grace = cancel_grace
        self._in_process = dict(in_process or {})
        self._slots: dict[str, _Slot] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def data_dir(self, driver: str) -> Path:
        folder = self._state_dir / "data" / driver
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
        except OSError as exc:
            raise StoreError(
                f"the {driver} driver's data folder {folder} cannot be used: {exc.strerror or exc}"
            ) from None
        return folder

    def knows(self, driver: str) -> bool:
        return driver in self._in_process

    def in_process_drivers(self) -> set[str]:
        return set(self._in_process)

    def update_settings(self, settings: Settings) -> None:
        """Use ``settings`` from now on (a reloaded hearth.toml).

        New spawns get the new config; an adapter whose config changed is closed now when no
        call holds it, else when its last call ends, so the next call starts it with the new
        config (calls that start meanwhile share the old one: one process per driver, always).
        Adapters whose config did not change keep running. A bound the new settings change
        (``timeouts.handshake``, ``timeouts.cancel_grace``) replaces the one in use; one that
        did not change keeps what the constructor was given.
        """
        old, self._settings = self._settings, settings
        if settings.timeouts.handshake != old.timeouts.handshake:
            self._handshake_timeout = settings.timeouts.handshake
        if settings.timeouts.cancel_grace != old.timeouts.cancel_grace:
            self._cancel_grace = settings.timeouts.cancel_grace
        if self._closed:
            return
        for driver, slot in self._slots.items():
            if slot.in_flight == 0 and self._stale(driver, slot):
                self._close_idle(driver)

    def _stale(self, driver: str, slot: _Slot) -> bool:
        """Whether ``slot``'s client runs with a config the settings no longer give."""
        return slot.client is not None and slot.config != self._settings.adapter_config(driver)

    @contextlib.asynccontextmanager
    async def use(self, driver: str, timeout: float | None = None) -> AsyncIterator[AdapterClient]:
        """A live client for ``driver``, kept open while the block runs; starting one (spawn and
        handshake) takes at most ``timeout`` seconds when given, else the handshake timeout."""
        slot = self._slots.setdefault(driver, _Slot(asyncio.Lock()))
        slot.in_flight += 1
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None
        try:
            async with slot.lock:
                # a stale client that no other call holds is replaced (calls holding it share it)
                stale = slot.in_flight == 1 and self._stale(driver, slot)
                if slot.client is None or stale or not slot.client.alive:
                    if slot.client is not None:
                        await slot.client.close()  # reap a crashed one, or shut a stale one down
                        slot.client = None
                    slot.config = self._settings.adapter_config(driver)
                    slot.client = await self._start(driver, slot.config, timeout)
                    self._started(driver, slot)
                client = slot.client
            yield client
        finally:
            slot.in_flight -= 1
            if slot.in_flight == 0 and not self._closed:
                if self._stale(driver, slot):
                    self._close_idle(driver)  # its config changed while calls held it
                elif self._idle_timeout is not None:
                    slot.idle_timer = asyncio.get_running_loop().call_later(
                        self._idle_timeout, self._close_idle, driver
                    )

    async def _start(self, driver: str, config: dict[str, Any], timeout: float | None) -> AdapterClient:
        bound = self._handshake_timeout if timeout is None else min(timeout, self._handshake_timeout)
        if bound <= 0:
            raise CallTimeout(
                f"the deadline passed before adapter hearth-adapter-{driver} could be "
                "started; nothing was sent"
            )
        data_dir = self.data_dir(driver)
        try:
            async with asyncio.timeout(bound):  # spawn and handshake together
                if driver in self._in_process:
                    return await AdapterClient.connect(
                        self._in_process[driver](),
                        config=config,
                        timeout=bound,
                        data_dir=data_dir,
                        driver=driver,
                        cancel_grace=self._cancel_grace,
                    )
                found = discover(driver, project_dir=self._project_dir, home=self._home)
                return await AdapterClient.launch(
                    found.path,
                    config=config,
                    timeout=bound,
                    data_dir=data_dir,
                    driver=driver,
                    env=named_variables(config),
                    cancel_grace=self._cancel_grace,
                    cwd=self._project_dir,
                )
        except TimeoutError:
            raise CallTimeout(
                f"adapter hearth-adapter-{driver} did not start and complete the "
                f"handshake within {bound:.2g} s"
            ) from None

    def _started(self, driver: str, slot: _Slot) -> None:
        """Tell the observer of a start (a restart, after a crash) and watch for the crash."""
        observer = self._observer
        observer.adapter_started(driver)
        if slot.crashed:
            slot.crashed = False
            observer.adapter_restarted(driver)
        client = slot.client

        def crashed(_: HearthError) -> None:
            if slot.client is client:
                slot.crashed = True
            observer.adapter_crashed(driver)

        assert client is not None
        client.on_failure = crashed

    def _close_idle(self, driver: str) -> None:
        slot = self._slots.get(driver)
        if slot is None or slot.in_flight or slot.client is None:
            return
        client, slot.client, slot.idle_timer = slot.client, None, None
        task = asyncio.ensure_future(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def running(self) -> dict[str, AdapterClient]:
        """The live clients by driver (for tests and diagnostics)."""
        return {
            driver: slot.client
            for driver, slot in self._slots.items()
            if slot.client is not None and slot.client.alive
        }

    async def close(self) -> None:
        """Close every adapter (each bounded); wait for idle closes already under way."""
        self._closed = True
        clients = []
        for slot in self._slots.values():
            if slot.idle_timer is not None:
                slot.idle_timer.cancel()
            if slot.client is not None:
                clients.append(slot.client)
                slot.client = None
        await asyncio.gather(*(client.close() for client in clients), *self._closing, return_exceptions=True)


def named_variables(config: Mapping[str, object]) -> list[str]:
    """The environment variables an adapter's config names, which its process may then see.

    By convention a config key ending in ``_env`` names variables: ``token_env = "GRID_TOKEN"``
    or ``pass_env = ["DOCKER_HOST", "DOCKER_CERT_PATH"]``. Nothing else leaves the host's
    environment beyond the protocol's allow-list.
    """
    names: list[str] = []
    for key, value in config.items():
        if key.endswith("_env"):
            if isinstance(value, str):
                names.append(value)
            elif isinstance(value, list):
                names += [item for item in value if isinstance(item, str)]
    return names
