"""Where the fake keeps its deployments and its call journal: in ``data_dir``, else memory.

One file per slug (written atomically), so several adapter processes sharing a data
folder never lose each other's updates; the journal is appended one line per call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class FakeStore:
    def __init__(self, data_dir: Path | None) -> None:
        self._dir = data_dir
        self._memory: dict[str, dict[str, Any]] = {}
        self.journal: list[dict[str, Any]] = []
        if data_dir is not None:
            (data_dir / "deployments").mkdir(mode=0o700, parents=True, exist_ok=True)

    def get(self, slug: str) -> dict[str, Any] | None:
        if self._dir is None:
            return self._memory.get(slug)
        try:
            return dict(json.loads(self._path(slug).read_text()))
        except FileNotFoundError:
            return None

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
        self.journal.append(entry)
        if self._dir is not None:
            line = (json.dumps(entry) + "\n").encode()
            fd = os.open(self._dir / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _path(self, slug: str) -> Path:
        assert self._dir is not None
        return self._dir / "deployments" / f"{slug}.json"


def read_journal(data_dir: Path) -> list[dict[str, Any]]:
    """Every call the fake recorded in ``data_dir`` (for tests and the demo)."""
    try:
        lines = (data_dir / "journal.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
