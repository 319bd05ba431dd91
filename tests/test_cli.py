"""The ``hearth`` CLI end to end: real processes, a real store, the fake adapter found on PATH."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hearth_adapter_fake._store import read_journal
from tests.conftest import trust_project_adapters

pytestmark = pytest.mark.subprocess

SETTINGS = """
[tiers.slow.driver_flags.fake]
delay = 0.5
[tiers.glacial.driver_flags.fake]
delay = 60
[tiers.crashy.driver_flags.fake]
crash_at = "provision"
[tiers.frozen.driver_flags.fake]
freeze_at = "provision"
ignore_sigterm = true
[timeouts]
cancel_grace = 2
"""
SHUTDOWN_BOUND = 15.0  # shutdown grace + stdin grace + SIGTERM grace, with room for a slow machine


class Cli:
    def __init__(self, root: Path, venv_bin: Path) -> None:
        self.project = root / "project"
        self.home = root / "home"
        (self.project / ".hearth").mkdir(parents=True)
        (self.project / ".hearth" / "hearth.toml").write_text(SETTINGS)
        self.env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("HEARTH_HOME", None)
        self.exe = str(venv_bin / "hearth")

    def argv(self, *args: str) -> list[str]:
        return [self.exe, *args, "--project", str(self.project), "--home", str(self.home)]

    def run(self, *args: str, bound: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=bound,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def error(self, *args: str, bound: float = 60.0) -> tuple[int, str, dict[str, Any]]:
        done = self.run(*args, "--json", bound=bound)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, f"a failure says why in one line on stderr, got: {done.stderr}"
        assert "Traceback" not in done.stderr
        return done.returncode, lines[-1], json.loads(done.stdout)["error"]

    def journal(self) -> list[dict[str, Any]]:
        return read_journal(self.home / "data" / "fake")


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    return Cli(tmp_path, venv_bin)


def test_every_verb_through_the_cli_with_json(cli: Cli) -> None:
    ref = cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    assert ref["workspace_slug"] == "alpha" and ref["endpoint"] == "fake://alpha"
    assert cli.json("status", "alpha")["state"] == "ready"
    assert cli.json("upgrade", "alpha", "--tier", "team")["tier"] == "team"
    [listed] = cli.json("ls")
    assert (listed["workspace_slug"], listed["tier"], listed["last_status"]) == ("alpha", "team", "ready")
    assert cli.json("teardown", "alpha")["state"] == "tier_torn_down"
    assert cli.json("status", "alpha")["state"] == "tier_torn_down"
    verbs = [op["verb"] for op in cli.json("logs", "alpha")]
    assert verbs == ["provision", "upgrade", "teardown"]
    assert cli.json("reconcile") == {
        "resolved": [],
        "unconfirmed": [],
        "ghosts": [],
        "busy": [],
        "unreachable": {},
        "dry_run": False,
        "orphans": [],
    }
    adapters = cli.json("adapters")
    assert any(row["driver"] == "fake" and row["status"] == "ok" for row in adapters)


def test_plain_output_is_readable(cli: Cli) -> None:
    done = cli.run("provision", "alpha", "--tier", "solo", "--driver", "fake")
    assert done.returncode == 0 and "alpha: ready" in done.stdout
    listing = cli.run("ls")
    assert listing.stdout.splitlines()[0].split() == ["SLUG", "STATE", "TIER", "DRIVER", "ENDPOINT"]
    assert "provision" in cli.run("logs", "alpha").stdout


@pytest.mark.parametrize(
    ("args", "kind", "code"),
    [
        (("provision", "Not_A_Slug", "--tier", "solo", "--driver", "fake"), "invalid_input", 2),
        (("provision", "alpha", "--tier", "huge", "--driver", "fake"), "invalid_input", 2),
        (("provision", "alpha", "--tier", "solo", "--driver", "warp"), "invalid_input", 2),
        (("status", "nothing"), "not_found", 2),
        (("provision", "alpha", "--tier", "solo"), "invalid_input", 2),
    ],
)
def test_bad_input_is_a_one_line_reason_and_a_json_error(
    cli: Cli, args: tuple[str, ...], kind: str, code: int
) -> None:
    returncode, line, error = cli.error(*args)
    assert returncode == code
    assert line.startswith(f"hearth: {kind}: ")
    assert error["kind"] == kind and error["message"] and error["retryable"] is False
    assert cli.journal() == []


def test_a_conflict_exits_one_with_the_existing_ref(cli: Cli) -> None:
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    returncode, line, error = cli.error("provision", "alpha", "--tier", "team", "--driver", "fake")
    assert returncode == 1 and line.startswith("hearth: conflict: ")
    assert error["existing"]["tier"] == "solo"
    assert (error["reason"], error["retryable"]) == ("other_tier", False)


def test_a_malformed_settings_file_names_the_file_and_key(cli: Cli) -> None:
    (cli.project / ".hearth" / "hearth.toml").write_text("[tiers.solo]\nresource_caps = 3\n")
    for command in (("provision", "alpha", "--tier", "solo", "--driver", "fake"), ("reconcile",)):
        _, line, error = cli.error(*command)
        assert "hearth.toml" in line and "tiers.solo.resource_caps" in line
        assert error["kind"] == "invalid_input"
    assert cli.json("ls") == []  # ls reads only the registry in the home, not the project's settings


def test_six_processes_provisioning_one_slug_make_one_adapter_call(cli: Cli) -> None:
    argv = cli.argv("provision", "alpha", "--tier", "slow", "--driver", "fake", "--json")
    runs = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli.env,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(6)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    refs = [json.loads(out) for out, _ in outputs]
    assert all(ref == refs[0] for ref in refs)
    assert [e["method"] for e in cli.journal()].count("provision") == 1
    assert len(cli.json("ls")) == 1


def _wait_for(condition: Callable[[], bool], bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_host_killed_mid_provision_leaves_a_record_the_next_access_settles(cli: Cli) -> None:
    host = subprocess.Popen(
        cli.argv("provision", "alpha", "--tier", "glacial", "--driver", "fake"),
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: any(e["method"] == "provision" for e in cli.journal()))
    host.send_signal(signal.SIGKILL)
    host.wait()
    [record] = cli.json("ls")
    assert record["last_status"] == "provisioning"
    dry = cli.run("reconcile", "--dry-run", "--json")
    assert dry.returncode == 3, dry.stderr  # drift found, nothing changed
    assert json.loads(dry.stdout)["resolved"] == [{"slug": "alpha", "from": "provisioning", "to": "failed"}]
    assert cli.json("ls")[0]["last_status"] == "provisioning"
    status = cli.json("status", "alpha")  # no manual reconcile: this access settles the record
    assert status["details"]["recorded_state"] == "failed"
    assert cli.json("ls")[0]["last_status"] == "failed"
    assert [op["outcome"] for op in cli.json("logs", "alpha")] == ["interrupted"]
    assert cli.json("teardown", "alpha")["state"] == "tier_torn_down"


@pytest.fixture
def misbehaving(cli: Cli, make_adapter: Callable[..., Path]) -> Callable[[str], None]:
    def install(mode: str) -> None:
        path = make_adapter("raw", name="hearth-adapter-raw", MODE=mode, DRIVER="raw")
        folder = cli.project / ".hearth" / "adapters"
        folder.mkdir(exist_ok=True)
        path.rename(folder / "hearth-adapter-raw")
        trust_project_adapters(cli.project, cli.home)

    return install


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("crash", ("--tier", "crashy", "--driver", "fake"), ("adapter_crashed", ["failed"])),
        ("garbage", ("--tier", "solo", "--driver", "raw"), ("protocol_violation", ["failed"])),
        # an adapter that cannot start changed nothing: no record is written
        ("dies before handshake", ("--tier", "solo", "--driver", "raw"), ("adapter_crashed", [])),
        (
            "hang, SIGTERM ignored",
            ("--tier", "frozen", "--driver", "fake", "--timeout", "1"),
            ("timeout", ["failed"]),
        ),
    ],
)
def test_a_misbehaving_adapter_gives_a_clear_failure_and_leaves_no_process(
    cli: Cli,
    misbehaving: Callable[[str], None],
    case: str,
    args: tuple[str, ...],
    expected: tuple[str, list[str]],
) -> None:
    kind, records = expected
    if "raw" in args:
        misbehaving("die_before_handshake" if case.startswith("dies") else "garbage")
    timeout = float(args[-1]) if "--timeout" in args else 10.0
    returncode, line, error = cli.error("provision", "alpha", *args, bound=timeout + SHUTDOWN_BOUND)
    assert returncode == 1
    assert line.startswith(f"hearth: {kind}: ")
    assert error["kind"] == kind
    assert [d["last_status"] for d in cli.json("ls")] == records
    if records:  # the adapter died or was stopped mid-verb: no operation is left running
        [operation] = cli.json("logs", "alpha")
        assert operation["outcome"] in ("failed", "cancelled")
        assert operation["error"]["kind"] == kind


def test_progress_is_shown_live_on_a_terminal(cli: Cli) -> None:
    import pty

    leader, follower = pty.openpty()
    done = subprocess.run(
        cli.argv("provision", "alpha", "--tier", "solo", "--driver", "fake"),
        stdout=subprocess.PIPE,
        stderr=follower,
        env=cli.env,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert done.returncode == 0
    assert b"creating workspace alpha" in shown and b"100%" in shown


def test_labels_on_provision_by_label_and_filtering_ls(cli: Cli, venv_bin: Path) -> None:
    """Issue 21: ``hearth provision --label``, ``hearth label SLUG k=v gone-`` and ``hearth ls
    --label`` (the standard-library reader: it loads no pydantic)."""
    made = cli.run(
        "provision", "alpha", "--tier", "solo", "--driver", "fake", "--label", "team=a", "--label", "env=dev"
    )
    assert made.returncode == 0, made.stderr
    cli.json("provision", "beta", "--tier", "solo", "--driver", "fake", "--label", "team=b")
    cli.json("provision", "gamma", "--tier", "solo", "--driver", "fake")
    assert [r["workspace_slug"] for r in cli.json("ls", "--label", "team=a")] == ["alpha"]
    assert [r["workspace_slug"] for r in cli.json("ls", "--label", "team=a", "--label", "env=prod")] == []
    assert len(cli.json("ls")) == 3

    record = cli.json("label", "alpha", "env=prod", "owner=ann", "team-")
    assert (record["slug"], record["labels"]) == ("alpha", {"env": "prod", "owner": "ann"})
    shown = cli.run("label", "alpha", "tier=gold")
    assert shown.returncode == 0 and shown.stdout.strip() == "alpha: env=prod, owner=ann, tier=gold"
    assert [r["workspace_slug"] for r in cli.json("ls", "--label", "owner=ann")] == ["alpha"]
    text = cli.run("ls", "--label", "team=b")
    assert text.returncode == 0 and "beta" in text.stdout and "alpha" not in text.stdout

    status, line, error = cli.error("label", "alpha", "Bad Key=x")
    assert (status, error["kind"]) == (2, "invalid_input") and "label key 'Bad Key'" in line
    status, _, error = cli.error("label", "alpha", "no-equals")
    assert (status, error["kind"]) == (2, "invalid_input")
    status, line, error = cli.error("ls", "--label", "Bad Key=x")  # the standard-library reader too
    assert (status, error["kind"]) == (2, "invalid_input") and "label key 'Bad Key'" in line
    status, _, error = cli.error("label", "nobody", "team=a")
    assert error["kind"] == "not_found"
    status, line, error = cli.error(
        "provision", "delta", "--tier", "solo", "--driver", "fake", "--label", "team=no way"
    )
    assert error["kind"] == "invalid_input" and "label 'team'" in line

    code = (
        "import sys\nfrom hearth._cli import main\n"
        f"code = main(['ls', '--label', 'owner=ann', '--json', '--home', {str(cli.home)!r}])\n"
        "print(code, 'pydantic' in sys.modules)\n"
    )
    done = subprocess.run(
        [str(venv_bin / "python"), "-c", code],
        env=cli.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    *document, last = done.stdout.splitlines()
    assert [r["workspace_slug"] for r in json.loads("\n".join(document))] == ["alpha"]
    assert last == "0 False"


def test_ctrl_c_cancels_the_adapter_and_the_record_says_why(cli: Cli) -> None:
    host = subprocess.Popen(
        cli.argv("provision", "alpha", "--tier", "glacial", "--driver", "fake", "--json"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(lambda: any(e["method"] == "provision" for e in cli.journal()))
    host.send_signal(signal.SIGINT)
    out, err = host.communicate(timeout=30)
    assert host.returncode == 130
    assert json.loads(out)["error"]["kind"] == "cancelled"
    assert err.strip().splitlines() == [
        "hearth: cancelled: interrupted by SIGINT; provision of 'alpha' was cancelled and rolled back"
    ]
    assert cli.json("ls") == []  # rolled back: nothing is left, nothing is in the way
    [operation] = cli.json("logs", "alpha")
    assert operation["outcome"] == "cancelled" and operation["error"]["kind"] == "cancelled"
    assert "Ctrl-C" in operation["error"]["message"] and operation["error"]["rolled_back"] is True
    assert not any(
        e["method"] == "provision" and e["slug"] == "alpha" for e in cli.journal()[1:]
    )  # nothing was retried


def test_adapters_shows_each_candidate_with_its_source_version_and_refusal(cli: Cli) -> None:
    folder = cli.project / ".hearth" / "adapters"
    folder.mkdir()
    unsafe = folder / "hearth-adapter-fake"
    unsafe.write_text("#!/bin/sh\necho never run\n")
    unsafe.chmod(0o777)
    rows = cli.json("adapters")
    fake = [row for row in rows if row["driver"] == "fake"]
    assert fake[0]["source"] == "project" and fake[0]["status"].startswith("refused: ")
    assert "writable by group or others" in fake[0]["status"] and fake[0]["version"] is None
    assert fake[1]["source"] == "path" and fake[1]["status"] == "ok"
    assert fake[1]["version"] == "hearth-adapter-fake 0.1.0"
    # the refused project copy is skipped: the workspace is served by the one on PATH
    assert cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")["last_status"] == "ready"


def test_an_emptied_store_is_a_store_error_for_ls_and_status(cli: Cli) -> None:
    """Issue 20: hearth.db truncated to 0 bytes in a used home is not an empty registry."""
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    path = cli.home / "hearth.db"
    path.write_bytes(b"")
    for args in (("ls",), ("status", "alpha")):
        _code, line, error = cli.error(*args)
        assert error["kind"] == "store_error", error
        assert line.startswith("hearth: store_error: "), line
        assert str(path) in line and "restore" in line and "remove it" in line
    assert path.stat().st_size == 0


def _read_only(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o500 if path.is_dir() else 0o400)


def _unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run so that file modes bind it: as is for a user, and for root (which ignores
    them) through ``setpriv`` with every capability dropped (still uid 0, the files' owner)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root ignores file modes and setpriv (to drop its capabilities) is missing")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--", *argv]


def test_ls_reads_a_read_only_home(cli: Cli) -> None:
    """Issue 20: in a home this user cannot write, SQLite cannot create the WAL's -shm file;
    ``hearth ls`` reads it anyway, and says in one line why not when the WAL holds transactions."""
    cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")
    store = cli.home / "hearth.db"
    assert not store.with_name("hearth.db-wal").exists()  # the last connection checkpointed it
    _read_only(store, cli.home)
    probe = subprocess.run(
        _unprivileged(["sh", "-c", f"touch {cli.home}/probe"]), capture_output=True, check=False, timeout=30
    )
    assert probe.returncode != 0, "the home must be read-only for the check to mean anything"
    done = subprocess.run(
        _unprivileged(cli.argv("ls", "--json")),
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["workspace_slug"] for r in json.loads(done.stdout)] == ["alpha"]
    assert sorted(p.name for p in cli.home.iterdir() if p.name.startswith("hearth.db")) == ["hearth.db"]

    # a copy whose WAL holds a transaction, without its -shm: not readable, and it says why
    copy = cli.home.parent / "copy"
    copy.mkdir()
    shutil.copy(store, copy / "hearth.db")
    db = sqlite3.connect(copy / "hearth.db")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("UPDATE deployments SET state = 'failed'")
    db.commit()
    shutil.copy(copy / "hearth.db-wal", copy / "wal")  # as a backup tool would copy it, open
    db.close()
    (copy / "wal").rename(copy / "hearth.db-wal")
    assert not (copy / "hearth.db-shm").exists()
    _read_only(copy / "hearth.db", copy / "hearth.db-wal", copy)
    argv = [cli.exe, "ls", "--json", "--project", str(cli.project), "--home", str(copy)]
    done = subprocess.run(
        _unprivileged(argv), capture_output=True, text=True, env=cli.env, timeout=60, check=False
    )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("hearth: store_error: ") and "hearth.db-wal" in line and "-shm" in line, line


def test_an_adapter_works_in_the_project_folder_wherever_hearth_runs(
    cli: Cli, make_adapter: Callable[..., Path]
) -> None:
    """A tier's relative paths (a kustomize overlay) mean the project's: the host starts its
    adapters there, though ``hearth`` runs elsewhere (here: the test's folder, with --project)."""
    folder = cli.project / ".hearth" / "adapters"
    folder.mkdir()
    make_adapter("echo").rename(folder / "hearth-adapter-echo")
    trust_project_adapters(cli.project, cli.home)
    settings = cli.project / ".hearth" / "hearth.toml"
    settings.write_text(settings.read_text() + "\n[tiers.here.driver_flags.echo]\nreport_cwd = true\n")
    assert Path.cwd() != cli.project
    made = cli.json("provision", "alpha", "--tier", "here", "--driver", "echo")
    assert made["endpoint"] == str(cli.project)
