"""multitask_deeplab: multi-task dense prediction on one shared atrous timm backbone."""

__version__ = "0.1.0"
