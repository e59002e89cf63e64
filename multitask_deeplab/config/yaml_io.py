"""Strict YAML for recipes: safe loading that refuses duplicate keys, tags, anchors, aliases, merge keys and deep
nesting, and reads ``1e-3`` as a float."""

from __future__ import annotations

import re
from typing import Any

import yaml

from multitask_deeplab.config.validation import RecipeError

_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.2 floats with an exponent and no dot or no exponent sign (1e-3, 5E4), which YAML 1.1 reads as strings.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_FLOAT_FIRST = list("-+0123456789.")
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings a recipe may have (the built-in sections need 5)."""


class Loader(yaml.SafeLoader):
    """Safe YAML that also refuses duplicate keys, every explicit tag, anchors and aliases (so a "billion laughs"
    alias bomb is refused before anything expands), merge keys and nesting deeper than :data:`MAX_DEPTH`, and reads
    1e-3 as a float."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise RecipeError(
                f"tag {shown!r} at line {line} is not allowed: recipes hold plain YAML only "
                "(null, booleans, numbers, strings, lists, mappings)"
            )
        if event.anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise RecipeError(
                f"{'alias' if sign == '*' else 'anchor'} {sign}{event.anchor} at line {line} is not allowed: recipes hold "
                "plain YAML without anchors and aliases; write the values out (or use command-line overrides)"
            )
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth > MAX_DEPTH:
            raise RecipeError(f"nesting deeper than {MAX_DEPTH} levels at line {line}: recipes nest a few levels only")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise RecipeError(
                    f"merge key '<<' at line {key_node.start_mark.line + 1} is not allowed: write the keys out"
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it
                continue
            if duplicate:
                line = key_node.start_mark.line + 1
                raise RecipeError(f"duplicate key {key!r} at line {line} (YAML keeps only the last one)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT, _FLOAT_FIRST)


class OverrideLoader(Loader):
    """For command-line values: only true/false are booleans (YAML 1.2), so ``train.amp=off`` stays 'off'."""


OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in Loader.yaml_implicit_resolvers.items()
}
OverrideLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class Dumper(yaml.SafeDumper):
    """Quotes every string the loader would read as something else; flow style for lists of scalars only."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    flow = all(not isinstance(item, (list, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


Dumper.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT, _FLOAT_FIRST)
Dumper.add_representer(list, _represent_list)


def parse(text: str, source: str, loader: type[Loader] = Loader) -> Any:
    """Parses YAML text; errors become one-line ``RecipeError``s that start with ``source``."""
    try:
        return yaml.load(text, Loader=loader)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(p for p in (err.context, err.problem) if p)
        raise RecipeError(f"{source}: not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
