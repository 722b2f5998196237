"""Checking a distributed checkpoint's ``.metadata`` against its directory, before any data is read.

``.metadata`` says which bytes of which file hold each piece (chunk) of each tensor. torch trusts it:
a ``relative_path`` that is absolute or climbs with ``..`` is read wherever it points, a tensor
larger than its chunks keeps ``torch.empty``'s garbage where no chunk lands, and every size goes
straight into an allocation. :func:`check_layout` refuses all of that, collecting every problem:

- every piece is stored in a plain file name of the directory, a regular file that stays inside it
  (``files.open_regular``), at a byte range inside the file, no two pieces sharing bytes, each range
  at least as long as the chunk's data: so a load allocates at most what the files hold;
- every tensor has a known dtype and a shape of non-negative integers, and its chunks lie inside it
  and tile it exactly (no gap, no overlap);
- entries are bounded by ``Limits.max_dcp_entries``; stored transforms (``stream.zstd``
  compression, whose inflated size nothing bounds) are refused unless the checkpoint is trusted.

    >>> import tempfile, torch
    >>> from torchsmith import save_distributed
    >>> from torchsmith.checkpoint.dcp import DCPReader
    >>> directory = save_distributed(torch.nn.Linear(4, 2), None, f"{tempfile.mkdtemp()}/dcp")
    >>> metadata = DCPReader(directory).read_metadata()      # checked as it is read
    >>> metadata.state_dict_metadata["model.weight"].chunks[0].sizes
    torch.Size([2, 4])
    >>> metadata.storage_data[next(iter(metadata.storage_data))].relative_path = "../elsewhere/__0_0.distcp"
    >>> check_layout(metadata, directory)
    Traceback (most recent call last):
    ...
    torchsmith.errors.CorruptCheckpointError: ...: model.weight (chunk at (0, 0)) is stored in '../elsewhere/__0_0.distcp', which is not a file name in the checkpoint directory ...
"""

from __future__ import annotations

import bisect
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, CorruptCheckpointError
from .files import open_regular
from .formats import DCP_METADATA_NAME, DTYPE_NAMES
from .limits import enforce

__all__ = ["check_layout", "plain_file_name"]

MAX_DIMS = 64  # what a torch tensor can have
MAX_GRID_CELLS = 2**24  # the finest grid the chunks of one tensor may cut it into (a grid of N chunks has N cells)
_SHOWN = 8


def plain_file_name(name: Any) -> bool:
    """True for a ``str`` naming a file directly in a directory: no separator, not ``.`` or ``..``, no NUL."""
    return type(name) is str and name not in ("", ".", "..") and "/" not in name and "\x00" not in name and len(name.encode("utf-8", "surrogatepass")) <= 255


def _ints(value: Any, dims: int | None = None) -> tuple[int, ...] | None:
    """``value`` as a tuple of non-negative ints (a ``torch.Size`` or tuple), or None."""
    if not isinstance(value, (tuple, list)) or (dims is not None and len(value) != dims) or len(value) > MAX_DIMS:
        return None
    if not all(type(v) is int and v >= 0 for v in value):
        return None
    return tuple(value)


def check_layout(metadata: Any, directory: str | os.PathLike, *, trusted: bool = False) -> None:
    """Refuse DCP metadata whose pieces leave the directory, its files, or their tensors (see the module docstring).

    Raises:
        CorruptCheckpointError: listing the problems found (the first few, and how many in all).
        CheckpointError: a data file is not a regular file (a FIFO, a device), or cannot be opened.
    """
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata, ChunkStorageMetadata, MetadataIndex, StorageMeta, TensorProperties, TensorStorageMetadata,
    )

    directory = Path(directory)
    where = repr(str(directory / DCP_METADATA_NAME))
    entries, storage = getattr(metadata, "state_dict_metadata", None), getattr(metadata, "storage_data", None)
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise CorruptCheckpointError(
            f"{where}: state_dict_metadata and storage_data must be dicts, found a {type(entries).__name__} and a "
            f"{type(storage).__name__}. The metadata is damaged or hostile."
        )
    enforce("max_dcp_entries", max(len(entries), len(storage)), f"{where} lists {max(len(entries), len(storage)):,} entries")
    if not (getattr(metadata, "storage_meta", None) is None or isinstance(metadata.storage_meta, StorageMeta)):
        raise CorruptCheckpointError(f"{where}: storage_meta is a {type(metadata.storage_meta).__name__}, not StorageMeta.")
    problems: list[str] = []

    # where each piece is stored
    ranges: dict[str, list[tuple[int, int, str]]] = defaultdict(list)  # file -> (offset, end, what)
    lengths: dict[Any, int] = {}  # storage key -> bytes stored
    for key, info in storage.items():
        what = _describe(key)
        if not isinstance(key, MetadataIndex) or not isinstance(info, _StorageInfo):
            problems.append(f"storage entry {what} is a {type(info).__name__} under a {type(key).__name__}")
            continue
        name, offset, length = info.relative_path, info.offset, info.length
        if not plain_file_name(name):
            problems.append(
                f"{what} is stored in {name!r}, which is not a file name in the checkpoint directory "
                f"(absolute, with a separator or '..', or not a string)"
            )
            continue
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            problems.append(f"{what} is stored at offset {offset!r}, length {length!r}: expected non-negative integers")
            continue
        if info.transform_descriptors and not trusted:
            problems.append(
                f"{what} is stored transformed ({list(info.transform_descriptors)[:3]}, e.g. compressed): its inflated "
                f"size is not bounded, so torchsmith reads it only with trusted=True"
            )
            continue
        ranges[name].append((offset, offset + length, what))
        lengths[key] = length
    if not problems:
        problems += _check_files(directory, ranges)

    # what each tensor holds
    chunks = 0
    for fqn, entry in entries.items():
        chunks += len(entry.chunks) if isinstance(entry, TensorStorageMetadata) and isinstance(entry.chunks, list) else 0
        enforce("max_dcp_entries", chunks, f"{where} lists at least {chunks:,} tensor chunks")
        if type(fqn) is not str:
            problems.append(f"entry {fqn!r} is named by a {type(fqn).__name__}, not a string")
        elif isinstance(entry, BytesStorageMetadata):
            if MetadataIndex(fqn) not in storage:
                problems.append(f"{fqn} has no storage entry")
        elif not isinstance(entry, TensorStorageMetadata):
            problems.append(f"{fqn} is described by a {type(entry).__name__}, not tensor or bytes metadata")
        else:
            problems += _check_tensor(fqn, entry, storage, lengths, TensorProperties, ChunkStorageMetadata, MetadataIndex, trusted)
    if problems:
        shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
        raise CorruptCheckpointError(
            f"{where}: {shown}. The distributed checkpoint is damaged or hostile; nothing was read from it."
        )


def _describe(key: Any) -> str:
    fqn, offset = getattr(key, "fqn", key), getattr(key, "offset", None)
    return f"{fqn}" + (f" (chunk at {tuple(offset)})" if isinstance(offset, tuple) else "")


def _check_files(directory: Path, ranges: dict[str, list[tuple[int, int, str]]]) -> list[str]:
    """Each file a regular file inside ``directory``, every range inside it, no two ranges overlapping."""
    problems = []
    for name, spans in ranges.items():
        try:
            with open_regular(directory / name, inside=directory) as f:
                size = os.fstat(f.fileno()).st_size
        except CheckpointError as e:
            problems.append(f"{name!r}: {e}")
            continue
        spans.sort()
        for (start, end, what), (next_start, _, other) in zip(spans, spans[1:] + [(size, size, "the end of the file")]):
            if end > size:
                problems.append(f"{what} is stored at bytes {start:,}-{end:,} of {name!r}, which has {size:,}")
            elif end > next_start and next_start < size:
                problems.append(f"{what} and {other} share bytes of {name!r} (from byte {next_start:,})")
    return problems


def _check_tensor(fqn, entry, storage, lengths, TensorProperties, ChunkStorageMetadata, MetadataIndex, trusted: bool) -> list[str]:
    """The dtype, shape and chunks of one tensor entry: every problem, as ``fqn: ...`` sentences."""
    props = getattr(entry, "properties", None)
    dtype = getattr(props, "dtype", None)
    if not isinstance(props, TensorProperties) or not isinstance(dtype, torch.dtype) or dtype not in DTYPE_NAMES:
        return [f"{fqn} has dtype {dtype!r}, not one torchsmith reads"]
    size = _ints(entry.size)
    if size is None:
        return [f"{fqn} has shape {entry.size!r}: expected up to {MAX_DIMS} non-negative integers"]
    chunks = entry.chunks
    if not isinstance(chunks, list) or not all(isinstance(c, ChunkStorageMetadata) for c in chunks):
        return [f"{fqn}: its chunks are not a list of chunk metadata"]
    itemsize = torch.empty((), dtype=dtype).element_size()
    boxes, problems = [], []
    for chunk in chunks:
        offsets, sizes = _ints(chunk.offsets, len(size)), _ints(chunk.sizes, len(size))
        if offsets is None or sizes is None:
            problems.append(f"{fqn} has a chunk at {chunk.offsets!r} of {chunk.sizes!r}: not {len(size)} non-negative integers each")
            continue
        if any(o + s > d for o, s, d in zip(offsets, sizes, size)):
            problems.append(f"{fqn} has a chunk at {offsets} of {sizes}, outside its shape {size}")
            continue
        key = MetadataIndex(fqn, offsets)
        if key not in storage:
            problems.append(f"{fqn} has a chunk at {offsets} with no storage entry")
            continue
        need = math.prod(sizes) * itemsize
        if key in lengths and lengths[key] < need and not (trusted and storage[key].transform_descriptors):
            problems.append(f"{fqn}'s chunk at {offsets} needs {need:,} bytes but {lengths[key]:,} are stored")
            continue
        if all(s > 0 for s in sizes):  # an empty chunk holds nothing
            boxes.append((offsets, sizes))
    if not problems:
        gap = _tiling_problem(size, boxes)
        if gap:
            problems.append(f"{fqn} of shape {size}: {gap}")
    return problems


def _tiling_problem(size: tuple[int, ...], boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    """Why ``boxes`` (offsets, sizes) do not tile ``size`` exactly, or ``""``.

    The chunks' edges cut the tensor into a grid of cells (as many cells as chunks when they form a
    grid, as sharding makes them); every cell must be covered exactly once.
    """
    numel = math.prod(size)
    covered = sum(math.prod(s) for _, s in boxes)
    if covered != numel:
        return f"its chunks hold {covered:,} values, it has {numel:,} ({'a gap' if covered < numel else 'chunks overlap'})"
    if len(boxes) <= 1:
        return ""
    cuts = [sorted({0, dim, *(o[d] for o, _ in boxes), *(o[d] + s[d] for o, s in boxes)}) for d, dim in enumerate(size)]
    cells = math.prod(len(c) - 1 for c in cuts)
    spans = [[(bisect.bisect_left(cuts[d], o[d]), bisect.bisect_left(cuts[d], o[d] + s[d])) for d in range(len(size))] for o, s in boxes]
    if sum(math.prod(b - a for a, b in span) for span in spans) != cells:
        return "its chunks overlap and leave a gap"
    if cells > MAX_GRID_CELLS:
        return f"its {len(boxes):,} chunks cut it into {cells:,} pieces, too irregular to check (at most {MAX_GRID_CELLS:,})"
    grid = torch.zeros([len(c) - 1 for c in cuts], dtype=torch.uint8)
    for span in spans:
        grid[tuple(slice(a, b) for a, b in span)] += 1
    return "" if bool((grid == 1).all()) else "its chunks overlap and leave a gap"
