"""A persistent SQLite store of endpoint replies (judge calls, sampled answers) that several
processes can share.

Each answered call is committed on arrival, so a job killed halfway keeps what it paid for, and
the key covers everything that determines the reply, so a rerun pays only for what is missing.

Parallel jobs often need the same replies (a base and a run job with identical prompts, the judge
jobs of runs that gave the same answer). So that they pay once, a process claims a key (a row in
the `claims` table) before sending its request; another process that finds a live claim waits
for the reply instead (`send_once`). A claim dies with its holder: on the same host as soon as
its process is gone, on another host (a cluster's shared filesystem) once the holder has not
renewed it for `CLAIM_LEASE` seconds; a waiter then claims the key and sends it itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from emflow.errors import EmflowError

logger = logging.getLogger(__name__)

# Bump when the meaning of a stored reply changes; old rows then simply stop matching.
KEY_VERSION = 1

# A holder renews its claims every CLAIM_HEARTBEAT seconds while it works; a claim not renewed for
# CLAIM_LEASE seconds is dead even where its process cannot be checked (another host). The lease
# leaves room for clocks that differ between hosts and for a busy shared filesystem.
CLAIM_HEARTBEAT = 15.0
CLAIM_LEASE = 120.0
# A waiter looks for the replies it waits for this often: first soon, then at most every second.
CLAIM_POLL = (0.05, 1.0)

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


@dataclass
class Claim:
    """What `ReplyCache.claim` found for the keys it was given (each key in exactly one field)."""

    mine: list[str] = field(default_factory=list)  # claimed by this cache: send them
    held: list[str] = field(default_factory=list)  # another live process is sending them
    answered: dict[str, CachedReply] = field(default_factory=dict)  # stored meanwhile
    taken_over: int = 0  # of `mine`, keys whose holder died before storing a reply


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), None if it is gone or a zombie.

    With the start time a process that reused a dead holder's pid is not taken for it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # /proc unreadable: unknown, the lease decides
    fields_ = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields_[0] in ("Z", "X") else fields_[19]


def _host_id() -> str:
    """This host, and this pid namespace: a pid means the same process only within both."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass  # not Linux: the host name alone
    return " ".join(parts)


def _alive(host: str, pid: int, started: str, heartbeat: float, here: str, now: float) -> bool:
    """Whether a claim's holder may still answer: renewed within the lease, and on this host
    its process still running."""
    if now - heartbeat > CLAIM_LEASE:
        return False
    if host != here:
        return True
    if started:
        return _process_start(pid) in ("", started)  # "": /proc unreadable now, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


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


class ReplyCache:
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
        # Who holds this cache's claims: a fresh id per cache, and where its process can be checked.
        self._holder = uuid.uuid4().hex
        self._host = _host_id()
        self._started = _process_start(os.getpid()) or ""
        self._claimed: set[str] = set()
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
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
            if key in self._claimed:
                # The reply and the end of its claim in one commit: a waiter sees both or neither.
                with self._transaction():
                    self._insert(key, reply, prompt_tokens, completion_tokens, model)
                    self._db.execute(
                        "DELETE FROM claims WHERE key = ? AND holder = ?", (key, self._holder)
                    )
                self._claimed.discard(key)
            else:
                self._insert(key, reply, prompt_tokens, completion_tokens, model)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise self._full() from None
            raise
        return self.get_many([key])[key]

    def claim(self, keys: list[str]) -> Claim:
        """Claim every key that has no reply and no live holder, in one transaction.

        A key this cache claimed already stays its own, so one process never waits for itself.
        """
        unique = list(dict.fromkeys(keys))
        result = Claim(answered=self.get_many(unique))
        unique = [key for key in unique if key not in result.answered]
        if self.path is None:  # a cache in memory is this process's alone
            result.mine = unique
            return result
        now, alive = time.time(), {}
        try:
            # Made here, not on opening: a rerun that finds every reply writes nothing.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS claims ("
                " key TEXT PRIMARY KEY,"
                " holder TEXT NOT NULL,"
                " host TEXT NOT NULL,"
                " pid INTEGER NOT NULL,"
                " started TEXT NOT NULL,"
                " heartbeat REAL NOT NULL)"
            )
            with self._transaction():
                found = self.get_many(unique)  # stored since the read above
                result.answered.update(found)
                unique = [key for key in unique if key not in found]
                holders = {}
                for start in range(0, len(unique), 500):
                    chunk = unique[start : start + 500]
                    rows = self._db.execute(
                        "SELECT key, holder, host, pid, started, heartbeat FROM claims"
                        f" WHERE key IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                    holders.update({row[0]: row[1:] for row in rows})
                for key in unique:
                    holder = holders.get(key)
                    if holder is not None and holder[0] != self._holder:
                        if holder[0] not in alive:
                            alive[holder[0]] = _alive(*holder[1:], self._host, now)
                        if alive[holder[0]]:
                            result.held.append(key)
                            continue
                        result.taken_over += 1
                    result.mine.append(key)
                self._db.executemany(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (key, self._holder, self._host, os.getpid(), self._started, now)
                        for key in result.mine
                    ],
                )
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise self._full() from None
            raise
        self._claimed.update(result.mine)
        if result.mine and self._heartbeat is None:
            self._stop_heartbeat.clear()
            self._heartbeat = threading.Thread(
                target=self._renew_claims, name="emflow-cache-heartbeat", daemon=True
            )
            self._heartbeat.start()
        return result

    def release(self) -> None:
        """Give up every claim of this cache whose reply did not come (failed or not sent)."""
        if self._heartbeat is not None:
            self._stop_heartbeat.set()
            self._heartbeat.join()
            self._heartbeat = None
        if self._claimed and self.path is not None:
            self._db.execute("DELETE FROM claims WHERE holder = ?", (self._holder,))
        self._claimed.clear()

    def _renew_claims(self) -> None:
        """The heartbeat: keeps this cache's claims alive for other hosts while it works."""
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            while not self._stop_heartbeat.wait(CLAIM_HEARTBEAT):
                try:
                    db.execute(
                        "UPDATE claims SET heartbeat = ? WHERE holder = ?",
                        (time.time(), self._holder),
                    )
                except sqlite3.Error as exc:
                    # Not fatal: at worst another host sends a request twice after the lease.
                    logger.warning("could not renew the claims in %s: %s", self.path, exc)
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock first, so two processes never both see a key unclaimed.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back itself (a full disk)
                self._db.execute("ROLLBACK")
            raise

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
        try:
            self.release()
        finally:
            self._db.close()

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def send_once(
    cache: ReplyCache,
    missing: Callable[[], list[str]],
    send: Callable[[list[str]], bool],
    arrived: Callable[[dict[str, CachedReply]], None],
    log: logging.Logger,
    noun: str,
) -> None:
    """Get a reply for every key `missing()` names, sending only those no other job is sending.

    `send(keys)` asks for the keys this process claimed and stores each reply with `cache.put`;
    it returns False after a request failed for good, which ends this (the caller reports it).
    `arrived(replies)` takes the replies another job stored. The rest is waited for, and sent
    here once their holder dies or gives up. Keys `send` left without a reply and without a
    failure (an endpoint that gave fewer choices than asked) are claimed and sent again.
    """
    delay, waiting = CLAIM_POLL[0], False
    while keys := missing():
        claim = cache.claim(keys)
        if claim.answered:
            arrived(claim.answered)
        if claim.taken_over:
            log.info(
                "the job that was sending %d %s stopped without their replies; sending them here",
                claim.taken_over,
                noun,
            )
        if claim.mine:
            try:
                go_on = send(claim.mine)
            finally:
                cache.release()  # a failed or unsent request: a waiting job takes it over
            if not go_on:
                return
            delay, waiting = CLAIM_POLL[0], False
        elif claim.held:
            if not waiting:
                log.info("waiting for %d %s another job is sending", len(claim.held), noun)
                waiting = True
            time.sleep(delay)
            delay = min(CLAIM_POLL[1], delay * 2)
