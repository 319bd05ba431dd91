"""Where hearth keeps things: ``$HEARTH_HOME`` when set, else platformdirs' user folders."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from ._errors import InvalidInput

HOME_ENV = "HEARTH_HOME"
#: The daemon's Unix socket in a home, and the lock file it holds for its life (pid, project).
SOCKET_FILE = "hearth.sock"
SERVE_LOCK_FILE = "hearth-serve.lock"
#: A daemon to use instead (``unix:///path/to.sock`` or ``http(s)://host:port``), and its token.
URL_ENV = "HEARTH_URL"
TOKEN_ENV = "HEARTH_TOKEN"


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


def find_project_dir(start: str | Path | None = None) -> Path:
    """The nearest folder upward holding ``.hearth/``, else ``start`` (default: the cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".hearth").is_dir():
            return folder
    return here


def daemon_project(home: str | Path | None = None) -> Path | None:
    """The project the home's daemon serves (or last served), as its lock file says; None
    when unknown. Whether a daemon runs is for its socket to say."""
    try:
        lines = (state_dir(home) / SERVE_LOCK_FILE).read_text().splitlines()
    except OSError:
        return None
    return Path(lines[1]) if len(lines) > 1 and lines[1] else None


#: The environment variable naming the store (``postgresql://...``), as ``--store`` does.
STORE_ENV = "HEARTH_STORE"


def shown(url: str) -> str:
    """A store URL without its password (it never reaches a log, an error or the store)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(an unreadable store url)"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False
