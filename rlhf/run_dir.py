"""One run per directory: a lock file held while a trainer writes there, and unique default names.

The lock is ``RUN/.rlhf.lock``, created exclusively and holding ``{"pid", "host", "started"}``. A second
trainer on the same directory fails at once naming the owner; a lock left by a process that died without
cleaning up (same host, PID no longer alive) is taken over. A lock from another host is never guessed
about: the message says which file to delete if no run is using the directory.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from rlhf.errors import ConfigError

LOCK_NAME = ".rlhf.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


class RunDirLock:
    """Exclusive use of a run directory: ``with RunDirLock(run_dir): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    raise ConfigError(self._busy_message()) from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ConfigError(self._busy_message())

    def _take_over_stale(self) -> bool:
        """Remove a lock whose owner died on this host; False when the owner may be alive (or unknown)."""
        owner = _read_owner(self.path)
        if owner is None:
            # being written this instant, or not ours to judge: give the writer a moment, then decide
            time.sleep(0.05)
            owner = _read_owner(self.path)
            if owner is None:
                return not self.path.exists()
        if owner.get("host") != socket.gethostname() or _alive(owner["pid"]):
            return False
        # rename first: of two processes taking over the same stale lock, only one gets to move it
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it: race for the new one
        moved = _read_owner(aside)
        if moved is None or (moved["pid"], moved.get("started")) != (owner["pid"], owner.get("started")):
            os.replace(aside, self.path)  # another process's fresh lock: put it back
            return False
        aside.unlink(missing_ok=True)
        return True

    def _busy_message(self) -> str:
        owner = _read_owner(self.path)
        who = (f"process {owner['pid']} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
               if owner else "another process")
        return (f"run directory {str(self.run_dir)!r} is in use by {who}: one run per directory; wait for it, "
                f"or choose another --run-dir (if no run is using it, delete {self.path})")

    def release(self) -> None:
        if self.held:
            owner = _read_owner(self.path)
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def unique_run_dir(parent: str | Path, stem: str, now: datetime | None = None) -> Path:
    """``parent/stem-YYYYmmdd-HHMMSS``, created here; ``-2``, ``-3``, ... when that name is taken (mkdir is
    atomic, so two runs started in the same second still get different directories)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    n = 1
    while True:
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
