"""Distributed checkpoints (``torch.distributed.checkpoint``, DCP) read without running pickled code.

A DCP directory holds ``.metadata`` (a Python pickle describing every entry:
key, global shape, dtype, which file and bytes hold each shard) and one
``__<rank>_<n>.distcp`` file per writer. torch reads ``.metadata`` with plain
``pickle.load`` and non-tensor entries with ``torch.load(weights_only=False)``,
either of which runs whatever code the file names. Here:

- ``.metadata`` is read like every checkpoint file (a regular file inside the
  directory), bounded by ``Limits.max_dcp_entries``, its memory estimated
  before it is unpickled (``pickle_budget``), and unpickled by an unpickler
  that resolves only the classes DCP metadata is made of
  (``torch.distributed.checkpoint.metadata``, ``_StorageInfo``, ``torch.Size``,
  dtypes, layouts, ``pathlib`` paths); anything else raises
  :class:`UnsafeCheckpointError` naming it;
- it is then checked against the directory (``dcp_layout.check_layout``):
  pieces stored in plain file names inside it, at byte ranges inside their
  files, tiling each tensor exactly; so a load allocates at most what the
  files hold and every value comes from this checkpoint;
- tensors are read by torch's own reader (``torch.load(weights_only=True)``)
  from data files opened as regular files inside the directory, each stored
  entry checked first (no compressed zip records, torchsmith's allow-list);
- non-tensor entries (optimizer hyper-parameters, scheduler state) go through
  ``torch.load(weights_only=True)`` as well: numbers, strings, lists, dicts.

``trusted=True`` unpickles ``.metadata`` and entries as torch does (code may
run); the layout is checked all the same.

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
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from ..errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError
from .files import checked_path, open_regular
from .formats import DCP_METADATA_NAME, DCP_MODEL_KEY
from .limits import DCP_ENTRY_BYTES, current, enforce, how_to_raise
from .pickle_budget import unpickled_bytes
from .torch_format import check_zip_records, own_allowed, pickle_globals

__all__ = ["is_dcp", "DCPReader", "SafeLoadPlanner", "check_blob", "dcp_errors", "read_dcp"]

DCP_FILE_BYTES_PER_ENTRY = 1024  # .metadata may hold this many bytes per entry allowed (torch writes about 250)
SMALL_ENTRY_BYTES = 1 << 20

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
    try:
        return Path(path).is_dir() and (Path(path) / DCP_METADATA_NAME).is_file()
    except (OSError, ValueError):  # a name too long, a NUL in it
        return False


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


class _Slice(io.RawIOBase):
    """Bytes ``offset`` to ``offset + length`` of ``base``, as a seekable file of its own (torch's own view
    miscounts ``seek(-n, SEEK_END)``, which zipfile needs)."""

    def __init__(self, base, offset: int, length: int):
        super().__init__()
        self.base, self.offset, self.length, self.pos = base, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.pos)
        if n <= 0:
            return 0
        self.base.seek(self.offset + self.pos)
        got = self.base.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got


class _ContainedFileSystem(FileSystem):
    """Data files opened as every checkpoint file is: regular files only, inside the directory."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "rb":
            raise CheckpointError(f"the distributed checkpoint {str(self.root)!r} is opened for reading only.")
        with io.BufferedReader(open_regular(path, inside=self.root)) as f:
            yield f


def check_blob(blob, size: int, *, entry: str, location: str) -> None:
    """A stored entry (a ``torch.save`` zip) read as weights only: no compressed or oversized record, small
    records matching their CRC-32, and a pickle naming only what torchsmith's allow-list holds.

    ``entry`` and ``location`` name it in messages (``the distributed checkpoint entry 'fc.weight'``,
    ``'/ckpt/__0_0.distcp', bytes 0-1,577``).
    """
    pickles = check_zip_records(blob, f"{entry} ({location})", size=size)
    strangers = [g for p in pickles for g in pickle_globals(p) if not own_allowed(g)]
    if strangers:
        raise UnsafeCheckpointError(
            f"{entry} is a pickle that wants to import {', '.join(dict.fromkeys(strangers))} while loading ({location}); "
            f"torchsmith never runs code from a checkpoint. If you trust the checkpoint, pass trusted=True (CLI: --trusted)."
        )


class DCPReader(FileSystemReader):
    """torch's ``FileSystemReader``, reading ``.metadata`` and the data files as every checkpoint is read.

    ``.metadata`` is bounded (``Limits.max_dcp_entries``), estimated before it is unpickled
    (:mod:`~torchsmith.checkpoint.pickle_budget`), unpickled with only DCP's classes (unless
    ``trusted``), and checked against the directory (:func:`~torchsmith.checkpoint.dcp_layout.check_layout`);
    data files are regular files inside the directory, and each stored entry is checked before torch
    unpickles it. The metadata is read once per reader.
    """

    def __init__(self, path: str | os.PathLike, *, trusted: bool = False):
        path = checked_path(path)
        if not is_dcp(path):
            where = "does not exist" if not path.exists() else f"has no {DCP_METADATA_NAME} file"
            raise CheckpointError(
                f"{str(path)!r} is not a distributed checkpoint: it {where}. Pass the directory that "
                f"save_distributed() / torch.distributed.checkpoint.save() wrote."
            )
        super().__init__(path)
        self.fs = _ContainedFileSystem(path)
        self.trusted = trusted
        self._metadata: Metadata | None = None
        self._stored: dict[tuple[str, int], str] = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self._metadata is None:
            self._metadata = self._read_checked()
        if getattr(self._metadata, "storage_meta", None) is not None:
            self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def _read_checked(self) -> Metadata:
        from .dcp_layout import check_layout

        path = Path(self.path) / DCP_METADATA_NAME
        where = repr(str(path))
        bounds = current()
        with open_regular(path, inside=self.path) as f:
            size = os.fstat(f.fileno()).st_size
            enforce("max_dcp_entries", size // DCP_FILE_BYTES_PER_ENTRY, f"{where} is {size:,} bytes, room for about {size // DCP_FILE_BYTES_PER_ENTRY:,} entries ({DCP_FILE_BYTES_PER_ENTRY} bytes each)")
            data = f.read(size + 1)
        if len(data) > size:
            raise CorruptCheckpointError(f"{where} grew while it was read; read the checkpoint once it is complete.")
        if not self.trusted:
            budget = bounds.max_dcp_entries * DCP_ENTRY_BYTES
            try:
                unpickled_bytes(data, budget=budget, where=f"{where} is not readable DCP metadata: it")  # '... it uses the opcode ...'
            except CorruptCheckpointError as e:
                if "bytes to unpickle" in str(e):  # the estimate passed the bound: say which, and how to raise it
                    raise CorruptCheckpointError(f"{e} {how_to_raise('max_dcp_entries')}") from None
                raise
        try:
            unpickler = pickle.Unpickler(io.BytesIO(data)) if self.trusted else _MetadataUnpickler(io.BytesIO(data), where)
            metadata = unpickler.load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or garbage bytes, a class refusing its state
            raise CorruptCheckpointError(f"{where} is not readable DCP metadata ({type(e).__name__}: {e}).") from e
        if not isinstance(metadata, Metadata):
            raise CorruptCheckpointError(f"{where} holds a {type(metadata).__name__}, not DCP Metadata.")
        check_layout(metadata, self.path, trusted=self.trusted)
        self._stored = {(info.relative_path, info.offset): key.fqn for key, info in metadata.storage_data.items()}  # for messages
        return metadata

    def _slice_file(self, file, sinfo) -> io.IOBase:
        view = _Slice(file, sinfo.offset, sinfo.length)
        if sinfo.length <= SMALL_ENTRY_BYTES:  # read at once: zipfile and torch.load make many small reads
            view = io.BytesIO(view.read())
        if not self.trusted:
            fqn = self._stored.get((sinfo.relative_path, sinfo.offset), "?")
            location = f"{str(Path(self.path) / sinfo.relative_path)!r}, bytes {sinfo.offset:,}-{sinfo.offset + sinfo.length:,}"
            check_blob(view, sinfo.length, entry=f"the distributed checkpoint entry {fqn!r}", location=location)
        return view


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
    sd = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in tensors.items()}  # sizes checked: files hold them
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    with dcp_errors(path):  # the same reader: the metadata it checked is the one the load plans from
        _load_state_dict(sd, storage_reader=reader, planner=SafeLoadPlanner(trusted=trusted, allow_partial_load=True), no_dist=True)
    return {k[len(prefix) :]: v for k, v in sd.items()}
