"""Per-workspace files of the tfgrid adapter, under its ``data_dir``.

``secrets/<slug>.secret`` holds the VM's ownership secret (mode 0600; its path is the ref's
``secrets_vault_path``, the secret itself never leaves this file and the service);
``workspaces/<slug>.json`` holds what the VM cannot: the tier and creation time (TFGrid VMs
have no metadata field, the name is the only handle); ``gone/<slug>`` says this vault deleted
that workspace (so a secret that is missing for another reason is not taken for "nothing
deployed": on a replica whose data folder is not shared, the secret is simply elsewhere);
``deleting/<slug>`` says this vault has started deleting that workspace (a teardown, a rollback):
if that is cut short the secret stays (the VM may still be there), and the first look that finds
the VM gone completes it (``forget``), as a finished teardown would have.

A secret is read from ``secrets/<slug>.secret`` and nowhere else: a path handed in (a ref's
``secrets_vault_path``, which the host stores and anyone who can edit its record can change) is
only accepted when it resolves, symlinks followed, to that very file. Otherwise any file the
adapter can read (``/etc/hostname``, another workspace's secret) would be sent to the service.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

#: A secret file is a few dozen bytes; anything much larger is not one.
MAX_SECRET_BYTES = 4096


class UnsafeSecretPath(ValueError):
    """A secret path that is not the workspace's own file in this vault (nothing was read)."""

    def __init__(self, path: str, expected: Path, why: str) -> None:
        super().__init__(f"{path!r} {why}; a workspace's secret is only read from its own file {expected}")
        self.path = path
        self.expected = expected


class Vault:
    def __init__(self, folder: Path | None) -> None:
        #: A bare client gave no data_dir: secrets live in a private temp folder for the session.
        self.temporary = folder is None
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="hearth-tfgrid-"))
        self.folder = folder
        for sub in ("secrets", "workspaces", "gone", "deleting"):
            (folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def discard(self) -> None:
        """Remove a temp folder (never a data_dir): no later session could find its secrets,
        which would otherwise stay in the temp folder after the adapter has gone."""
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def secret_path(self, slug: str) -> Path:
        return self.folder / "secrets" / f"{slug}.secret"

    def mint(self, slug: str) -> str:
        """A new secret from the OS's CSPRNG, written to a file only its owner can read."""
        secret = secrets.token_urlsafe(32)
        path = self.secret_path(slug)
        (self.folder / "gone" / slug).unlink(missing_ok=True)
        (self.folder / "deleting" / slug).unlink(missing_ok=True)  # a new workspace, not a leftover
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secret.encode())
        finally:
            os.close(fd)
        return secret

    def secret(self, slug: str, path: str | None = None) -> str | None:
        """The secret of ``slug``, or None when it has none. ``path`` (a ref's vault path) must
        resolve to ``secrets/<slug>.secret`` of this vault, and so must that file itself (it may not
        be a symlink out of the folder): otherwise ``UnsafeSecretPath``, before anything is read."""
        own = self.secret_path(slug)
        expected = own.parent.resolve() / own.name
        for candidate in (Path(path) if path else None, own):
            if candidate is None:
                continue
            resolved = candidate.resolve()
            if resolved == expected:
                continue
            if resolved.parent == expected.parent:
                why = f"is not the secret file of {slug!r}"
            elif candidate.absolute().parent.resolve() == expected.parent:
                why = f"is a symlink out of this adapter's secrets folder (to {resolved})"
            else:
                why = f"is outside this adapter's secrets folder {expected.parent}"
            raise UnsafeSecretPath(str(candidate), own, why)
        try:  # O_NOFOLLOW: a symlink swapped in since the check above is refused, not followed
            fd = os.open(expected, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnsafeSecretPath(str(own), own, f"cannot be opened safely ({exc.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeSecretPath(str(own), own, "is not a regular file")
            data = os.read(fd, MAX_SECRET_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_SECRET_BYTES:
            raise UnsafeSecretPath(str(own), own, "is too large to be a secret")
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:  # minted secrets are URL-safe base64
            raise UnsafeSecretPath(str(own), own, "does not hold a secret (not ASCII)") from None

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
        """Drop the workspace's files once what it deployed is deleted, and say so."""
        gone = self.folder / "gone" / slug
        gone.touch(mode=0o600, exist_ok=True)
        self.secret_path(slug).unlink(missing_ok=True)
        (self.folder / "workspaces" / f"{slug}.json").unlink(missing_ok=True)
        (self.folder / "deleting" / slug).unlink(missing_ok=True)

    def deleting(self, slug: str) -> None:
        """Say that deleting ``slug``'s deployment has begun; ``forget`` (or a new ``mint``) ends it."""
        (self.folder / "deleting" / slug).touch(mode=0o600, exist_ok=True)

    def being_deleted(self, slug: str) -> bool:
        """Whether a deletion of ``slug``'s deployment began here and was not seen through."""
        return (self.folder / "deleting" / slug).exists()

    def deleted_here(self, slug: str) -> bool:
        """Whether this vault deleted ``slug``'s deployment (and its secret with it)."""
        return (self.folder / "gone" / slug).exists()

    def slugs(self) -> list[str]:
        return sorted(path.stem for path in (self.folder / "secrets").glob("*.secret"))
