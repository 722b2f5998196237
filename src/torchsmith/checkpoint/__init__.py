"""Checkpoints: weights and whole models, safe, precise, at about one model's memory.

The only package in torchsmith that touches file formats.

    >>> save_weights(model, "model.safetensors")          # atomic, checksummed
    >>> print(load_weights(model, "ddp_checkpoint.pt"))    # 'module.' handled, report printed
    >>> save_model(model, "runs/best"); load_model("runs/best")   # no pickle
"""

from .atomic import atomic_write
from .info import CheckpointDiff, CheckpointInfo, convert_checkpoint, diff_checkpoints, inspect_checkpoint
from .keys import find_state_dict, strip_wrappers
from .report import Cast, LoadReport, Mismatch
from .signing import sign_checkpoint, verify_checkpoint
from .weights import load_weights, read_weights, save_weights
from .whole import load_model, save_model

__all__ = [
    "save_weights",
    "load_weights",
    "read_weights",
    "save_model",
    "load_model",
    "LoadReport",
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
