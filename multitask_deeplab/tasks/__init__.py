"""The built-in task kinds: which batch key holds each kind's target and how many channels its head outputs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    """What the framework knows about one kind of dense task.

    Attributes:
        name: The kind's name in recipes.
        target_key: The batch key that holds the target.
        channels: Output channels of its head; ``None`` means ``num_classes``.
    """

    name: str
    target_key: str
    channels: int | None


KINDS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind("segmentation", "seg", None),
        TaskKind("depth", "depth", 1),
        TaskKind("normals", "normals", 3),
    )
}


def task_kind(name: str) -> TaskKind:
    """The kind called ``name``, or a ``ValueError`` listing the kinds."""
    if name not in KINDS:
        raise ValueError(f"unknown task kind {name!r}: use one of {', '.join(KINDS)}")
    return KINDS[name]


def head_channels(kind: str, num_classes: int | None) -> int:
    """Output channels of a head for a task of ``kind`` (``num_classes`` for segmentation)."""
    channels = task_kind(kind).channels
    if channels is not None:
        return channels
    if num_classes is None or num_classes < 2:
        raise ValueError(f"a segmentation task needs num_classes >= 2, got {num_classes}")
    return num_classes
