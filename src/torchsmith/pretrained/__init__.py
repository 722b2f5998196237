"""Pretrained weights: the table, where files come from, and loading them into a model just built.

``create_model(name, pretrained=True)`` / ``weights=TAG`` (the registry) and the zoo's ``backbone_weights=``
come here. The table records (:mod:`~torchsmith.pretrained.table`), :mod:`~torchsmith.pretrained.fetch`
finds a file (an explicit file, the torch hub cache, a verified download), :mod:`~torchsmith.pretrained.load`
loads it with ``load_weights`` and records ``model.pretrained_cfg``. Imports checkpoint code, no model code:
the zoo registers torchvision's weights for its ResNets when it is imported.

    >>> list_pretrained("resnet18*")
    ['resnet18.IMAGENET1K_V1']
    >>> get_weights("resnet18").data_config()["crop_pct"]
    0.875
"""

from .fetch import cache_path, fetch, fetch_weights, file_sha256, hub_checkpoints
from .imagenet import IMAGENET_CATEGORIES, IMAGENET_MEAN, IMAGENET_STD
from .load import CFG_ATTR, data_config, is_rebuilding, load_pretrained, rebuilding
from .table import DEFAULT_TAG, Weights, all_weights, get_weights, list_pretrained, register_weights, restore_table, table_state

__all__ = [
    "Weights",
    "register_weights",
    "get_weights",
    "list_pretrained",
    "all_weights",
    "data_config",
    "load_pretrained",
    "fetch",
    "fetch_weights",
    "cache_path",
    "hub_checkpoints",
    "file_sha256",
    "rebuilding",
    "CFG_ATTR",
    "is_rebuilding",
    "table_state",
    "restore_table",
    "DEFAULT_TAG",
    "IMAGENET_CATEGORIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

