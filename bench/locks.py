"""Who writes a run directory: one `bench run` at a time (`RunLock`), one worker per instance (`Claims`).

Both use ``fcntl.flock`` on a small file: the kernel drops the lock when its holder dies, however it
dies (SIGKILL included), so a lock is never stale; the file's contents (pid, host, time, command) only
serve the message shown to whoever finds it held.

* ``RUN/.lock``: held by a `bench run` (without ``--shard``) for its lifetime; a second `bench run` on
  the same ``--out`` is refused with one line naming the live process.
* ``RUN/claims/<method>/<instance>.lock``: held by the worker computing that instance, released once
  its record is written; processes that legitimately share a run directory (``--shard``, srun/torchrun
  ranks, Slurm array tasks) therefore never compute one instance twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from bench.errors import UserError


def holder_info() -> dict:
    """What a lock file says about its holder."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(["bench", *sys.argv[1:]])[:300]}


def _open(path: Path) -> int:
    """An fd of the lock file ``path`` (created, with its folder, if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created if needed), or None if another process holds it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_info(fd: int) -> None:
    data = json.dumps(holder_info()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive flock on ``path`` for the ``with`` block, waiting for it if another process
    holds it (short critical sections: the manifest's read-merge-write)."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class RunLock:
    """Exclusive use of a run directory by one `bench run` (context manager).

    Raises:
        UserError: another live process holds it (the message names its pid, host and command).
    """

    def __init__(self, root: str | Path):
        self.path = Path(root) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = _try_lock(self.path)
        if fd is None:
            info = _read_info(self.path)
            who = f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
            raise UserError(f"{self.path.parent} is being written by another bench run ({who}: "
                            f"{info.get('command', '?')}); wait for it to finish or use another --out")
        _write_info(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (its contents are only informative)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Claims:
    """Per-instance claims of one method in one run directory.

    ``claim(instance)`` returns False when a live process holds the instance; the caller must then
    skip it. ``release(instance)`` after the record is written (or on any exit of the worker).
    """

    def __init__(self, root: str | Path, method: str):
        self.folder = Path(root) / "claims" / method
        self.held: dict[str, int] = {}

    def path(self, instance: str) -> Path:
        return self.folder / f"{instance}.lock"

    def claim(self, instance: str) -> bool:
        if instance in self.held:
            return True
        fd = _try_lock(self.path(instance))
        if fd is None:
            return False
        _write_info(fd)
        self.held[instance] = fd
        return True

    def release(self, instance: str) -> None:
        fd = self.held.pop(instance, None)
        if fd is not None:
            # Unlink first, then unlock: a process that opened the old file gets its lock on an unlinked
            # inode, but it re-reads the record (written before this release) and skips the instance.
            self.path(instance).unlink(missing_ok=True)
            os.close(fd)

    def release_all(self) -> None:
        for instance in list(self.held):
            self.release(instance)
