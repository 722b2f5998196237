"""The names checkpoint files use, in one place: dtypes and file suffixes.

Every module of the package that needs a dtype name or decides a format by a
file's suffix reads these tables; nothing here reads or writes a file.

    >>> DTYPES["F8_E4M3"], DTYPE_NAMES[torch.bfloat16], dtype_name(torch.float16)
    (torch.float8_e4m3fn, 'BF16', 'float16')
    >>> format_for("model.tar"), format_for("model.safetensors"), format_for("model.weights")
    ('torch', 'safetensors', 'safetensors')
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "DTYPES", "DTYPE_NAMES", "TORCH_DTYPES", "dtype_name",
    "TORCH_SUFFIXES", "SAFETENSORS_SUFFIX", "INDEX_SUFFIX", "format_for",
]

# dtypes

# the safetensors format's dtype names -> torch dtypes (the names the `safetensors` package writes and reads);
# a dtype this torch lacks (float8_e8m0fnu before 2.7) is left out
_SAFETENSORS_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
DTYPES: dict[str, torch.dtype] = {
    st: getattr(torch, name) for st, name in _SAFETENSORS_NAMES.items() if isinstance(getattr(torch, name, None), torch.dtype)
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
TORCH_DTYPES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in DTYPES.values()}  # "float32" -> dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch's own short name: ``torch.float16`` -> ``'float16'``."""
    return str(dtype).removeprefix("torch.")


# suffixes

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")  # torch.save files, read and written as such
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's index: model.safetensors.index.json


def format_for(path: str | os.PathLike) -> str:
    """The format a path's suffix asks for: ``'torch'`` for the torch suffixes, else ``'safetensors'``."""
    return "torch" if Path(path).suffix.lower() in TORCH_SUFFIXES else "safetensors"
