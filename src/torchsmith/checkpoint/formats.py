"""The names checkpoint files use, in one place: dtypes, suffixes, file names and metadata keys.

Every module that needs a dtype name, decides a format by a file's suffix, names a file of a
checkpoint directory or a metadata key torchsmith writes reads it here; nothing here reads or
writes a file.

    >>> DTYPES["F8_E4M3"], DTYPE_NAMES[torch.bfloat16], dtype_name(torch.float16)
    (torch.float8_e4m3fn, 'BF16', 'float16')
    >>> format_for("model.tar"), format_for("model.safetensors"), format_for("model.weights")
    ('torch', 'safetensors', 'safetensors')
    >>> shard_names(Path("run/model.safetensors"), 3)
    ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']
    >>> index_path(Path("run/model.safetensors")).name, is_shard_of("model-00002-of-00003.safetensors", Path("run/model.safetensors.index.json"))
    ('model.safetensors.index.json', True)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = [
    "DTYPES", "DTYPE_NAMES", "TORCH_DTYPES", "dtype_name",
    "TORCH_SUFFIXES", "SAFETENSORS_SUFFIX", "INDEX_SUFFIX", "SIGNATURE_SUFFIX", "format_for",
    "CONFIG_NAME", "WEIGHTS_NAME", "SIGNATURE_NAME", "DCP_METADATA_NAME", "DIRECTORY_CANDIDATES",
    "shard_names", "index_path", "is_shard_of",
    "SAFETENSORS_METADATA_KEY", "RESERVED_PREFIX", "META_HASH", "META_CHECKSUMS", "META_ALIASES", "META_DIGEST",
    "META_INDEX_DIGEST", "TORCHSMITH_KEY", "DCP_MODEL_KEY", "DCP_OPTIM_KEY",
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
SIGNATURE_SUFFIX = ".sig"  # a single file's signature, next to it: model.safetensors.sig


def format_for(path: str | os.PathLike) -> str:
    """The format a path's suffix asks for: ``'torch'`` for the torch suffixes, else ``'safetensors'``."""
    return "torch" if Path(path).suffix.lower() in TORCH_SUFFIXES else "safetensors"


# file names

CONFIG_NAME = "config.json"  # save_model: how to build the model
WEIGHTS_NAME = "model.safetensors"  # save_model: its weights
SIGNATURE_NAME = "model.sig"  # sign_checkpoint: a directory's signature, inside it (left out of what is signed)
DCP_METADATA_NAME = ".metadata"  # torch.distributed.checkpoint's table of contents (a pickle)
# what a directory handed to load_weights / read_weights may hold, in the order they are looked for
DIRECTORY_CANDIDATES = (WEIGHTS_NAME + INDEX_SUFFIX, WEIGHTS_NAME, "pytorch_model.bin", "model.pt", "model.pth")


def shard_names(path: Path, count: int) -> list[str]:
    """The files a save of ``path`` split into ``count`` shards writes, next to it (the Hugging Face naming)."""
    stem = path.name.removesuffix(SAFETENSORS_SUFFIX)
    return [f"{stem}-{i:05d}-of-{count:05d}{SAFETENSORS_SUFFIX}" for i in range(1, count + 1)]


def index_path(path: Path) -> Path:
    """The index a sharded save of ``path`` writes: ``model.safetensors`` -> ``model.safetensors.index.json``."""
    return path.with_name(path.name + INDEX_SUFFIX)


def is_shard_of(name: str, index: Path) -> bool:
    """Whether the file ``name`` is named as a shard of the save whose index is ``index`` (any count)."""
    stem = index.name.removesuffix(SAFETENSORS_SUFFIX + INDEX_SUFFIX)
    return re.fullmatch(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(SAFETENSORS_SUFFIX), name) is not None


# metadata keys

SAFETENSORS_METADATA_KEY = "__metadata__"  # a safetensors header's string -> string table
RESERVED_PREFIX = "torchsmith."  # metadata keys torchsmith writes; refused in a user's metadata
META_HASH = "torchsmith.hash"  # the checksum algorithm
META_CHECKSUMS = "torchsmith.checksums"  # tensor name -> digest, as JSON
META_ALIASES = "torchsmith.aliases"  # tied tensors: new name -> stored name, as JSON
META_DIGEST = "torchsmith.metadata_xxh3-64"  # covers every other metadata entry (aliases, checksum table, user's)
META_INDEX_DIGEST = "torchsmith.index_xxh3-64"  # a shard index's: covers its weight map and aliases
TORCHSMITH_KEY = "torchsmith"  # a torch file's entry beside "state_dict": checksums and metadata
DCP_MODEL_KEY = "model"  # save_distributed's entries: the model's under "model.", the optimizer's under "optim."
DCP_OPTIM_KEY = "optim"
