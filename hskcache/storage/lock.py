"""One writer per cache: a lock object at the cache root, held for the whole build.

Two builds writing one `--out` would mix their shards under one manifest (each shard passes its
own checksums, so nothing would notice). The lock is the object `hskcache.lock` at the cache
root, holding the writer's host, pid, a random token and start time. It is created exclusively:
with O_EXCL on a local disk (atomic), and on object storage by writing it and reading it back to
see that the token is ours. Object storage has no portable create-if-absent, so two builds that
start within the same instant may both believe they won; every shard write and the final
"complete" re-check the token, so the loser stops at its next shard at the latest (best effort,
said so in the README).

A lock whose holder runs on this host under a pid that no longer exists is stale (a killed
build) and is taken over with a note. A lock from another host cannot be checked from here:
the message says how to remove it (`--break-lock`). The lock is not a cache object: it is not in
the manifest's `objects` table, and a cache without it is a normal cache.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import fsspec

from hskcache.errors import HskError
from hskcache.storage.remote import bound_remote_calls

LOCK_KEY = "hskcache.lock"


class LockHeldError(HskError):
    """Another build holds (or took over) the lock on this cache."""


def local_path(url: str) -> Path | None:
    """The folder of a local `--out` (a plain path or file:// URL), None for object storage."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    return Path(url).expanduser() if "://" not in url else None


@dataclass
class BuildLock:
    """A lock this process holds (rank 0) or shares (other torchrun ranks, by its token)."""

    url: str
    token: str
    made_folder: bool = False  # a local --out this lock created: removed with it if still empty

    @property
    def key_url(self) -> str:
        return f"{self.url.rstrip('/')}/{LOCK_KEY}"

    @classmethod
    def acquire(cls, url: str, break_lock: bool = False) -> BuildLock:
        """Take the lock of the cache at `url`, or refuse naming who holds it.

        Raises:
            LockHeldError: a live (or unverifiable) build holds it and `break_lock` is False.
        """
        bound_remote_calls(url)
        lock = cls(url, secrets.token_hex(16))
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": lock.token,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        for _ in range(3):  # a stale lock removed by us (or another) leaves a free slot to race
            holder = lock._read()
            if holder is not None:
                if not (break_lock or _stale(holder)):
                    raise LockHeldError(_held_message(url, holder))
                why = "as asked (--break-lock)" if break_lock else "its process is dead"
                print(
                    f"hskcache: {url}: taking over the lock of {_holder_text(holder)}: {why}",
                    file=sys.stderr,
                )
                again = lock._read()  # two takers: remove only the stale one, not a new lock
                if again is not None and again.get("token") == holder.get("token"):
                    lock._remove()
            if lock._create(info):
                return lock
        raise LockHeldError(f"{url}: another build keeps taking the lock; retry later")

    def check(self) -> None:
        """Refuse to go on when the lock is no longer ours (removed, broken or taken over).

        Raises:
            LockHeldError: naming the new holder, or saying the lock is gone.
        """
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            return
        who = "it was removed" if holder is None else f"now held by {_holder_text(holder)}"
        raise LockHeldError(
            f"{self.url}: this build no longer holds the cache's lock ({who}); another build "
            "may be writing it: nothing was marked complete, rerun once that build is done"
        )

    def release(self) -> None:
        """Remove the lock if it is still ours (never another build's)."""
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self._remove()
        path = local_path(self.url)
        if self.made_folder and path is not None and path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # a refused or failed build leaves no empty --out behind

    # --- storage --------------------------------------------------------------------------

    def _read(self) -> dict | None:
        try:
            path = local_path(self.url)
            if path is not None:
                raw = (path / LOCK_KEY).read_bytes()
            else:  # a fresh GET every time: never a cached listing
                fs, key = fsspec.core.url_to_fs(self.key_url)
                fs.invalidate_cache(key)
                raw = fs.cat_file(key)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        ok = isinstance(holder, dict) and {"pid", "host", "started"} <= set(holder)
        return holder if ok else {"unreadable": True}  # no pid to check: never taken as stale

    def _create(self, info: dict) -> bool:
        data = json.dumps(info, indent=1).encode()
        path = local_path(self.url)
        if path is not None:
            self.made_folder = self.made_folder or not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path / LOCK_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError:  # a full disk: an empty lock would read as held by "?" forever
                (path / LOCK_KEY).unlink(missing_ok=True)
                raise
            return True
        fs, key = fsspec.core.url_to_fs(self.key_url)
        if fs.exists(key):
            return False
        fs.pipe_file(key, data)
        fs.invalidate_cache()
        holder = self._read()  # best effort: the last of two racing writers wins the read-back
        return holder is not None and holder.get("token") == self.token

    def _remove(self) -> None:
        path = local_path(self.url)
        if path is not None:
            (path / LOCK_KEY).unlink(missing_ok=True)
            return
        fs, key = fsspec.core.url_to_fs(self.key_url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)
        fs.invalidate_cache()


def _stale(holder: dict) -> bool:
    """True when the holder ran on this host and its pid is gone (a killed build)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _holder_text(holder: dict) -> str:
    if holder.get("unreadable"):
        return "a lock file that is not one hskcache wrote (unreadable)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


def _held_message(url: str, holder: dict) -> str:
    dead = "no build is running there" if holder.get("unreadable") else "that build is dead"
    return (
        f"{url}: held by {_holder_text(holder)}; if {dead}, remove "
        f"{url.rstrip('/')}/{LOCK_KEY} or pass --break-lock"
    )
