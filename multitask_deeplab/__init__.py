"""multitask_deeplab: multi-task dense prediction on one shared atrous timm backbone.

The extension points, each a registry with a base class (see the README's "Extending" section): task kinds
(``TASKS``, :class:`TaskKind`), heads (``HEADS``, :class:`DenseHead`), losses (``LOSSES``, :class:`DenseLoss`),
weighting strategies (``WEIGHTINGS``, :class:`Weighting`) and datasets (``DATASETS``).
"""

from multitask_deeplab.data import DATASETS
from multitask_deeplab.engine.build import create_model
from multitask_deeplab.engine.restore import load_model
from multitask_deeplab.losses import LOSSES, DenseLoss
from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.heads import HEADS, DenseHead
from multitask_deeplab.models.model import MultiTaskModel
from multitask_deeplab.tasks import TASKS, TaskKind
from multitask_deeplab.weighting import WEIGHTINGS, Weighting

__version__ = "0.2.0"
__all__ = [
    "DATASETS", "HEADS", "LOSSES", "TASKS", "WEIGHTINGS", "DenseHead", "DenseLoss", "MultiTaskModel", "TaskKind",
    "TimmBackbone", "Weighting", "create_model", "load_model",
]  # fmt: skip
