"""Importing user code that registers its own components (``--plugin``): a ``.py`` file or an importable module."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from multitask_deeplab.errors import ComponentError, describe_exception


def import_plugins(plugins: Iterable[str]) -> None:
    """Imports each plugin once: a ``.py`` file (by its resolved path, so two files with one name both load) or a
    module name on ``sys.path``.

    Raises:
        ComponentError: one line naming the plugin and what went wrong in it (a missing file, a syntax error, an
            exception while importing it, a component that breaks its registry's contract).
    """
    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                _import_file(Path(plugin))
            else:
                importlib.import_module(plugin)
        except ComponentError as error:
            raise ComponentError(f"plugin {plugin}: {error}") from error
        except ModuleNotFoundError as error:
            if not plugin.endswith(".py") and error.name == plugin.split(".")[0]:
                raise ComponentError(f"cannot import plugin {plugin!r}: no such module; give a module on PYTHONPATH or a .py file") from error
            raise ComponentError(f"cannot import plugin {plugin}: {describe_exception(error)}") from error
        except Exception as error:
            raise ComponentError(f"cannot import plugin {plugin}: {describe_exception(error)}") from error


def module_name_for(path: Path) -> str:
    """The module name a plugin file is imported under: its stem plus a hash of its resolved path."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return f"mtdl_plugin_{resolved.stem}_{digest}"


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ComponentError(f"cannot import plugin {path}: no such file")
    name = module_name_for(path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise ComponentError(f"cannot import plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
