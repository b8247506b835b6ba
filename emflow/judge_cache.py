"""A persistent SQLite store of endpoint replies (judge calls, sampled answers) that several
processes can share.

Each answered call is committed on arrival, so a job killed halfway keeps what it paid for, and
the key covers everything that determines the reply, so a rerun pays only for what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from emflow.errors import EmflowError

# Bump when the meaning of a stored reply changes; old rows then simply stop matching.
KEY_VERSION = 1

# WAL needs shared memory between the processes, which a network filesystem cannot give
# (https://www.sqlite.org/wal.html): there SQLite's rollback journal with file locks is the safe
# mode.
_NETWORK_FILESYSTEMS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "cifs",
    "smb3",
    "smbfs",
    "beegfs",
    "fuse.sshfs",
}


@dataclass(frozen=True)
class CachedReply:
    """One stored judge reply and the tokens it cost when it was made."""

    reply: dict
    prompt_tokens: int
    completion_tokens: int


def cache_key(**fields: object) -> str:
    """A stable hex digest of everything that determines a reply."""
    payload = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (Linux /proc/mounts), or None if unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mount_point = parts[1].replace("\\040", " ")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, best_type = mount_point, parts[2]
    return best_type


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full")."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)


class JudgeCache:
    """Replies keyed by `cache_key`; `path=None` keeps them in memory for this run only.

    `name` and `setting` make its errors speak of the stage that uses it (the generation stage
    stores sampled answers here too) and of the setting that moves the file.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        name: str = "judge cache",
        setting: str = "--cache",
    ):
        self.path = Path(path).expanduser() if path is not None else None
        self.name = name
        try:
            if self.path is None:
                self._db = sqlite3.connect(":memory:", isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                self._db.execute("PRAGMA busy_timeout = 60000")
                network = _filesystem_type(self.path.parent) in _NETWORK_FILESYSTEMS
                self._db.execute(f"PRAGMA journal_mode = {'DELETE' if network else 'WAL'}")
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies ("
                " key TEXT PRIMARY KEY,"
                " reply TEXT NOT NULL,"
                " prompt_tokens INTEGER NOT NULL,"
                " completion_tokens INTEGER NOT NULL,"
                " model TEXT,"
                " created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            if _disk_full(exc):
                raise self._full() from None
            raise EmflowError(
                f"{self.path}: cannot be used as the {name} ({exc}); "
                f"pass another {setting} path or move this file away."
            ) from exc

    def _full(self) -> EmflowError:
        return EmflowError(
            f"the disk holding the {self.name} {self.path} is full; free space and rerun: "
            "every reply stored so far is kept there and will not be asked for again."
        )

    def get_many(self, keys: list[str]) -> dict[str, CachedReply]:
        """The stored replies among `keys`."""
        found: dict[str, CachedReply] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-variable limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT key, reply, prompt_tokens, completion_tokens FROM replies"
                f" WHERE key IN ({marks})",
                chunk,
            )
            for key, reply, prompt_tokens, completion_tokens in rows:
                found[key] = CachedReply(json.loads(reply), prompt_tokens, completion_tokens)
        return found

    def put(
        self, key: str, reply: dict, prompt_tokens: int, completion_tokens: int, model: str = ""
    ) -> CachedReply:
        """Commit one reply now; if another process stored this key first, return theirs.

        Keeping the first stored reply means every later run reads the same sampled answer.
        """
        try:
            self._insert(key, reply, prompt_tokens, completion_tokens, model)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise self._full() from None
            raise
        return self.get_many([key])[key]

    def _insert(
        self, key: str, reply: dict, prompt_tokens: int, completion_tokens: int, model: str
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                json.dumps(reply, ensure_ascii=False),
                prompt_tokens,
                completion_tokens,
                model,
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
