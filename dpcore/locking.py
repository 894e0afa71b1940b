"""One writer per output area: a lock file that says who holds it.

Two commands writing the same outputs at once (say two ``prepare`` runs on one
root) would race for the same files. Each writing command takes a lock file
beside the folder it writes (``outputs/.intensities.dpbeam-lock`` for
``outputs/intensities``; beside, not inside, because export-sc replaces its
whole folder) for its run; a second one refuses at once, naming the holder,
rather than waiting an unknown time. Commands writing different folders (train
and profile of one experiment, say) do not block each other.

Locally the file is created with ``O_EXCL`` (atomic). A lock left by a process
that died on this host is taken over with a warning. In a bucket, creation is
check-then-write (object stores offer no portable exclusive create through
fsspec); schedule runs so they do not overlap (``max_active_runs=1`` in the
Airflow DAG).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from typing import Iterator

from dpcore.storage import StoragePath, remove_stale_temporaries

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".dpbeam-lock"


class LockedError(RuntimeError):
    """Another dpbeam command is writing the same outputs."""


def _holder(command: str) -> dict:
    return {"command": command, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(lock: StoragePath, content: str) -> bool:
    if lock.is_local:
        os.makedirs(os.path.dirname(lock.url), exist_ok=True)
        try:
            handle = os.open(lock.url, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as file:
            file.write(content)
        return True
    if lock.exists():
        return False
    lock.write_text(content)
    return True


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"'{holder.get('command')}' (pid {holder.get('pid')} on {holder.get('host')}, since {started})"


@contextlib.contextmanager
def output_lock(folder: StoragePath, command: str) -> Iterator[StoragePath]:
    """Hold the lock of ``folder`` while the block runs; raise LockedError if someone else does."""
    lock = folder.parent / f".{folder.name}{LOCK_SUFFIX}"
    content = json.dumps(_holder(command))
    if not _create_exclusive(lock, content):
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            holder = {}
        stale = holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))
        if not stale:
            raise LockedError(
                f"{folder} is being written by {_describe(holder)}; wait for it to finish. If no dpbeam command "
                f"runs there any more, delete {lock}")
        logger.warning("taking over the lock of %s, which ended without releasing it (%s)", _describe(holder), lock)
        lock.remove()
        if not _create_exclusive(lock, content):
            raise LockedError(f"{folder}: another command took the lock at the same moment; try again")
    # Holding the lock, any temporary file in the folder is a leftover of an interrupted run.
    remove_stale_temporaries(folder)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.remove()
