"""Where the fake keeps its deployments and its call journal: in ``data_dir``, else memory.

One file per slug (written atomically), so several adapter processes sharing a data
folder never lose each other's updates; the journal is appended one line per call. A call that
must leave ``data_dir`` as it found it (status, list, validate_profile, plan) is journalled with
the next call that writes, or when the adapter closes.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

#: The verbs that leave ``data_dir`` byte for byte as they found it.
READS = frozenset({"status", "list", "validate_profile", "plan"})
#: The reads kept for the next write: the newest, so that an adapter answering status for days
#: between two writes holds a bounded journal in memory (and each read costs the same).
READS_KEPT = 10_000


class FakeStore:
    def __init__(self, data_dir: Path | None) -> None:
        self._dir = data_dir
        self._memory: dict[str, dict[str, Any]] = {}
        self.journal: list[dict[str, Any]] = []
        # Parsed files by slug, valid while the file's identity is unchanged (writes replace it).
        self._cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._journal_fd: int | None = None
        #: journal lines of reads, written with the next write
        self._unwritten: deque[bytes] = deque(maxlen=READS_KEPT)
        if data_dir is not None:
            (data_dir / "deployments").mkdir(mode=0o700, parents=True, exist_ok=True)
            self._journal_fd = os.open(
                data_dir / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )

    def get(self, slug: str) -> dict[str, Any] | None:
        """The record of ``slug``; re-read only when another write replaced its file."""
        if self._dir is None:
            return self._memory.get(slug)
        path = self._folder(slug)
        try:
            info = os.stat(path)
            identity = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = self._cache.get(slug)
            if cached is None or cached[0] != identity:
                with open(path, encoding="utf-8") as file:
                    cached = (identity, json.load(file))
                self._cache[slug] = cached
        except FileNotFoundError:
            self._cache.pop(slug, None)
            return None
        return cached[1]  # shared with the cache: callers must not change it

    def put(self, slug: str, record: dict[str, Any]) -> None:
        if self._dir is None:
            self._memory[slug] = record
            return
        path = self._path(slug)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def delete(self, slug: str) -> None:
        if self._dir is None:
            self._memory.pop(slug, None)
        else:
            self._path(slug).unlink(missing_ok=True)

    def all(self) -> list[dict[str, Any]]:
        if self._dir is None:
            return list(self._memory.values())
        records = []
        for path in sorted((self._dir / "deployments").glob("*.json")):
            try:
                records.append(dict(json.loads(path.read_text())))
            except (FileNotFoundError, ValueError):
                continue
        return records

    def record_call(self, entry: dict[str, Any]) -> None:
        if self._journal_fd is None:
            self.journal.append(entry)
        elif entry["method"] in READS:
            self._unwritten.append((json.dumps(entry) + "\n").encode())
        else:  # one O_APPEND write per call: processes sharing the folder never interleave
            os.write(self._journal_fd, b"".join((*self._unwritten, (json.dumps(entry) + "\n").encode())))
            self._unwritten.clear()

    def close(self) -> None:
        if self._journal_fd is not None:
            if self._unwritten:
                os.write(self._journal_fd, b"".join(self._unwritten))
                self._unwritten.clear()
            os.close(self._journal_fd)
            self._journal_fd = None

    def _path(self, slug: str) -> Path:
        return Path(self._folder(slug))

    def _folder(self, slug: str) -> str:
        # A plain string join: this runs on every call, and pathlib costs more than the read.
        return f"{self._dir}/deployments/{slug}.json"


def read_journal(data_dir: Path) -> list[dict[str, Any]]:
    """Every call the fake recorded in ``data_dir`` (for tests and the demo)."""
    try:
        lines = (data_dir / "journal.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
