"""Whole models: ``save_model`` / ``load_model`` (``config.json`` + ``model.safetensors``, no pickle), and
rebuilding a model from its recorded config (the builder's keywords, then its surgery steps replayed).

This package sits above surgery and the registry and uses the checkpoint file I/O below them; the file I/O
imports no model code (it receives the rebuild function registered here).

    >>> model = load_model(save_model(create_model("resnet18", num_classes=10), "runs/r18"))
    >>> model.fc.out_features
    10
"""

import logging

import torch

from ..checkpoint.keys import LayoutGuess, register_layout_guesser
from ..checkpoint.materialize import register_rebuilder
from ..registry import create_model, list_models, model_config
from .replay import build_from_config, finish_loaded, replay_steps
from .whole import load_model, save_model

__all__ = ["save_model", "load_model", "build_from_config", "replay_steps", "finish_loaded"]

log = logging.getLogger(__name__)


@register_rebuilder
def _rebuild_from_config(model):
    """A registry-built model: its builder's keywords, then its recorded surgery steps."""
    cfg = model_config(model)
    if cfg is None:
        return None
    return f"build_from_config({cfg['name']!r})", lambda: build_from_config(cfg, device=None)


# which registered model a checkpoint's keys belong to (for the message of a load that does not fit)

_LAYOUTS: dict[str, dict[str, tuple[int, ...]]] = {}


def _layout(name: str) -> dict[str, tuple[int, ...]] | None:
    """``{key: shape}`` of the registered model ``name`` with its default arguments, built on meta (cached)."""
    if name not in _LAYOUTS:
        try:
            with torch.device("meta"):
                _LAYOUTS[name] = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
        except Exception:  # a builder that needs arguments, or fails on meta: it cannot be compared
            log.debug("no layout for %s", name, exc_info=True)
            return None
    return _LAYOUTS[name]


@register_layout_guesser
def _registered_layout(shapes):
    """The registered model whose keys are exactly these (most shapes equal first), e.g. ``'resnet152'``."""
    best = None
    for name in list_models():
        layout = _layout(name)
        if layout is None or layout.keys() != shapes.keys():
            continue
        other = [k for k, shape in shapes.items() if layout[k] != shape]
        if best is None or len(other) < len(best[1]):
            best = (name, other)
    if best is None:
        return None
    name, other = best
    if not other:
        return LayoutGuess(name)
    k = other[0]
    return LayoutGuess(name, f" built with other arguments ({len(other)} tensors differ in shape, e.g. {k} {shapes[k]} here, "
                             f"{_LAYOUTS[name][k]} in {name} by default)")
