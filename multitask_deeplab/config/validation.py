"""One home for checking user-given values: keyword arguments against a builder's signature, numbers against
their ranges, words against their choices. Every failure is one line that names the value and the fix.

Recipes, heads, losses, metrics, task kinds and weighting strategies all check their arguments here, so a typo
reads the same wherever it is made.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from multitask_deeplab.registry import Registry, UnknownComponentError


class RecipeError(ValueError):
    """A recipe problem; the message is one line that names the key and says the fix."""


def did_you_mean(word: Any, options: Iterable[str], prefix: str = "") -> str:
    """``": did you mean <prefix><closest option>?"``, or ``""`` when no option is close."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f": did you mean {prefix}{close[0]}?" if close else ""


def check_number(
    owner: str,
    arg: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Returns ``value`` as a float after checking it is a finite number in the range ``low .. high``.

    Args:
        owner: Who takes the value (e.g. ``"silog"``), for the message.
        arg: The argument's name, for the message.
        value: The value (booleans are refused: YAML reads ``on``/``no`` as booleans).
        low: Smallest allowed value, or ``None``.
        high: Largest allowed value, or ``None``.
        low_open: Whether ``low`` itself is excluded.
        high_open: Whether ``high`` itself is excluded.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner} {arg} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lower = "-inf" if low is None else f"{low}"
        upper = "inf" if high is None else f"{high}"
        brackets = ("(" if low_open else "[", ")" if high_open else "]")
        raise ValueError(f"{owner} {arg} must lie in {brackets[0]}{lower}, {upper}{brackets[1]}, got {value!r}; pick a value in that range")
    return float(value)


def check_choice(owner: str, arg: str, value: object, choices: Iterable[Any]) -> Any:
    """Returns ``value`` when it is one of ``choices``, else raises naming them (and the closest one)."""
    options = list(choices)
    if any(value == option and type(value) is type(option) for option in options):
        return value
    words = [o for o in options if isinstance(o, str)]
    hint = did_you_mean(value, words) if isinstance(value, str) else ""
    raise ValueError(f"{owner} {arg} must be one of {', '.join(map(repr, options))}, got {value!r}{hint}")


def is_named(param: inspect.Parameter) -> bool:
    """Whether a parameter can be passed by keyword."""
    return param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def accepted_keywords(builder: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``builder`` accepts, ``None`` for any (a function taking ``**kwargs``).

    A class whose ``__init__`` takes ``**kwargs`` is taken to pass them on to the next ``__init__`` in its MRO,
    as cooperative classes do (``super().__init__(**kwargs)``; ``nn.Module`` passes its own on to ``object``,
    which takes none), so the keywords of the whole chain are accepted and nothing else.
    """
    if not inspect.isclass(builder):
        params = inspect.signature(builder).parameters.values()
        return None if any(p.kind is p.VAR_KEYWORD for p in params) else [p.name for p in params if is_named(p)]
    names: dict[str, None] = {}
    for cls in builder.__mro__:
        if cls is object:
            break
        if "__init__" not in vars(cls):
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        names.update(dict.fromkeys(p.name for p in params if is_named(p)))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(names)


def required_keywords(builder: Callable[..., Any]) -> list[str]:
    """The keyword arguments ``builder`` cannot do without (no default), along its cooperative ``__init__`` chain; an
    argument a subclass gives a default is not required even when a base class requires it."""
    chain = [builder] if not inspect.isclass(builder) else [c.__init__ for c in builder.__mro__ if c is not object and "__init__" in vars(c)]
    required: dict[str, bool] = {}
    for function in chain:
        params = list(inspect.signature(function).parameters.values())
        if inspect.isclass(builder):
            params = params[1:]
        for p in params:
            if is_named(p) and p.name not in required:
                required[p.name] = p.default is p.empty
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return [name for name, needed in required.items() if needed]


def accepted_subset(builder: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``builder`` takes as keywords (all of them when it takes ``**kwargs``)."""
    accepted = accepted_keywords(builder)
    return dict(offered) if accepted is None else {k: v for k, v in offered.items() if k in accepted}


def check_kwargs(
    builder: Callable[..., Any], cfg: Mapping[str, Any], path: str, *, what: str, reserved: Iterable[str] = ()
) -> None:
    """Checks the keys of an open ``{type: name, **kwargs}`` recipe mapping against the signature of its builder.

    Args:
        builder: The class or factory ``cfg["type"]`` names.
        cfg: The mapping from the recipe.
        path: Its dotted key, for messages (e.g. ``"tasks.seg.head"``).
        what: What the builder makes, with its name (e.g. ``"head 'deeplabv3'"``), for messages.
        reserved: Keyword arguments the framework passes itself; the recipe must not set them.

    Raises:
        RecipeError: a key the builder does not take, a reserved key, or a required key missing.
    """
    reserved = set(reserved)
    for key in cfg:
        if key in reserved:
            raise RecipeError(f"{path}.{key}: set by the framework itself; remove it from the recipe")
    try:
        accepted = accepted_keywords(builder)
        required = required_keywords(builder)
    except (TypeError, ValueError):  # no introspectable signature: the builder will check its arguments
        return
    if accepted is not None:
        named = [name for name in accepted if name not in reserved]
        for key in cfg:
            if key != "type" and key not in named:
                hint = did_you_mean(key, named, prefix=f"{path}.") or f": {what} takes {', '.join(named) or 'no keyword arguments'}"
                raise RecipeError(f"unknown key {path}.{key}{hint}")
    for name in required:
        if name not in reserved and name not in cfg:
            raise RecipeError(f"{path}.{name}: required by {what}; add it")


def check_component(registry: Registry, cfg: Mapping[str, Any], path: str, *, reserved: Iterable[str] = ()) -> None:
    """Checks a recipe's ``{type: name, **kwargs}`` mapping: the name is registered and the keys fit its builder.

    Raises:
        RecipeError: a missing or unknown ``type`` (naming the closest registered name), or a key problem
            (see :func:`check_kwargs`).
    """
    if "type" not in cfg:
        raise RecipeError(f"{path}.type: required key is missing (one of {', '.join(registry.names())})")
    try:
        builder = registry.get(cfg["type"])
    except UnknownComponentError as error:
        raise RecipeError(f"{path}.type: {error}") from None
    check_kwargs(builder, cfg, path, what=f"{registry.kind} {cfg['type']!r}", reserved=reserved)
