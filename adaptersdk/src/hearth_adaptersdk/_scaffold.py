"""``hearth-adaptersdk new NAME [DIR]``: a new adapter package that installs and passes the kit.

The generated driver keeps its workspaces as JSON files in the host-given data_dir (in memory
without one) and is marked where the real backend calls go, so an author starts from code that
already honours the protocol's guarantees and changes one function at a time.
"""

from __future__ import annotations

import re
from pathlib import Path

from .codes import DRIVER_PATTERN

PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "hearth-adapter-{name}"
version = "0.1.0"
description = "hearth adapter for {name}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["hearth-adaptersdk>=0.1,<0.2"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.scripts]
# The host discovers adapters on PATH by this name: hearth-adapter-<driver>.
hearth-adapter-{name} = "{module}.__main__:main"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# jsonrpcserver (used by the SDK) calls deprecated importlib.resources functions
filterwarnings = ["ignore:read_text is deprecated", "ignore:open_text is deprecated"]
"""

README = """# hearth-adapter-{name}

A [hearth](https://pypi.org/project/hearth/) adapter for `{name}`.

```sh
pip install .                                   # puts hearth-adapter-{name} on PATH
python -m pytest                                # in-memory tests and the conformance kit
hearth-adaptersdk conformance "$(command -v hearth-adapter-{name})"
hearth provision alpha --tier solo --driver {name}
```

Start in `src/{module}/_driver.py`: each verb says where the real backend calls go.
"""

INIT = '''"""hearth-adapter-{name}."""

from ._driver import {cls}

__all__ = ["{cls}"]
'''

MAIN = '''"""Entry point of the hearth-adapter-{name} executable."""

from hearth_adaptersdk import serve

from ._driver import {cls}


def main() -> None:
    serve({cls})


if __name__ == "__main__":
    main()
'''

DRIVER = '''"""The {name} driver.

Replace the ``_backend_*`` helpers with calls to your backend. The rest already follows the
protocol: idempotent provision, read-only status, teardown that can be repeated, rollback
on failure or cancel, progress while working.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from hearth_adaptersdk import (
    Conflict,
    DeploymentRef,
    Driver,
    InvalidProfile,
    InvalidTransition,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    utc_now,
)


class {cls}Config(BaseModel):
    """[adapters.{name}] in the project's .hearth/hearth.toml."""

    model_config = ConfigDict(extra="forbid")


class {cls}(Driver):
    name: ClassVar[str] = "{name}"
    version: ClassVar[str] = "0.1.0"
    config_model: ClassVar[type[BaseModel] | None] = {cls}Config

    def __init__(self) -> None:
        self._memory: dict[str, dict[str, Any]] = {{}}

    # --- where the real backend goes --------------------------------------------------------
    def _load(self, slug: str) -> dict[str, Any] | None:
        if self.data_dir is None:
            return self._memory.get(slug)
        path = self.data_dir / f"{{slug}}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, slug: str, record: dict[str, Any] | None) -> None:
        if self.data_dir is None:
            if record is None:
                self._memory.pop(slug, None)
            else:
                self._memory[slug] = record
            return
        path = self.data_dir / f"{{slug}}.json"
        if record is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps(record))

    def _all(self) -> builtins.list[dict[str, Any]]:
        if self.data_dir is None:
            return list(self._memory.values())
        return [json.loads(p.read_text()) for p in sorted(Path(self.data_dir).glob("*.json"))]

    # --- the verbs ----------------------------------------------------------------------------
    async def validate_profile(self, profile: ProvisioningProfile,
                               ctx: RequestContext) -> builtins.list[str]:
        problems = []
        if profile.driver != self.name:
            problems.append(f"driver: this adapter serves {{self.name!r}}, not {{profile.driver!r}}")
        problems += [f"driver_flags.{{key}}: unknown flag" for key in sorted(profile.driver_flags)]
        return problems

    async def provision(self, slug: str, profile: ProvisioningProfile,
                        ctx: RequestContext) -> DeploymentRef:
        problems = await self.validate_profile(profile, ctx)
        if problems:
            raise InvalidProfile("this profile cannot be honoured", errors=problems)
        record = self._load(slug)
        if record is not None and record["last_status"] != "tier_torn_down":
            existing = DeploymentRef.model_validate(record)
            if existing.tier == profile.tier:
                return existing
            raise Conflict(f"{{slug!r}} exists with tier {{existing.tier!r}}; use upgrade",
                           existing=existing)
        ref = DeploymentRef(workspace_slug=slug, tier=profile.tier, driver=self.name,
                            endpoint=f"{name}://{{slug}}", created=utc_now(), last_status="ready")
        ctx.progress(f"creating {{slug}}", 0.1)
        try:
            await asyncio.sleep(0)  # TODO: create the workspace in your backend here
            self._save(slug, ref.model_dump(mode="json"))
        except BaseException:
            self._save(slug, None)  # roll back what this call created, also on cancel
            raise
        ctx.progress("ready", 1.0)
        return ref

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        record = self._load(ref.workspace_slug)
        if record is None:
            return StatusReport(state="absent", observed_at=utc_now())
        return StatusReport(state=record["last_status"], endpoint=record["endpoint"],
                            observed_at=utc_now())

    async def upgrade(self, ref: DeploymentRef, profile: ProvisioningProfile,
                      ctx: RequestContext) -> DeploymentRef:
        record = self._load(ref.workspace_slug)
        state = record["last_status"] if record else "absent"
        if record is None or state != "ready":
            raise InvalidTransition(f"cannot upgrade a workspace that is {{state}}", state=state)
        record["tier"] = profile.tier  # TODO: change the workspace in your backend here
        self._save(ref.workspace_slug, record)
        return DeploymentRef.model_validate(record)

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        record = self._load(ref.workspace_slug)
        if record is not None and record["last_status"] != "tier_torn_down":
            # TODO: remove the workspace from your backend here
            self._save(ref.workspace_slug, {{**record, "last_status": "tier_torn_down",
                                             "endpoint": None}})

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        return [DeploymentRef.model_validate(r) for r in self._all()
                if r["last_status"] != "tier_torn_down"]

    # stop and start (protocol 1.3): delete both if your backend cannot stop a workspace and
    # keep its disk; the host then answers a stop with unsupported, naming your driver
    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return self._run_state(ref, "stop", "ready", "stopped")

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return self._run_state(ref, "start", "stopped", "ready")

    def _run_state(self, ref: DeploymentRef, verb: str, origin: str, target: str) -> DeploymentRef:
        record = self._load(ref.workspace_slug)
        state = record["last_status"] if record else "absent"
        if record is None or state not in (origin, target):
            raise InvalidTransition(f"cannot {{verb}} a workspace that is {{state}}", state=state)
        if state == origin:  # the other end already reached changes nothing
            record["last_status"] = target  # TODO: stop or start the SAME backend objects here
            self._save(ref.workspace_slug, record)
        return DeploymentRef.model_validate(record)
'''

TESTS = '''"""Tests of the {name} driver, in memory: no subprocess, the same codec as stdio."""

import asyncio

from hearth_adaptersdk import ProvisioningProfile
from hearth_adaptersdk.conformance import KitOptions, run_conformance
from hearth_adaptersdk.testing import open_peer

from {module} import {cls}

PROFILE = ProvisioningProfile(tier="solo", driver="{name}")


def test_provision_is_idempotent_and_teardown_is_final() -> None:
    async def scenario() -> None:
        async with open_peer({cls}()) as peer:
            ref = await peer.provision("alpha", PROFILE)
            assert await peer.provision("alpha", PROFILE) == ref
            await peer.teardown(ref)
            assert (await peer.status(ref)).state in ("tier_torn_down", "absent")

    asyncio.run(scenario())


def test_the_conformance_kit_passes() -> None:
    options = KitOptions(refused_profile={{"tier": "t", "driver": "{name}",
                                          "driver_flags": {{"unknown": 1}}}})
    report = asyncio.run(run_conformance({cls}(), options))
    assert report.passed, report.render()
'''


def _module(name: str) -> str:
    return "hearth_adapter_" + name.replace("-", "_")


def _class(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name)) + "Driver"


def scaffold(name: str, folder: Path) -> list[Path]:
    """Write the package for driver ``name`` into ``folder``; ValueError on a bad name or folder."""
    if not re.fullmatch(DRIVER_PATTERN, name):
        raise ValueError(
            f"{name!r} is not a driver name: lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 40"
        )
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not empty; choose another folder")
    module, cls = _module(name), _class(name)
    values = {"name": name, "module": module, "cls": cls}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{module}/__init__.py": INIT,
        f"src/{module}/__main__.py": MAIN,
        f"src/{module}/_driver.py": DRIVER,
        f"src/{module}/py.typed": "",
        "tests/test_driver.py": TESTS,
    }
    written = []
    for relative, template in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values) if template else "")
        written.append(path)
    return written
