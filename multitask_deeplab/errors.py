"""The errors a user can cause, and a one-line description of any exception raised in their code."""

from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_LIBRARIES = {Path(p).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(key))}


class UnknownComponentError(ValueError):
    """A name that is not registered; the message names the closest registered one.

    Attributes:
        kind: What the registry holds ("head", "loss", ...).
        name: The name asked for.
    """

    def __init__(self, message: str, *, kind: str, name: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class ComponentError(ValueError):
    """A component that breaks its registry's contract, or fails when it is built or first tried; one line."""


def _is_user_file(filename: str) -> bool:
    path = Path(filename).resolve()
    if filename.startswith("<") or path.is_relative_to(_PACKAGE):
        return False
    return not any(path.is_relative_to(library) for library in _LIBRARIES)


def user_code_location(error: BaseException) -> str | None:
    """``file:line in function`` of the innermost traceback frame in the user's own code (not this package, the
    standard library or an installed package), or ``None`` when the error did not pass through such a frame."""
    if isinstance(error, SyntaxError) and error.filename and _is_user_file(error.filename):
        return f"{error.filename}:{error.lineno}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if _is_user_file(frame.filename)]
    if not frames:
        return None
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def describe_exception(error: BaseException) -> str:
    """``"TypeError: <first line of the message> (at plugin.py:12 in forward)"``: one line for any exception."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    where = user_code_location(error)
    return f"{text} (at {where})" if where else text

