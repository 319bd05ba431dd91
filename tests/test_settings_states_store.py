"""Lifecycle building blocks: settings, the transition table, the SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hearth import HearthError, InvalidInput, InvalidTransition
from hearth._errors import StoreError
from hearth._models import Deployment
from hearth._settings import BUILTIN_TIERS, load_settings
from hearth._states import TRANSITIONS, Ask, Recorded, Verb, joins, rules, transition
from hearth._store._base import NewOperation
from hearth._store._sqlite import SQLiteStore
from hearth_adaptersdk import DeploymentRef, utc_now


def _write_settings(project: Path, text: str) -> None:
    (project / ".hearth").mkdir(parents=True, exist_ok=True)
    (project / ".hearth" / "hearth.toml").write_text(text)


def test_builtin_tiers_grow_and_resolve_to_profiles(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert list(settings.tiers) == ["solo", "team", "studio"]
    cpus = [tier.resource_caps.cpu or 0 for tier in BUILTIN_TIERS.values()]
    assert cpus == sorted(cpus)
    profile = settings.profile("team", "fake")
    assert (profile.tier, profile.driver, profile.driver_flags) == ("team", "fake", {})


def test_the_project_file_overrides_tiers_adds_flags_and_configures_adapters(tmp_path: Path) -> None:
    _write_settings(
        tmp_path,
        """
[tiers.solo]
resource_caps = { cpu = 1, memory_mb = 512 }
[tiers.solo.driver_flags.docker]
image = "example/workspace:1"
port = 8080
[tiers.gpu]
resource_caps = { cpu = 8, gpus = 1 }
[adapters.tfgrid]
socket = "/run/hero_compute/rpc.sock"
""",
    )
    settings = load_settings(tmp_path)
    docker = settings.profile("solo", "docker")
    assert docker.resource_caps.memory_mb == 512
    assert docker.driver_flags == {"image": "example/workspace:1", "port": 8080}
    assert settings.profile("solo", "fake").driver_flags == {}
    gpu = settings.profile("gpu", "fake").resource_caps
    assert gpu.model_dump(exclude_none=True) == {"cpu": 8.0, "gpus": 1}
    assert settings.adapter_config("tfgrid") == {"socket": "/run/hero_compute/rpc.sock"}


def test_an_unknown_tier_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="choose one of solo, studio, team"):
        load_settings(tmp_path).profile("huge", "fake")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tiers.solo\n", "not valid TOML"),
        ("[tiers.solo]\nresource_caps = { cpu = -1 }\n", "tiers.solo.resource_caps: cpu"),
        ("[tiers.solo]\ncolour = 1\n", "tiers.solo.colour: unknown key"),
        ("[tiers.solo]\ndriver_flags = { docker = 1 }\n", "tiers.solo.driver_flags must hold"),
        ("[extra]\n", "unknown key 'extra'"),
        ("[adapters]\ntfgrid = 1\n", "adapters.tfgrid must be a table"),
        ('store = "postgresql://me:pw@db/hearth"\n', "store: the URL holds a password"),
        ("store = 5\n", "store: Input should be a valid string"),
    ],
)
def test_a_malformed_settings_file_is_an_error_naming_the_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    _write_settings(tmp_path, text)
    with pytest.raises(InvalidInput) as caught:
        load_settings(tmp_path)
    assert str(caught.value).startswith("the project's hearth.toml: ")
    assert str(tmp_path) not in str(caught.value)  # no path of the host's in an API's error
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "colour = 1\n",
            "unknown key 'colour'; the file holds store, [tiers.*], [adapters.*], [timeouts] and [serve]",
        ),
        (
            "[tiers.team]\nresource_caps = { cpu = 2 }\ncolor = 1\n",
            "tiers.team.color: unknown key; a tier has resource_caps, driver_flags and autostop",
        ),
        (
            "[timeouts]\nstatus = 5\nstatuz = 5\n",
            "timeouts.statuz: unknown key; choose one of provision, upgrade, teardown, stop, start, "
            "status, list",
        ),
        (
            "[serve]\nreconcile_every = 5\n",
            "serve.reconcile_every: unknown key; choose one of reconcile_interval, reconcile_jitter",
        ),
        ("[serve]\nreconcile_interval = -1\n", "serve.reconcile_interval: Input should be greater than"),
    ],
)
def test_the_model_refuses_an_unknown_key_at_each_level_naming_file_and_dotted_key(
    tmp_path: Path, text: str, message: str
) -> None:
    _write_settings(tmp_path, text)
    with pytest.raises(InvalidInput) as caught:
        load_settings(tmp_path)
    assert str(caught.value).startswith("the project's hearth.toml: ")
    assert str(tmp_path) not in str(caught.value)  # no path of the host's in an API's error
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_free_form_tables_keep_unknown_keys_and_timeouts_are_positive_numbers(tmp_path: Path) -> None:
    _write_settings(
        tmp_path,
        """
[tiers.solo.resource_caps]
gpus = 1
[tiers.solo.driver_flags.docker]
anything = { nested = [1, 2] }
[adapters.tfgrid]
whatever = "the adapter judges it"
[timeouts]
status = 5
lock_wait = 0.5
""",
    )
    settings = load_settings(tmp_path)
    caps = settings.profile("solo", "docker").resource_caps.model_dump(exclude_none=True)
    assert caps == {"cpu": 1.0, "memory_mb": 1024, "gpus": 1}
    assert settings.profile("solo", "docker").driver_flags == {"anything": {"nested": [1, 2]}}
    assert settings.adapter_config("tfgrid") == {"whatever": "the adapter judges it"}
    assert (settings.timeouts.status, settings.timeouts.lock_wait, settings.timeouts.list) == (5.0, 0.5, 60.0)
    for value in ("0", "-1", "true", '"5"', "[5]"):
        _write_settings(tmp_path, f"[timeouts]\nstatus = {value}\n")
        with pytest.raises(InvalidInput, match=r"hearth\.toml: timeouts\.status: must be a positive number"):
            load_settings(tmp_path)


def test_the_table_follows_the_seed_state_machine() -> None:
    assert transition(None, "provision", "a").during == "provisioning"
    assert transition("failed", "provision", "a").on_success == "ready"
    assert transition("ready", "upgrade", "a").on_failure == "failed"
    assert transition("ready", "teardown", "a").on_success == "tier_torn_down"
    assert all(state != "tier_torn_down" for state, _ in TRANSITIONS)


@pytest.mark.parametrize(
    ("state", "verb"),
    [
        ("tier_torn_down", "provision"),
        ("tier_torn_down", "teardown"),
        ("failed", "upgrade"),
        (None, "upgrade"),
        ("provisioning", "teardown"),
        ("ready", "provision"),
    ],
)
def test_illegal_verbs_are_invalid_transitions_naming_the_state(state: str | None, verb: str) -> None:
    with pytest.raises(InvalidTransition) as caught:
        transition(state, verb, "alpha")  # type: ignore[arg-type]
    assert caught.value.state == (state or "absent")
    assert f"it is {state or 'absent'}" in str(caught.value)


R = Recorded


@pytest.mark.parametrize(
    ("verb", "recorded", "asked", "expected"),
    [
        # provision: a new slug, the same ready workspace (no work), a failed one re-run (D8)
        ("provision", None, ("solo", "fake", False), ("provisioning", False)),
        ("provision", R("ready", "solo", "fake"), ("solo", "fake", False), None),
        ("provision", R("failed", "solo", "fake"), ("solo", "fake", False), ("provisioning", False)),
        # reuse of a torn-down slug archives its record; without reuse it is refused
        ("provision", R("tier_torn_down", "solo", "fake"), ("team", "docker", True), ("provisioning", True)),
        ("provision", R("tier_torn_down", "solo", "fake"), ("solo", "fake", False), "invalid_transition"),
        # another tier or driver is a conflict; a transient record is refused
        ("provision", R("ready", "solo", "fake"), ("team", "fake", False), "conflict"),
        ("provision", R("failed", "solo", "fake"), ("solo", "docker", False), "conflict"),
        ("provision", R("provisioning", "solo", "fake"), ("solo", "fake", False), "invalid_transition"),
        # upgrade from ready only
        ("upgrade", R("ready", "solo", "fake"), ("team", None, False), ("upgrading", False)),
        ("upgrade", R("failed", "solo", "fake"), ("team", None, False), "invalid_transition"),
        ("upgrade", R("upgrading", "solo", "fake"), ("team", None, False), "invalid_transition"),
        # teardown: from ready or failed; again on a torn-down workspace: nothing to do
        ("teardown", R("ready", "solo", "fake"), (None, None, False), ("tearing_down", False)),
        ("teardown", R("failed", "solo", "fake"), (None, None, False), ("tearing_down", False)),
        ("teardown", R("tier_torn_down", "solo", "fake"), (None, None, False), None),
        ("teardown", R("tearing_down", "solo", "fake"), (None, None, False), "invalid_transition"),
    ],
)
def test_the_plan_of_each_verb_from_each_record(
    verb: Verb, recorded: Recorded | None, asked: tuple[str | None, str | None, bool], expected: object
) -> None:
    tier, driver, reuse = asked
    if isinstance(expected, str):
        with pytest.raises(HearthError) as caught:
            rules(verb, recorded, "alpha", tier=tier, driver=driver, reuse=reuse)
        assert caught.value.kind == expected
        return
    found = rules(verb, recorded, "alpha", tier=tier, driver=driver, reuse=reuse)
    if expected is None:
        assert found.noop and not found.archive
    else:
        assert found.transition is not None and (found.transition.during, found.archive) == expected


@pytest.mark.parametrize(
    ("running", "asked", "joined"),
    [
        (("provision", "solo", "fake", False), ("provision", "solo", "fake", False), True),
        (("provision", "solo", "fake", False), ("provision", "team", "fake", False), False),
        (("provision", "solo", "fake", False), ("provision", "solo", "docker", False), False),
        (("provision", "solo", "fake", False), ("provision", "solo", "fake", True), False),
        (("provision", "solo", "fake", False), ("teardown", None, "fake", False), False),
        (("upgrade", "team", "fake", False), ("upgrade", "team", "fake", False), True),
        (("upgrade", "team", "fake", False), ("upgrade", "studio", "fake", False), False),
        (("teardown", None, "fake", False), ("teardown", None, "fake", False), True),
        (("teardown", None, "fake", False), ("upgrade", "team", "fake", False), False),
    ],
)
def test_a_start_joins_only_the_same_verb_with_the_same_arguments(
    running: Ask, asked: Ask, joined: bool
) -> None:
    assert joins(running, asked) is joined


def _deployment(slug: str = "alpha", state: str = "ready", generation: int = 1) -> Deployment:
    now = utc_now()
    ref = DeploymentRef(
        workspace_slug=slug,
        tier="solo",
        driver="fake",
        endpoint=f"fake://{slug}",
        created=now,
        last_status="ready",
    )
    return Deployment.model_validate(
        {
            "slug": slug,
            "generation": generation,
            "tier": "solo",
            "driver": "fake",
            "state": state,
            "ref": ref,
            "created_at": now,
            "updated_at": now,
        }
    )


async def _opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


async def test_the_sqlite_store_is_one_private_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    await (await _opened(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_version_2_store_is_migrated_with_its_operations_and_logs(tmp_path: Path) -> None:
    from hearth._store._records import MIGRATIONS

    path = tmp_path / "hearth.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    now = utc_now().isoformat()
    db.execute(
        "INSERT INTO deployments (slug, generation, tier, driver, state, created_at, updated_at) "
        "VALUES ('old', 1, 'solo', 'fake', 'ready', ?, ?)",
        (now, now),
    )
    db.execute(
        "INSERT INTO operations (slug, generation, verb, started_at, ended_at, outcome) "
        "VALUES ('old', 1, 'provision', ?, ?, 'succeeded')",
        (now, now),
    )
    db.execute(
        "INSERT INTO operation_log (operation, at, level, message) VALUES (1, ?, 'info', 'made')", (now,)
    )
    db.commit()
    db.close()
    store = await _opened(path)
    [op] = await store.operations(slug="old", with_log=True)
    assert (op.verb, op.state, op.outcome) == ("provision", "succeeded", "succeeded")
    assert [line.message for line in op.log] == ["made"]
    new, _ = await store.create_operation(NewOperation("old", 1, "teardown", "me:1:a"))
    assert new.id > op.id
    await store.close()


async def test_a_version_5_store_keeps_its_events_and_gives_them_their_generation(tmp_path: Path) -> None:
    """Schema 6 rebuilds the events table (SQLite): the events stay, each gets its operation's
    generation, and the sequence goes on past the last one."""
    from hearth._store._records import MIGRATIONS

    path = tmp_path / "hearth.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 5")
    now = utc_now().isoformat()
    db.execute(
        "INSERT INTO operations (slug, generation, verb, state, created_at) VALUES ('old', 2, 'provision', "
        "'succeeded', ?)",
        (now,),
    )
    db.executemany(
        "INSERT INTO events (seq, at, operation, slug, verb, kind, state) "
        "VALUES (?, ?, 1, 'old', 'provision', 'state', ?)",
        [(7, now, "queued"), (9, now, "succeeded")],
    )
    db.commit()
    db.close()
    store = await _opened(path)
    assert [(e.seq, e.state, e.generation) for e in await store.events()] == [
        (7, "queued", 2),
        (9, "succeeded", 2),
    ]
    await store.save(_deployment("old", generation=2))  # a change of a record no operation caused
    [changed] = await store.events(after=9)
    assert (changed.seq, changed.kind, changed.operation, changed.generation) == (10, "workspace", None, 2)
    await store.close()


async def test_a_store_from_a_newer_hearth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    await (await _opened(path)).close()
    sqlite3.connect(path).execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer than this hearth"):
        await _opened(path)


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        await _opened(path)


@pytest.mark.parametrize(
    ("verb", "code", "data", "expected"),
    [
        ("upgrade", -32602, {}, True),
        ("upgrade", -32020, {}, True),
        ("upgrade", -32021, {}, True),
        ("upgrade", -32022, {}, True),
        ("upgrade", -32023, {}, True),
        ("provision", -32023, {}, True),
        ("teardown", -32602, {}, True),
        ("upgrade", -32031, {"rolled_back": True}, True),
        ("provision", -32031, {"rolled_back": True}, True),
        ("teardown", -32031, {"rolled_back": True}, False),  # a teardown is never undone
        ("provision", -32031, {"rolled_back": False}, False),
        ("provision", -32031, {}, False),
        ("provision", -32030, {}, False),
        ("upgrade", -32603, {}, False),
        ("provision", -32800, {}, False),
    ],
)
def test_which_answers_changed_nothing(verb: Any, code: int, data: dict[str, Any], expected: bool) -> None:
    from hearth._states import changed_nothing

    assert changed_nothing(verb, code, data) is expected


@pytest.mark.parametrize(
    ("verb", "answered", "data", "expected"),
    [
        ("provision", True, {}, True),
        ("provision", True, {"rolled_back": True}, True),
        ("provision", True, {"rolled_back": False}, False),
        ("provision", False, {}, False),
        ("upgrade", True, {}, True),
        ("teardown", True, {"rolled_back": True}, False),
    ],
)
def test_which_cancel_answers_confirm_a_rollback(
    verb: Any, answered: bool, data: dict[str, Any], expected: bool
) -> None:
    from hearth._states import cancel_rolled_back

    assert cancel_rolled_back(verb, answered, data) is expected


@pytest.mark.parametrize(
    ("recorded", "observed", "verb", "expected"),
    [
        # settled records: only a ghost changes
        ("ready", "absent", None, ("failed", "ghost")),
        ("ready", "ready", None, None),
        ("failed", "absent", None, None),  # what a rollback leaves: not a ghost
        ("ready", "unknown", None, None),  # an unreachable backend changes nothing
        # records a verb left uncertain
        ("provisioning", "ready", "provision", ("ready", None)),
        ("provisioning", "absent", "provision", ("failed", "no trace")),
        ("upgrading", "ready", "upgrade", ("ready", "upgrade interrupted")),
        ("tearing_down", "ready", "teardown", ("ready", "still serves")),
        ("tearing_down", "absent", "teardown", ("tier_torn_down", None)),
        ("tearing_down", "tier_torn_down", "teardown", ("tier_torn_down", None)),
        ("tearing_down", "tearing_down", "teardown", ("failed", "still tearing_down")),
        ("failed", "failed", "provision", ("failed", "shows failed")),
        ("failed", "unknown", "provision", None),
    ],
)
def test_reconcile_maps_what_it_observes_to_the_record(
    recorded: Any, observed: str, verb: str | None, expected: tuple[str, str | None] | None
) -> None:
    from hearth._states import resolve

    found = resolve(recorded, observed, verb=verb)
    if expected is None:
        assert found is None
        return
    assert found is not None and found.state == expected[0]
    if expected[1] is None:
        assert found.reason is None
    else:
        assert expected[1] in (found.reason or "")
    assert found.unconfirmed == (observed in ("provisioning", "upgrading", "tearing_down"))


async def _open_and_close(path: str) -> None:
    await (await _opened(Path(path))).close()


def _in_three_processes(opens: Callable[[str], Coroutine[Any, Any, None]], place: str) -> list[str]:
    """``opens(place)`` in three forked processes released at once: what each said ("ok", or
    the message of its ``StoreError``)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()

    def run() -> None:
        barrier.wait()
        try:
            asyncio.run(opens(place))
            results.put("ok")
        except StoreError as exc:
            results.put(exc.message)

    processes = [context.Process(target=run) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    outcomes = [results.get(timeout=10) for _ in processes]
    results.close()
    results.join_thread()
    return outcomes


@pytest.mark.subprocess
def test_several_processes_can_open_a_new_store_at_once(tmp_path: Path) -> None:
    """SQLite refuses a journal-mode switch at once when openers contend: the store retries."""
    outcomes = []
    for round_ in range(40):
        outcomes += _in_three_processes(_open_and_close, str(tmp_path / f"{round_}.db"))
    assert set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]


async def test_an_emptied_store_in_a_used_home_is_refused_not_started_afresh(tmp_path: Path) -> None:
    """Issue 20: a zero-length hearth.db in a home a host has used is a store_error naming the
    file and what to do; it is neither read as an empty registry nor overwritten."""
    from hearth._store._records import current
    from tests.helpers import make_host

    async with make_host(tmp_path) as host:
        await host.provision("alpha", tier="solo", driver="fake")
    path = tmp_path / "home" / "hearth.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError) as caught:
        async with make_host(tmp_path) as host:
            await host.list()
    assert str(path) in caught.value.message
    assert "restore" in caught.value.message and "remove it" in caught.value.message
    with pytest.raises(StoreError, match="restore"):
        current(path)
    assert path.stat().st_size == 0  # left as found
    path.unlink()  # as the message says: start afresh
    async with make_host(tmp_path) as host:
        assert await host.list() == []


async def test_a_new_store_never_shows_an_empty_file(tmp_path: Path) -> None:
    """A new store is linked into place whole, so a zero-length hearth.db is never one being made."""
    path = tmp_path / "hearth.db"
    await (await _opened(path)).close()
    assert path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a zero-length file in a home with no trace of use is still taken as new
    fresh = tmp_path / "fresh" / "hearth.db"
    fresh.parent.mkdir()
    fresh.write_bytes(b"")
    await (await _opened(fresh)).close()
    assert sqlite3.connect(fresh).execute("PRAGMA user_version").fetchone()[0] > 0


async def _host_lists(root: str) -> None:
    from tests.helpers import make_host

    async with make_host(Path(root)) as host:
        await host.list()


@pytest.mark.subprocess
def test_hosts_opening_one_fresh_home_at_once_all_get_the_new_store(tmp_path: Path) -> None:
    """However the creators interleave, none of them takes the store being made for an emptied one."""
    outcomes = []
    for round_ in range(15):
        outcomes += _in_three_processes(_host_lists, str(tmp_path / str(round_)))
        assert (tmp_path / str(round_) / "home" / "hearth.db").stat().st_size > 0
    assert set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]
