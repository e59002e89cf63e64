"""Pretrained folders, the way timm and segmentation_models_pytorch share models on the Hugging Face Hub.

A folder holds ``recipe.yaml`` (the resolved recipe the model was built from: its config), ``model.safetensors`` (the
weights) and ``README.md`` (a model card: tasks, backbone, val metrics and Δm, the recipe, how to load it). Upload it
as it is (``mtdl push``); ``MultiTaskModel.from_pretrained`` reads it back from a folder or a Hub repo.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file
from torch import nn

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.runtime.files import atomic_write

CONFIG_NAME = "recipe.yaml"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
LIBRARY = "multitask_deeplab"


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    delta_m: float | None = None,
    repo_id: str | None = None,
) -> Path:
    """Writes ``recipe.yaml``, ``model.safetensors`` and ``README.md`` into ``folder`` (created), each atomically.

    Args:
        model: The model; its ``state_dict`` is saved.
        folder: Where to write.
        config: The resolved recipe the model was built from, as a plain dict.
        metrics: Val metrics (``{"task.metric": value}``) for the model card.
        delta_m: Δm in percent against single-task baselines, for the card.
        repo_id: The Hub repo the folder is meant for, shown in the card's loading code.

    Returns:
        The folder.
    """
    recipe = recipe_module.from_dict(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda temp: save_file(state, str(temp), metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda temp: temp.write_text(recipe_module.dump(recipe)))
    card = model_card(recipe, metrics=metrics or {}, delta_m=delta_m, where=repo_id or str(folder))
    atomic_write(folder / CARD_NAME, lambda temp: temp.write_text(str(card)))
    return folder


def model_card(recipe: recipe_module.Recipe, *, metrics: Mapping[str, float], delta_m: float | None, where: str) -> ModelCard:
    """The model card (Hugging Face's ``README.md`` with YAML metadata) of a model built from ``recipe``."""
    kinds = sorted({task.kind for task in recipe.tasks.values()})
    data = ModelCardData(library_name=LIBRARY, tags=[LIBRARY, "dense-prediction", "multi-task", "pytorch", *kinds])
    model = recipe.model
    rows = [
        f"| {name} | {task.kind} | {_call(task.head)} | {_call(task.loss) if task.loss else 'default'} | "
        f"{', '.join(f'{key}={value}' for key, value in task.args.items()) or '-'} |"
        for name, task in recipe.tasks.items()
    ]
    table = "\n".join(rows)
    finite = [f"| {key} | {value:.4f} |" for key, value in metrics.items() if "/" not in key and math.isfinite(value)]
    metric_table = "\n".join(["| metric | value |", "|---|---|", *finite]) if finite else "Not recorded."
    delta = f"{delta_m:+.2f} % ({recipe.eval.delta_m} protocol)" if delta_m is not None else "not measured (no single-task baselines)"
    start = f"`{model.pretrained}`" if isinstance(model.pretrained, str) else ("timm's default weights" if model.pretrained else "scratch")
    body = f"""
# {LIBRARY}: {' + '.join(recipe.tasks)} on {model.backbone}

A multi-task dense-prediction model made with multitask_deeplab: one shared timm backbone, one head per task, every
prediction at the input size.

## Tasks

| task | kind | head | loss | arguments |
|---|---|---|---|---|
{table}

## Backbone

timm `{model.backbone}` at output stride {model.output_stride}, {model.in_chans} input channels, initialised from
{start} before training.
Inputs are images in [0, 1]; the model normalises them itself (mean {model.mean}, std {model.std}).

## Validation metrics

{metric_table}

Δm against single-task baselines: {delta}.

## How to load

```python
from multitask_deeplab import MultiTaskModel
from multitask_deeplab.inference.predictor import Predictor

model = MultiTaskModel.from_pretrained("{where}")       # model(images) -> {{task: B x C x H x W}}
predictor = Predictor.from_pretrained("{where}")        # predictor(image) -> {{task: numpy array}}
```

```bash
mtdl predict {where} images/ --out predictions/
```

## Recipe

The resolved recipe it was built and trained with (`{CONFIG_NAME}`):

```yaml
{recipe_module.dump(recipe).rstrip()}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _call(spec: Mapping[str, Any]) -> str:
    """``{type: deeplabv3plus, channels: 64}`` as ``deeplabv3plus (channels=64)``."""
    args = ", ".join(f"{key}={value}" for key, value in spec.items() if key != "type")
    return f"{spec['type']} ({args})" if args else str(spec["type"])
