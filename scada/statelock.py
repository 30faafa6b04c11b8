"""One server per state directory: an exclusive lock held for the life of the process.

Two servers on one ``site.state_dir`` corrupt each other's state: both append to the alarm
journal (duplicate sequence numbers), the next start restores the union of their alarms, the
historian's spool and segments are written twice, and their MQTT sessions (same client ids)
kick each other off. ``scada run`` and ``scada demo`` therefore take :func:`lock_state_dir`
before anything opens a state file or a socket.

Why ``flock(2)`` on ``<state_dir>/scada.lock`` and not a PID file: the kernel drops the lock
when the holder's last descriptor closes, however the process ends (SIGKILL, OOM killer,
power cut and reboot), so there is never a stale lock to clean by hand. The file keeps the
holder's PID only to name it in the error message; a PID left there by a killed holder means
nothing. The descriptor is close-on-exec, so processes the server starts do not inherit it.
On NFS, Linux emulates ``flock`` with byte-range locks, which also lock across machines.
"""

from __future__ import annotations

import fcntl
import os
import time

from .errors import StateDirInUse

#: Name of the lock file inside the state directory.
LOCK_NAME = "scada.lock"


class StateLock:
    """The held lock; the kernel releases it when the process ends, :meth:`release` before."""

    def __init__(self, fd: int, path: str, state_dir: str):
        self.fd = fd
        self.path = path
        self.state_dir = state_dir

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_state_dir(state_dir: str) -> StateLock:
    """Create ``state_dir`` if needed and take its lock, or raise :class:`StateDirInUse`.

    ``OSError`` from creating the directory or the lock file (permissions, a file where the
    directory should be) propagates with the path in it.
    """
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise StateDirInUse(state_dir, pid) from None
    except BaseException:
        os.close(fd)
        raise
    # the PID is written after the lock is ours: a reader that lost the race may see an empty
    # file for a moment (see _holder), never another process's PID as ours
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path, state_dir)


def _holder(fd: int, within: float = 1.0) -> int | None:
    """The PID the holder wrote into the lock file (it writes it right after locking)."""
    deadline = time.monotonic() + within
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
