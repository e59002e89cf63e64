"""Layered recipes: ``base: other.yaml`` (or a list of files) names recipes that this one is written on top of.

The bases are merged first, in order, then the recipe itself: mappings merge key by key at every depth, and any
other value (a number, a string, a list, null) replaces what the layers below gave. Paths are relative to the folder
of the file that names them, and a base may have bases of its own. Merging happens on plain YAML data, before
overrides and before the strict checks, so the result is checked like any recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from multitask_deeplab.config.validation import RecipeError

BASE_KEY = "base"
"""The top-level key that names a recipe's bases."""


def merge(below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """``above`` written over ``below``: mappings on both sides merge key by key (recursively, keeping the order of
    ``below`` and appending new keys), any other value of ``above`` replaces the one below."""
    merged = dict(below)
    for key, value in above.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_bases(
    raw: Mapping[str, Any], *, directory: Path, source: str, read: Callable[[Path], Mapping[str, Any]], chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The recipe ``raw`` merged over its bases (``raw["base"]``, resolved against ``directory``), recursively.

    Args:
        raw: The parsed recipe, a mapping.
        directory: The folder that relative base paths start from (the recipe file's folder).
        source: The recipe's name in messages.
        read: Reads and parses one recipe file into a mapping.
        chain: The files being read above this one, to refuse a cycle.

    Raises:
        RecipeError: for a ``base`` that is not a file name or a list of them, a missing file, or a cycle.
    """
    if BASE_KEY not in raw:
        return dict(raw)
    names = raw[BASE_KEY]
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise RecipeError(f"{source}: {BASE_KEY}: expected a recipe file name or a list of them, got {raw[BASE_KEY]!r}")
    merged: dict[str, Any] = {}
    for name in names:
        path = (directory / name).resolve()
        if path in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
            raise RecipeError(f"{source}: {BASE_KEY} {name!r} leads back to itself ({cycle}); remove one of these bases")
        if not path.is_file():
            raise RecipeError(f"{source}: {BASE_KEY} {name!r} not found (looked for {path}; paths are relative to the recipe's folder)")
        below = merge_bases(read(path), directory=path.parent, source=str(path), read=read, chain=(*chain, path))
        merged = merge(merged, below)
    return merge(merged, {key: value for key, value in raw.items() if key != BASE_KEY})
