"""Importing user code that registers its own components (``--plugin``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def import_plugins(plugins: list[str]) -> None:
    """Imports user code that registers its own components: a module name or a ``.py`` file path."""
    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                _import_file(Path(plugin))
            else:
                importlib.import_module(plugin)
        except (ImportError, FileNotFoundError) as error:
            raise ValueError(f"cannot import plugin {plugin!r}: {error}; give a module on PYTHONPATH or a .py file") from error


def _import_file(path: Path) -> None:
    name = f"mtdl_plugin_{path.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"no such plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
