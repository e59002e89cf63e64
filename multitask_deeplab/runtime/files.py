"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
"""The name :func:`atomic_write` gives its temporary files: ``.<name>.<8 random characters>.tmp``."""


class WriteError(OSError):
    """A file could not be written: a full disk, a read-only or missing folder, a lost permission.

    Attributes:
        path: The file that was being written.
        reason: What the operating system said, e.g. "No space left on device".
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = Path(path), reason


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = True) -> None:
    """Writes a file through ``write(temp_path)`` in the same folder, then renames it over ``path``.

    A process that dies midway leaves ``path`` as it was. With ``durable`` the file is also flushed to disk before
    the rename and the folder after it, so even after a power loss ``path`` holds either the previous file or the
    whole new one (checkpoints, logs); without, the two flushes are saved (pictures and predictions, written by the
    hundred). The file gets the mode a newly created file has under the process's umask (usually 0644), not
    ``mkstemp``'s 0600.

    Raises:
        WriteError: when the operating system refuses a write (``OSError`` from ``write`` or from the file
            system); any previous file at ``path`` is left untouched and the temporary file is removed.
    """
    path = Path(path)
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise WriteError(path, error.strerror or str(error)) from error
    temp = Path(temp_name)
    try:
        os.fchmod(fd, _new_file_mode())
        os.close(fd)
        write(temp)
        if durable:
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable:
            _fsync_folder(path.parent)
    except OSError as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, WriteError):
            raise
        raise WriteError(path, error.strerror or str(error)) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files that an :func:`atomic_write` killed midway left in ``folder``.

    Only safe while no other process writes to ``folder`` (the trainer holds the folder's lock).

    Returns:
        The files removed.
    """
    stale = [p for p in Path(folder).iterdir() if _TEMP_NAME.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _new_file_mode() -> int:
    """``0o666`` minus the process's umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Flushes a folder's entries (a rename) to disk; a no-op where folders cannot be opened (Windows)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    fd = os.open(folder, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
