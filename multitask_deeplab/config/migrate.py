"""Recipes written by earlier versions, read with today's keys.

Version 0.1 (checkpoint format 1) had task-specific heads: ``depth`` and ``depthplus`` (a positive depth output, with
``activation``, ``min_depth`` and ``max_depth``) and ``normals`` (unit-length output). Heads are task-neutral now and
the task kind applies the activation, so those heads became ``deeplabv3``/``deeplabv3plus`` and their depth arguments
moved to the task. 0.1 also wrote ``num_classes``, ``class_names`` and ``ignore_index`` into every task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RENAMED_HEADS = {"depth": "deeplabv3", "depthplus": "deeplabv3plus", "normals": "deeplabv3"}
"""Head types of version 0.1 and the task-neutral heads that compute the same function."""

DEPTH_HEAD_ARGS = ("activation", "min_depth", "max_depth")
"""Arguments of 0.1's depth heads that belong to the depth task now."""

_WRITTEN_FOR_EVERY_TASK = {"num_classes": None, "class_names": None, "ignore_index": 255}


def renamed_head_hint(head_type: str) -> str:
    """The line that tells a user of an old recipe what became of the head type ``head_type`` (empty if nothing)."""
    if head_type not in RENAMED_HEADS:
        return ""
    moved = f", and move {'/'.join(DEPTH_HEAD_ARGS)} from the head to the task" if head_type != "normals" else ""
    return (
        f"; heads are task-neutral since 0.2: use type: {RENAMED_HEADS[head_type]} (the {head_type.removesuffix('plus')} "
        f"task applies its activation itself){moved}"
    )


def upgrade_recipe(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A plain recipe dict of version 0.1 with today's keys (the model it describes computes the same function)."""
    upgraded = dict(raw)
    tasks = {}
    for name, task in dict(raw.get("tasks") or {}).items():
        task, head = dict(task), dict(task.get("head") or {})
        if head.get("type") in RENAMED_HEADS:
            for key in DEPTH_HEAD_ARGS:
                if key in head:
                    task[key] = head.pop(key)
            head["type"] = RENAMED_HEADS[head["type"]]
        task["head"] = head
        for key, default in _WRITTEN_FOR_EVERY_TASK.items():  # defaults of the segmentation kind too: safe to drop
            if key in task and task[key] == default:
                del task[key]
        tasks[name] = task
    upgraded["tasks"] = tasks
    return upgraded
