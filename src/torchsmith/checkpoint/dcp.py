"""Distributed checkpoints (``torch.distributed.checkpoint``, DCP) read without running pickled code.

A DCP directory holds ``.metadata`` (a Python pickle describing every entry:
key, global shape, dtype, which file and bytes hold each shard) and one
``__<rank>_<n>.distcp`` file per writer. torch reads ``.metadata`` with plain
``pickle.load`` and non-tensor entries with ``torch.load(weights_only=False)``,
either of which runs whatever code the file names. Here:

- ``.metadata`` is unpickled by an unpickler that resolves only the classes
  DCP metadata is made of (``torch.distributed.checkpoint.metadata``,
  ``_StorageInfo``, ``torch.Size``, dtypes, layouts, ``pathlib`` paths);
  anything else raises :class:`UnsafeCheckpointError` naming it;
- tensors are read by torch's own reader (``torch.load(weights_only=True)``);
- non-tensor entries (optimizer hyper-parameters, scheduler state) go through
  ``torch.load(weights_only=True)`` as well: numbers, strings, lists, dicts.

``trusted=True`` restores torch's own, unrestricted behaviour.

    >>> import tempfile, torch
    >>> from torchsmith import convert_checkpoint, save_distributed
    >>> tmp = tempfile.mkdtemp()
    >>> _ = save_distributed(torch.nn.Linear(4, 2), None, f"{tmp}/dcp")
    >>> {k: tuple(v.shape) for k, v in read_dcp(f"{tmp}/dcp").items()}   # whole tensors, 'model.' dropped
    {'weight': (2, 4), 'bias': (2,)}
    >>> convert_checkpoint(f"{tmp}/dcp", f"{tmp}/model.safetensors").name
    'model.safetensors'
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from ..errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError
from .formats import DCP_METADATA_NAME, DCP_MODEL_KEY

__all__ = ["is_dcp", "DCPReader", "SafeLoadPlanner", "dcp_errors", "read_dcp"]

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def is_dcp(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory written by ``torch.distributed.checkpoint`` (it holds ``.metadata``)."""
    return Path(path).is_dir() and (Path(path) / DCP_METADATA_NAME).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only what DCP metadata is made of; refuses every other global without importing it."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.where} names {module}.{name}, which is not part of DCP metadata; unpickling it could run code. "
            f"If you trust the checkpoint, pass trusted=True (CLI: --trusted)."
        )


class DCPReader(FileSystemReader):
    """torch's ``FileSystemReader`` whose ``.metadata`` unpickling is restricted (unless ``trusted``)."""

    def __init__(self, path: str | os.PathLike, *, trusted: bool = False):
        path = Path(path)
        if not is_dcp(path):
            where = "does not exist" if not path.exists() else f"has no {DCP_METADATA_NAME} file"
            raise CheckpointError(
                f"{str(path)!r} is not a distributed checkpoint: it {where}. Pass the directory that "
                f"save_distributed() / torch.distributed.checkpoint.save() wrote."
            )
        super().__init__(path)
        self.trusted = trusted

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.trusted:
            return super().read_metadata(*args, **kwargs)
        path = Path(self.path) / DCP_METADATA_NAME
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f, repr(str(path))).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or garbage bytes
            raise CorruptCheckpointError(f"{str(path)!r} is not readable DCP metadata ({type(e).__name__}: {e}).") from e
        if not isinstance(metadata, Metadata):
            raise CorruptCheckpointError(f"{str(path)!r} holds a {type(metadata).__name__}, not DCP Metadata.")
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor entries are read with ``torch.load(weights_only=True)`` (plain data only) unless ``trusted``."""

    def __init__(self, *, trusted: bool = False, allow_partial_load: bool = False):
        super().__init__(allow_partial_load=allow_partial_load)
        self.trusted = trusted

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        if self.trusted:
            return super().load_bytes(read_item, value)
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            why = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "it names code")
            raise UnsafeCheckpointError(
                f"the distributed checkpoint entry {fqn!r} is a pickle that needs code to load ({why}). "
                f"If you trust the checkpoint, pass trusted=True."
            ) from e
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


@contextlib.contextmanager
def dcp_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn DCP's ``CheckpointException`` (a BaseException that wraps each rank's error) into a TorchsmithError.

    Our own errors raised inside DCP (an unsafe entry) come out as themselves; anything else (a truncated
    ``.distcp`` file, a rank that failed to read) becomes :class:`CorruptCheckpointError` naming the ranks.
    """
    try:
        yield
    except CheckpointException as e:
        errors = [failure[0] if isinstance(failure, tuple) else failure for failure in e.failures.values()]
        for err in errors:
            if isinstance(err, CheckpointError):
                raise err from e
        summary = "; ".join(f"rank {rank}: {type(err).__name__}: {err}" for rank, err in zip(e.failures, errors))
        raise CorruptCheckpointError(f"reading the distributed checkpoint {str(path)!r} failed ({summary}).") from e


def read_dcp(path: str | os.PathLike, *, key: str | None = DCP_MODEL_KEY, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a DCP checkpoint, each whole (shards from every rank joined), on the CPU.

    With ``key="model"`` (save_distributed's layout) only the entries under ``model.`` are read and the
    prefix is dropped; when the checkpoint has no such entries, or with ``key=None``, every tensor is read.
    Non-tensor entries are never read.

    Raises:
        CheckpointError: not a DCP directory, or it holds no tensors.
        UnsafeCheckpointError: ``.metadata`` names a global that is not DCP metadata.
    """
    reader = DCPReader(path, trusted=trusted)
    metadata = reader.read_metadata()
    tensors = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    prefix = f"{key}." if key else ""
    if prefix and any(k.startswith(prefix) for k in tensors):
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    else:
        prefix = ""
    if not tensors:
        raise CheckpointError(f"{str(path)!r} is a distributed checkpoint without tensors; there is nothing to convert.")
    sd = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in tensors.items()}
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    reader = DCPReader(path, trusted=trusted)  # a fresh reader: _load_state_dict reads the metadata itself
    with dcp_errors(path):
        _load_state_dict(sd, storage_reader=reader, planner=SafeLoadPlanner(trusted=trusted, allow_partial_load=True), no_dist=True)
    return {k[len(prefix) :]: v for k, v in sd.items()}
