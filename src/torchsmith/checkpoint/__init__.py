"""Checkpoints: weights files, safe, precise, at about one model's memory.

The only package in torchsmith that touches file formats, and it imports no model code: whole models
(``save_model`` / ``load_model``) live in :mod:`torchsmith.models_io`, above surgery and the registry.

    >>> model = create_model("resnet18")
    >>> save_weights(model, "model.safetensors")          # atomic, checksummed
    PosixPath('model.safetensors')
    >>> _ = save_weights(nn.DataParallel(model), "ddp_checkpoint.pt")
    >>> load_weights(model, "ddp_checkpoint.pt").prefixes_removed    # 'module.' handled, with a report
    {'module.': 122}
"""

from .atomic import atomic_write
from .info import CheckpointDiff, CheckpointInfo, convert_checkpoint, diff_checkpoints, inspect_checkpoint
from .keys import find_state_dict, strip_wrappers
from .limits import Limits
from .report import Cast, LoadReport, Mismatch
from .signing import sign_checkpoint, verify_checkpoint
from .weights import load_weights, read_weights, save_weights

__all__ = [
    "save_weights",
    "load_weights",
    "read_weights",
    "LoadReport",
    "Limits",
    "Mismatch",
    "Cast",
    "inspect_checkpoint",
    "CheckpointInfo",
    "diff_checkpoints",
    "CheckpointDiff",
    "convert_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
    "atomic_write",
    "find_state_dict",
    "strip_wrappers",
]
