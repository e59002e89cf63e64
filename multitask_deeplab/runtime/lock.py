"""An exclusive lock on a run folder, so two trainings never write into one folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FolderInUse(ValueError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """``<folder>/.lock``, locked with ``fcntl.lockf`` and holding the owner's PID.

    The operating system drops the lock when its process ends in any way (SIGKILL and power loss included), so a
    lock file left behind by a dead process is stale and is simply taken over. POSIX locks are per process: the
    DataLoader workers a training forks do not hold it.

    Args:
        folder: The run folder (it must exist).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`FolderInUse` naming the PID of the process that holds it."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderInUse(
                    f"{self.path.parent} is in use by process {holder} (another training writes there; lock file "
                    f"{self.path}): wait for it to end or stop it, or set train.output_dir to another folder"
                ) from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
            else:  # the previous holder removed the file between our open and our lock: lock the new one
                os.close(fd)

    def release(self) -> None:
        """Removes the lock file and drops the lock (a no-op when not held)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
