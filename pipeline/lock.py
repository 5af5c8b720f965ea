"""One writer per store: a lock file beside the store, ``<store>.lock``.

The lock records the writer's host, process id, start time and command. A lock whose process no
longer runs on this host is stale: it is cleared with a warning. A lock held by a running process,
or by a process on another host (which cannot be checked from here), is rejected with a message
naming the holder and how to clear the lock by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import StoreLockedError

log = logging.getLogger(__name__)


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the process exists but belongs to another user
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _is_stale(holder: dict[str, Any] | None) -> bool:
    if holder is None:
        return False  # unreadable: maybe being written right now, so never cleared silently
    if holder.get("host") != socket.gethostname():
        return False
    return not _process_running(int(holder.get("pid", -1)))


def _held_by_this_process(holder: dict[str, Any] | None) -> bool:
    return (
        holder is not None
        and holder.get("host") == socket.gethostname()
        and holder.get("pid") == os.getpid()
    )


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process (the lock file is unreadable)"
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r}, started "
        f"{holder.get('started')}, command {holder.get('command')!r}"
    )


def _try_create(path: Path, holder: dict[str, Any]) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(holder, handle)
    return True


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's lock for the duration of a write; raise if another writer holds it."""
    path = lock_path(store)
    created_parent = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    if not _try_create(path, holder):
        existing = _read_holder(path)
        if _held_by_this_process(existing):
            yield  # nested use, for example freeze inside run: the outer call releases
            return
        if not _is_stale(existing):
            raise StoreLockedError(
                f"store {str(store)!r} is locked by {_describe(existing)}; wait for that run "
                f"to finish, or, if it is no longer running, delete {str(path)!r} and rerun"
            )
        log.warning("clearing stale lock %s left by %s", path, _describe(existing))
        path.unlink(missing_ok=True)
        if not _try_create(path, holder):
            raise StoreLockedError(
                f"store {str(store)!r} was locked by another run while a stale lock was being "
                f"cleared ({_describe(_read_holder(path))}); wait for it to finish"
            )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        # A run that failed before writing anything leaves no empty output folder behind.
        if created_parent and not any(path.parent.iterdir()):
            path.parent.rmdir()
