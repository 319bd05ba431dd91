"""Per-workspace files of the tfgrid adapter, under its ``data_dir``.

``secrets/<slug>.secret`` holds the VM's ownership secret (mode 0600; its path is the ref's
``secrets_vault_path``, the secret itself never leaves this file and the service);
``workspaces/<slug>.json`` holds what the VM cannot: the tier and creation time (TFGrid VMs
have no metadata field, the name is the only handle).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any


class Vault:
    def __init__(self, folder: Path | None) -> None:
        if folder is None:  # a bare client gave no data_dir: keep secrets in a private temp folder
            folder = Path(tempfile.mkdtemp(prefix="hearth-tfgrid-"))
        self.folder = folder
        for sub in ("secrets", "workspaces"):
            (folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def secret_path(self, slug: str) -> Path:
        return self.folder / "secrets" / f"{slug}.secret"

    def mint(self, slug: str) -> str:
        """A new secret from the OS's CSPRNG, written to a file only its owner can read."""
        secret = secrets.token_urlsafe(32)
        path = self.secret_path(slug)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secret.encode())
        finally:
            os.close(fd)
        return secret

    def secret(self, slug: str, path: str | None = None) -> str | None:
        """The secret of ``slug`` (from the ref's vault path when it has one), or None."""
        for candidate in (Path(path) if path else None, self.secret_path(slug)):
            if candidate is not None and candidate.is_file():
                return candidate.read_text().strip()
        return None

    def record(self, slug: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.folder / "workspaces" / f"{slug}.json").read_text()))
        except FileNotFoundError:
            return None

    def save(self, slug: str, record: dict[str, Any]) -> None:
        path = self.folder / "workspaces" / f"{slug}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def forget(self, slug: str) -> None:
        self.secret_path(slug).unlink(missing_ok=True)
        (self.folder / "workspaces" / f"{slug}.json").unlink(missing_ok=True)

    def slugs(self) -> list[str]:
        return sorted(path.stem for path in (self.folder / "secrets").glob("*.secret"))
