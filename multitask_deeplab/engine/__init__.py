"""The training engine: loop, evaluation, checkpoints, distributed set-up."""
