"""What one benchmark run measures, and at which sizes: the full run and the ``--quick`` one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = RECIPES / "scenes_seg_depth.yaml"
RESNET50_RECIPE = RECIPES / "gpu_resnet50_seg_depth_normals.yaml"


@dataclass(frozen=True, kw_only=True)
class TrainSize:
    """A recipe's training step at a reduced size: image side, batch size, warm-up and timed steps."""

    size: int
    batch: int
    warmup: int = 1
    steps: int = 3


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Sizes and repeats of one run; every section reads what it needs.

    Args:
        quick: Tiny sizes, for the test that keeps the benchmark working.
        device: Where models run (``cpu`` or ``cuda``).
        threads: CPU threads for torch (intra-op), the same in every measurement.
        size: Inference image side (square images).
        encoder: The ResNet of the comparison with the peers and of section 2's seg + depth models (torchvision's
            peers and its two-model baseline exist for ResNet-50 only).
        batches: Inference batch sizes of the seg-only comparison.
        multitask_batch: Batch size of the seg + depth comparison.
        warmup: Untimed rounds before timing inference.
        repeats: Timed rounds of inference; the median is reported.
        matmul_size: Side of the square matrices of the throughput reference.
        memory_repeats: Fresh processes per inference peak-memory figure (the median is reported).
        compile: Also measure ``torch.compile`` (slow to compile on a small CPU).
        default_train: The default recipe's step size.
        resnet50_train: The ResNet-50 stride-8 three-task recipe's step size.
        weighting_train: The default recipe's step size when comparing weighting strategies.
        data_batch: Batch of the rendering and augmentation measurements.
        accuracy_steps: Training steps of each depth-head variant's short accuracy run (0 skips them).
        accuracy_size: Image side of those runs.
        accuracy_samples: Samples per split of those runs in quick mode (the full run uses the dataset's).
        checkpoint: The trained model the precision section measures (the default recipe's); a quick run without
            one trains a tiny model for it, a full run skips the section.
        sections: The sections to run.
    """

    quick: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int = field(default_factory=torch.get_num_threads)
    size: int = 512
    encoder: str = "resnet50"
    batches: tuple[int, ...] = (1, 8)
    multitask_batch: int = 1
    warmup: int = 2
    repeats: int = 5
    matmul_size: int = 2048
    memory_repeats: int = 3
    compile: bool = False
    default_train: TrainSize = TrainSize(size=112, batch=8, warmup=2, steps=5)
    resnet50_train: TrainSize = TrainSize(size=256, batch=16, warmup=1, steps=2)
    weighting_train: TrainSize = TrainSize(size=112, batch=8, warmup=2, steps=8)
    data_batch: int = 16
    accuracy_steps: int = 150
    accuracy_size: int = 64
    accuracy_samples: int = 8
    checkpoint: str | None = None
    sections: tuple[str, ...] = ("peers", "precision", "inference", "multitask", "training", "weighting", "data", "accuracy")

    @classmethod
    def tiny(cls, **changes: object) -> Settings:
        """The ``--quick`` settings: everything runs, at sizes that take seconds."""
        quick = dict(
            quick=True, size=64, encoder="resnet18", batches=(1, 2), warmup=1, repeats=2, matmul_size=256, memory_repeats=1,
            default_train=TrainSize(size=32, batch=2, warmup=0, steps=1),
            resnet50_train=TrainSize(size=32, batch=2, warmup=0, steps=1),
            weighting_train=TrainSize(size=32, batch=2, warmup=0, steps=1),
            data_batch=2, accuracy_steps=2, accuracy_size=32,
        )
        return cls(**{**quick, **changes})

    def to_dict(self) -> dict:
        """Plain values for the results file."""
        plain = dataclasses.asdict(self)
        plain["device"] = str(self.device)
        return plain
