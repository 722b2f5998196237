"""Rebuild a model from its recorded config: the builder's keywords, then the surgery steps in order.

``model.torchsmith_config`` is ``{"name", "kwargs", "steps"}``: the
registered builder and its keywords, then one JSON step per change of
structure torchsmith made (``replace_head``, ``adapt_input_channels``,
``add_inputs``, ``freeze`` / ``unfreeze``, ``fold_batchnorm``,
``optimize_for_inference``, ``replace_module`` with a module built by
``create_model`` / ``create_layer`` or described as plain data by the config
codec). :func:`build_from_config` replays them, on the meta device by default
(shapes only; ``load_model`` then assigns the weights).

The replay of each operation is registered beside the operation itself (``torchsmith.steps``, the one table);
this module imports surgery, so every operation is registered before a step is replayed.

Example::

    >>> import torchsmith as ts
    >>> model = ts.replace_head(ts.create_model("resnet18"), 5)
    >>> ts.model_config(model)["steps"]
    [{'op': 'replace_head', 'num_classes': 5, 'path': 'fc'}]
    >>> rebuilt = build_from_config(ts.model_config(model))
    >>> rebuilt.fc, rebuilt.fc.weight.device
    (Linear(in_features=512, out_features=5, bias=True), device(type='meta'))
"""

from __future__ import annotations

from .. import surgery  # noqa: F401 - importing surgery registers every recorded operation
from ..steps import build_from_config, finish_loaded, replay_steps

__all__ = ["build_from_config", "replay_steps", "finish_loaded"]
