"""Checking the tensors a torch file unpickled, before any of them is used.

``torch.load(weights_only=True)`` returns whatever tensors the pickle describes: on the meta device,
sparse, quantized, nested, of dtypes no other format stores, under non-string keys, or expanded
views whose few stored bytes stand for gigabytes. Every one is checked here (all problems
collected), so a load either refuses the file with a ``CheckpointError`` before writing anything,
or reads only plain strided CPU tensors of bounded size.

    >>> check_tensors(Path("w.pt"), {"w": torch.ones(2)}, file_size=1000)   # fine: returns None
    >>> check_tensors(Path("w.pt"), {"w": torch.empty(2, device="meta")}, file_size=1000)
    Traceback (most recent call last):
    ...
    torchsmith.errors.CheckpointError: Cannot load 'w.pt': 'w' is on the meta device (no data). ...
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, CorruptCheckpointError
from .formats import DTYPE_NAMES
from .limits import current, how_to_raise

__all__ = ["check_tensors", "SLACK_BYTES"]

# a torch file's tensors may hold at most Limits.max_expansion x the file's size (plus SLACK_BYTES): tied
# and sliced views share storage, but a load never turns a small file into a huge allocation
SLACK_BYTES = 16 * 2**20


def _problem(key: object, t: object) -> str | None:
    if not isinstance(t, torch.Tensor):
        return None  # not a weight (dropped by find_state_dict)
    if not isinstance(key, str):
        return f"key {type(key).__name__} {repr(key)[:40]} is not a string"
    if t.is_nested:
        return f"{key!r} is a nested tensor"
    if t.is_quantized:
        return f"{key!r} is a quantized tensor ({t.dtype})"
    if t.layout != torch.strided:
        return f"{key!r} has layout {t.layout} (only dense tensors are weights)"
    if t.device.type != "cpu":
        return f"{key!r} is on the {t.device.type} device (no data)" if t.is_meta else f"{key!r} is on {t.device}"
    if t.dtype not in DTYPE_NAMES:
        return f"{key!r} has dtype {str(t.dtype).removeprefix('torch.')}, which torchsmith does not read"
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        return f"{key!r} is an expanded view: {t.numel():,} values over {t.untyped_storage().nbytes():,} stored bytes"
    return None


def check_tensors(path: Path, tensors: Mapping, *, file_size: int) -> None:
    """Refuse tensors torchsmith cannot load safely (see the module docstring).

    Raises:
        CheckpointError: naming every offending key and what is wrong with it.
        CorruptCheckpointError: the tensors would need more than ``Limits.max_expansion`` x the file's size.
    """
    problems = [p for k, t in tensors.items() if (p := _problem(k, t))]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(
            f"Cannot load {str(path)!r}: {shown}. torchsmith loads dense CPU tensors of the dtypes safetensors "
            f"stores, under string keys; nothing was loaded. Convert these tensors in Python (dequantize, "
            f"to_dense, .contiguous(), a supported dtype) and save them again."
        )
    seen, total = set(), 0
    for t in tensors.values():
        if isinstance(t, torch.Tensor):
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if ident not in seen:
                seen.add(ident)
                total += t.numel() * t.element_size()
    expansion = current().max_expansion
    if total > expansion * file_size + SLACK_BYTES:
        raise CorruptCheckpointError(
            f"{str(path)!r} is {file_size:,} bytes but its tensors would take {total:,} bytes to load, over "
            f"{expansion:g} x the file size + {SLACK_BYTES:,} bytes (views of one storage repeated?). Nothing was "
            f"loaded. {how_to_raise('max_expansion', needed=-(-(total - SLACK_BYTES) // max(file_size, 1)))}"
        )
