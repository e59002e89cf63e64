"""One registry class for every extension point: a dict of named builders plus a decorator that checks the contract.

A registry holds classes that subclass its base class, or factory functions whose product must be an instance of
it (checked when the factory is built). The registry key is the component's name: a registered class gets it as
``registered_name``, and nothing else has to repeat it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from multitask_deeplab.errors import ComponentError, UnknownComponentError, describe_exception

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _origin(obj: Any) -> str:
    """Where ``obj`` was defined: its source file when known, else its module."""
    try:
        return inspect.getsourcefile(obj) or obj.__module__
    except TypeError:
        return getattr(obj, "__module__", "?")


class Registry(Generic[T]):
    """Maps names to subclasses of ``base`` or to factory functions returning one.

    Args:
        kind: What the registry holds ("head", "loss", ...); used in error messages.
        base: The class every entry must subclass (or every factory must return an instance of).
    """

    def __init__(self, kind: str, base: type[T]) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a subclass of the base class, or a factory function, under ``name``.

        Raises:
            ComponentError: the name is taken or malformed, or the object is a class that does not subclass the
                base class (checked here, when the plugin is imported, before any work starts).
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ComponentError(f"{self.kind} name {name!r} is not valid: use letters, digits and _ (not starting with a digit)")

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ComponentError(
                    f"{self.kind} {name!r} is already registered (by {_origin(self._entries[name])}); pick another name for "
                    f"the one in {_origin(obj)}"
                )
            if inspect.isclass(obj):
                if not issubclass(obj, self.base):
                    raise ComponentError(
                        f"{self.kind} {name!r} must subclass {self.base.__name__} or be a function that returns one; "
                        f"{obj.__qualname__} (in {_origin(obj)}) does not"
                    )
                obj.registered_name = name  # type: ignore[attr-defined]
            elif not callable(obj):
                raise ComponentError(f"{self.kind} {name!r} must be a {self.base.__name__} subclass or a factory function, got {obj!r}")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Returns the entry called ``name``, or raises :class:`UnknownComponentError` naming the closest one."""
        if name not in self._entries:
            raise UnknownComponentError(self.unknown_message(name), kind=self.kind, name=str(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown name: the closest match and every registered name."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.kind} {name!r}: {hint}registered {self.kind}s are {', '.join(sorted(self._entries))}"

    def build(self, cfg: Mapping[str, Any], *, where: str | None = None, **defaults: Any) -> T:
        """Builds an entry from ``{"type": name, **kwargs}``; ``defaults`` fill keys the config leaves out.

        Args:
            cfg: The type name and its keyword arguments.
            where: Where the config comes from (e.g. ``"tasks.seg.loss"``), to start error messages.
            defaults: Keyword arguments the framework passes itself.

        Raises:
            UnknownComponentError: the type is not registered.
            ComponentError: building failed (the builder's own ``ValueError`` message, or a one-line description of any
                other exception with the place in the user's code), or a factory returned something else.
        """
        if "type" not in cfg:
            raise ComponentError(f"{where or 'a ' + self.kind + ' config'}: needs a 'type' key, got keys {sorted(cfg)}")
        name = cfg["type"]
        prefix = f"{where}: " if where else ""
        try:
            builder = self.get(name)
        except UnknownComponentError as error:
            raise UnknownComponentError(f"{prefix}{error}", kind=self.kind, name=str(name)) from None
        kwargs = {**defaults, **{k: v for k, v in cfg.items() if k != "type"}}
        try:
            product = builder(**kwargs)
        except ComponentError:
            raise
        except ValueError as error:
            raise ComponentError(f"{prefix}{error}") from error
        except Exception as error:
            raise ComponentError(f"{prefix}{self.kind} {name!r} failed to build: {describe_exception(error)}") from error
        if not isinstance(product, self.base):
            raise ComponentError(
                f"{prefix}{self.kind} {name!r} must subclass {self.base.__name__} or return one; "
                f"its factory returned a {type(product).__name__}"
            )
        return product

    def name_of(self, cls: type) -> str:
        """The registered name of ``cls`` (or of the closest registered class it derives from), else its class name."""
        for klass in cls.__mro__:
            for name, entry in self._entries.items():
                if entry is klass:
                    return name
        return cls.__name__

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
