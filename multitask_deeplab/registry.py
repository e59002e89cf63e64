"""A small generic registry: a dict of named builders plus a decorator."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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


class Registry(Generic[T]):
    """Maps names to classes or factory functions.

    Args:
        kind: What the registry holds ("head", "loss", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or factory under ``name``."""

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {self._entries[name].__module__}); "
                    "pick another name"
                )
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Returns the entry called ``name``, or raises a ``ValueError`` that suggests the closest name."""
        if name not in self._entries:
            raise UnknownComponentError(self.unknown_message(name), kind=self.kind, name=str(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown name: the closest match and every registered name."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown {self.kind} {name!r}: {hint}registered {self.kind}s are {', '.join(sorted(self._entries))}"

    def build(self, cfg: Mapping[str, Any], **defaults: Any) -> T:
        """Builds an entry from ``{"type": name, **kwargs}``; ``defaults`` fill keys the config leaves out."""
        if "type" not in cfg:
            raise ValueError(f"a {self.kind} config needs a 'type' key, got keys {sorted(cfg)}")
        kwargs = {**defaults, **{k: v for k, v in cfg.items() if k != "type"}}
        return self.get(cfg["type"])(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
