"""Whole models: ``save_model`` / ``load_model`` (``config.json`` + ``model.safetensors``, no pickle), and
rebuilding a model from its recorded config (the builder's keywords, then its surgery steps replayed).

This package sits above surgery and the registry and uses the checkpoint file I/O below them; the file I/O
imports no model code (it receives the rebuild function registered here).

    >>> model = load_model(save_model(create_model("resnet18", num_classes=10), "runs/r18"))
    >>> model.fc.out_features
    10
"""

from ..checkpoint.materialize import register_rebuilder
from ..registry import model_config
from .replay import build_from_config, finish_loaded, replay_steps
from .whole import load_model, save_model

__all__ = ["save_model", "load_model", "build_from_config", "replay_steps", "finish_loaded"]


@register_rebuilder
def _rebuild_from_config(model):
    """A registry-built model: its builder's keywords, then its recorded surgery steps."""
    cfg = model_config(model)
    if cfg is None:
        return None
    return f"build_from_config({cfg['name']!r})", lambda: build_from_config(cfg, device=None)
