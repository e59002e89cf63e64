"""MATLAB v5 ``.mat`` files (PASCAL-Context's label maps, PASCAL-Part's annotations), read with scipy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multitask_deeplab.data.verify import require_file

SCIPY_HINT = 'needs scipy to read MATLAB .mat files: pip install -e ".[mtl-benchmarks]"'


def read_mat(path: Path, what: str, *, needs: str) -> dict[str, Any]:
    """The variables of a MATLAB v5 ``.mat`` file (``scipy.io.loadmat``, structs as record arrays).

    Args:
        path: The file.
        what: What the file is, for messages.
        needs: The variable the file must hold.

    Raises:
        ValueError: scipy is missing, the file is unreadable, or ``needs`` is not in it; naming the file.
    """
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as error:
        raise ValueError(f"{what} {SCIPY_HINT}") from error
    require_file(path, what)
    try:
        variables = loadmat(path)
    except (MatReadError, OSError, ValueError, NotImplementedError, TypeError) as error:
        raise ValueError(f"cannot read {path} as a MATLAB v5 .mat file: {error}") from error
    if needs not in variables:
        found = ", ".join(k for k in variables if not k.startswith("__")) or "none"
        raise ValueError(f"{path}: no variable {needs!r} (variables: {found}); is this the {what}?")
    return variables
