"""Where hearth keeps things: ``$HEARTH_HOME`` when set, else platformdirs' user folders."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from ._errors import InvalidInput

HOME_ENV = "HEARTH_HOME"


def resolve_home(home: str | Path | None = None) -> Path | None:
    """The explicit home (argument, then ``$HEARTH_HOME``), or None for the platform folders."""
    if home is not None:
        if not str(home).strip():
            raise InvalidInput("the hearth home must name a folder, not an empty string")
        return Path(home).expanduser()
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def user_adapters_dir(home: str | Path | None = None) -> Path:
    base = resolve_home(home)
    return (base if base is not None else platformdirs.user_data_path("hearth")) / "adapters"


def state_dir(home: str | Path | None = None) -> Path:
    """Holds the store and the drivers' ``data/`` folders."""
    base = resolve_home(home)
    return base if base is not None else platformdirs.user_state_path("hearth")


def project_adapters_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / ".hearth" / "adapters"
