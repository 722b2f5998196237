"""Opening any supported checkpoint as a uniform source of named tensors.

A source knows each key's shape and dtype before reading data, verifies
checksums, and reads a tensor into a destination. Supported: a safetensors
file, a sharded safetensors checkpoint (``*.index.json`` or its directory),
a torch file (read with ``weights_only=True``), and a ``save_model`` directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, CorruptCheckpointError
from . import _engine, safe_json
from ._tensor_checks import check_tensors
from .checksums import HASH_NAME, bytes_digest, checksum_error, is_digest
from .files import checked_path, open_regular, read_json_bytes, shown
from .formats import (
    DIRECTORY_CANDIDATES, DTYPES, INDEX_SUFFIX, META_ALIASES, META_INDEX_DIGEST, SAFETENSORS_SUFFIX, TORCHSMITH_KEY, format_for,
)
from .hub import is_hf_source, resolve_weights
from .keys import STATE_DICT_KEYS, find_state_dict
from .limits import enforce
from .safetensors_format import SafetensorsFile
from .torch_format import read_torch_file, tensor_digest

__all__ = ["open_source", "Source", "tensor_identity", "index_digest"]


def tensor_identity(t: torch.Tensor) -> tuple:
    """Equal for two tensors exactly when they are the same values in memory (tied weights).

    Two names for one tensor object, or two tensor objects viewing the same bytes with the same
    layout. Meta and empty tensors have no bytes to share: only the object itself counts.
    """
    if t.is_meta or t.numel() == 0:
        return ("object", id(t))
    return (t.device, t.data_ptr(), t.shape, t.stride(), t.dtype)  # data_ptr: the storage's, plus the offset


class Source:
    """Named tensors in a checkpoint; see :func:`open_source`."""

    path: Path
    format: str
    aliases: dict[str, str]
    metadata: dict[str, str]
    source_key: str | None = None
    other_keys: tuple[str, ...] = ()
    unlisted: list[str] = []  # tensors in a shard that the index does not list: never loaded
    module_metadata: dict | None = None  # a torch state dict's ``_metadata`` (module path -> {"version": n})

    def keys(self) -> list[str]:
        """Stored keys, then aliases."""
        return list(self._specs()) + list(self.aliases)

    def real(self, key: str) -> str:
        return self.aliases.get(key, key)

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._specs()[self.real(key)]

    @property
    def checksum_status(self) -> str:
        raise NotImplementedError

    def _specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        raise NotImplementedError

    def verify(self, keys: list[str]) -> int:
        """Check the recorded checksums of ``keys``; returns how many were checked."""
        raise NotImplementedError

    def read_many(self, items: list[tuple[str, torch.Tensor]], *, verify: bool) -> None:
        """Read each ``(key, dst)``: ``dst`` a contiguous CPU tensor of the stored dtype and shape.

        With ``verify``, checksums are checked as the data arrives; on a mismatch the
        destinations hold unchecked bytes, so only pass tensors the caller drops on error.
        """
        raise NotImplementedError

    def read(self, key: str, *, verify: bool) -> torch.Tensor:
        """A new CPU tensor holding ``key``."""
        shape, dtype = self.spec(key)
        t = torch.empty(shape, dtype=dtype)
        self.read_many([(key, t)], verify=verify)
        return t


class SafetensorsSource(Source):
    """One safetensors file, or the shards of an index."""

    def __init__(self, path: Path, files: list[SafetensorsFile], aliases: dict[str, str], metadata: dict[str, str], fmt: str):
        self.path, self.files, self.aliases, self.metadata, self.format = path, files, aliases, metadata, fmt
        self.where: dict[str, SafetensorsFile] = {}
        for st in files:
            twice = self.where.keys() & st.entries.keys()
            if twice:
                name = min(twice)
                raise CorruptCheckpointError(
                    f"{str(path)!r}: tensor {name!r} is stored in both {st.path.name!r} and {self.where[name].path.name!r}."
                )
            self.where.update(dict.fromkeys(st.entries, st))
        self._spec_table = {n: (en.shape, DTYPES[en.dtype]) for st in files for n, en in st.entries.items()}

    def _specs(self):
        return self._spec_table

    @property
    def checksum_status(self) -> str:
        return "present" if all(st.checksums is not None for st in self.files) else "absent"

    def verify(self, keys: list[str]) -> int:
        # every shard in one pass of the engine: the threads share the work across files
        aliases, where = self.aliases, self.where
        names = dict.fromkeys(aliases.get(k, k) for k in keys)
        return _engine.verify([where[k].spans[k] for k in names if where[k].checksums is not None])

    def read_many(self, items, *, verify):
        aliases, where = self.aliases, self.where
        _engine.read([(where[n].spans[n], dst) for k, dst in items for n in (aliases.get(k, k),)], verify=verify)

    def map_many(self, keys: list[str], *, verify: bool) -> list[torch.Tensor]:
        """CPU tensors for ``keys`` backed by a private mapping of their file (one per shard), checked first.

        A file rewritten or truncated in place while its tensors live can kill the process (SIGBUS).
        """
        aliases, where = self.aliases, self.where
        names = [aliases.get(k, k) for k in keys]
        files = {id(where[n]): where[n] for n in names}
        mappings = {i: st.mapping() for i, st in files.items()}
        if verify:
            memory = {st.fileno(): memoryview(mappings[i]) for i, st in files.items() if mappings[i] is not None}
            try:
                _engine.verify([where[n].spans[n] for n in dict.fromkeys(names) if where[n].checksums is not None], memory=memory)
            except BaseException:
                for view in memory.values():
                    view.release()
                for mapping in mappings.values():
                    if mapping is not None:
                        with contextlib.suppress(BufferError):  # a view still held: unmapped when collected
                            mapping.close()  # nothing of a refused file stays mapped
                raise
            for view in memory.values():
                view.release()
        return [where[n].mapped(n, mappings[id(where[n])]) for n in names]


class TensorSource(Source):
    """Tensors already in memory (a torch file, memory-mapped), with optional checksums."""

    def __init__(self, path: Path, tensors: Mapping[str, torch.Tensor], checksums: dict[str, str] | None, metadata, fmt="torch"):
        self.path, self.format, self.metadata = path, fmt, dict(metadata or {})
        self.tensors = dict(tensors)
        self.checksums = checksums
        self.aliases = {}
        first: dict[tuple, str] = {}
        for k, t in self.tensors.items():  # torch.save keeps a tied tensor once: so do we (aliases)
            ident = tensor_identity(t)
            if ident in first:
                self.aliases[k] = first[ident]
            else:
                first[ident] = k
        self._spec_table = {k: (tuple(t.shape), t.dtype) for k, t in self.tensors.items() if k not in self.aliases}

    def _specs(self):
        return self._spec_table

    @property
    def checksum_status(self) -> str:
        return "present" if self.checksums is not None else "absent"

    def verify(self, keys: list[str]) -> int:
        if self.checksums is None:
            return 0
        for k in keys:
            got = tensor_digest(self.tensors[k])
            if got != self.checksums[k]:
                raise checksum_error(self.path, k, self.checksums[k], got)
        return len(keys)

    def read_many(self, items, *, verify):
        if verify:
            self.verify([k for k, _ in items])
        for key, dst in items:
            dst.copy_(self.tensors[self.real(key)])


# opening


def _sniff(path: Path, inside: Path | None) -> str:
    """'safetensors' when a JSON header follows the 8-byte length; 'torch' for zip / pickle bytes or a torch suffix."""
    with open_regular(path, inside=inside) as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK") or head[:1] == b"\x80" or format_for(path) == "torch":
        return "torch"
    return "safetensors"


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """The file to read, and the directory it must stay inside (when a directory was given), or None."""
    path = checked_path(path)
    if not path.exists():
        what = "is a symbolic link that leads nowhere (dangling, or a loop of links)" if path.is_symlink() else "does not exist"
        raise CheckpointError(f"No checkpoint at {shown(path)}: the path {what} (working directory {os.getcwd()!r}). Check the path, or pass the directory save_model wrote.")
    if path.is_dir():
        for name in DIRECTORY_CANDIDATES:
            if (path / name).is_file():
                return path / name, path
        for pattern in (f"*{SAFETENSORS_SUFFIX}{INDEX_SUFFIX}", f"*{SAFETENSORS_SUFFIX}"):  # a sharded convert's folder
            singles = sorted(path.glob(pattern))
            if len(singles) == 1:
                return singles[0], path
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"No checkpoint found in directory {str(path)!r}: looked for {', '.join(DIRECTORY_CANDIDATES)}, "
            f"a single *{SAFETENSORS_SUFFIX}{INDEX_SUFFIX} or a single *{SAFETENSORS_SUFFIX}; found {found}. Pass the file itself."
        )
    return path, None


def _open_index(path: Path, inside: Path | None) -> SafetensorsSource:
    where = f"Sharded checkpoint index {str(path)!r}"
    try:
        index = safe_json.loads(read_json_bytes(path, inside=inside).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{where} is not readable JSON ({e}).") from e
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    meta = index.get("metadata") or {}
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()) or not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{where} must hold a 'weight_map' of tensor name -> shard file name.")
    enforce("max_tensors", len(wmap), f"{where} lists {len(wmap):,} tensors")
    files = []
    for shard in dict.fromkeys(wmap.values()):
        shard_path = path.parent / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise CorruptCheckpointError(f"{where} names shard {shard!r}, which is not a file next to the index.")
        files.append(SafetensorsFile(shard_path, inside=path.parent))
    if any(st.checksums is not None for st in files) or META_INDEX_DIGEST in meta:  # torchsmith wrote it
        recorded, got = meta.get(META_INDEX_DIGEST), index_digest(index)
        if recorded != got:
            raise CorruptCheckpointError(
                f"{where}: its weight map and metadata (aliases) do not match their checksum (recorded {recorded}, "
                f"hashes to {got}): the index was damaged or edited. Restore it, or save the weights again."
            )
    src = SafetensorsSource(path, files, {}, {k: str(v) for k, v in meta.items()}, "safetensors-sharded")
    stored = set(src.where)
    problems = sorted(k for k, v in wmap.items() if k not in stored or src.where[k].path.name != v)
    if problems:
        raise CorruptCheckpointError(f"{where} maps tensors its shards do not hold as stated: {problems[:5]}.")
    src.unlisted = sorted(stored - set(wmap))  # only what the index lists is loaded
    for name in src.unlisted:
        del src.where[name], src._spec_table[name]
    stored = set(wmap)
    aliases = meta.get(META_ALIASES, {})
    if isinstance(aliases, str):
        try:
            aliases = safe_json.loads(aliases)
        except ValueError as e:
            raise CorruptCheckpointError(f"{where}: torchsmith.aliases is not valid JSON ({e}).") from e
    if not isinstance(aliases, dict) or not all(
        isinstance(t, str) and t in stored and a not in stored for a, t in aliases.items()
    ):
        raise CorruptCheckpointError(f"{where}: torchsmith.aliases must map new names to stored tensors.")
    src.aliases = dict(aliases)
    return src


def index_digest(index: dict) -> str:
    """The checksum of a shard index: its weight map and metadata (all but the digest itself), as canonical JSON."""
    meta = {k: v for k, v in (index.get("metadata") or {}).items() if k != META_INDEX_DIGEST}
    return bytes_digest(json.dumps({"metadata": meta, "weight_map": index.get("weight_map")}, sort_keys=True, separators=(",", ":")).encode())


def _open_torch(path: Path, trusted: bool, inside: Path | None) -> TensorSource:
    obj = read_torch_file(path, trusted=trusted, inside=inside)
    info = obj.get(TORCHSMITH_KEY) if isinstance(obj, dict) else None
    try:
        if isinstance(obj, dict):  # keys are checked before anything turns them into strings
            for inner in [obj] + [obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)]:
                check_tensors(path, inner, file_size=path.stat().st_size)
        tensors, source_key, others = find_state_dict(obj, repr(str(path)))
        check_tensors(path, tensors, file_size=path.stat().st_size)
    except RecursionError as e:
        raise CorruptCheckpointError(f"{str(path)!r} holds objects nested too deeply to read as weights.") from e
    checksums = metadata = None
    if isinstance(info, dict) and source_key == "state_dict":
        checksums = info.get("checksums")
        metadata = info.get("metadata")
        if isinstance(checksums, str):  # write_torch_file stores JSON; a dict is read too
            try:
                checksums = safe_json.loads(checksums)
            except ValueError as e:
                raise CorruptCheckpointError(f"{str(path)!r}: the torchsmith checksum table is not valid JSON ({e}).") from e
        if (
            info.get("hash") != HASH_NAME
            or not isinstance(checksums, dict)
            or set(checksums) != set(tensors)
            or not all(is_digest(v) for v in checksums.values())
        ):
            raise CorruptCheckpointError(
                f"{str(path)!r}: the torchsmith checksum table does not match its tensors (damaged or edited file)."
            )
        if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise CorruptCheckpointError(f"{str(path)!r}: the torchsmith metadata must map strings to strings (damaged or edited file).")
        source_key, others = None, []
    src = TensorSource(path, tensors, checksums, metadata)
    src.source_key, src.other_keys = source_key, tuple(others)
    inner = obj.get(source_key or STATE_DICT_KEYS[0]) if isinstance(obj, dict) and (source_key or TORCHSMITH_KEY in obj) else obj
    found = getattr(inner, "_metadata", None)  # the versions load_state_dict's upgrades read (BatchNorm's is 2)
    src.module_metadata = found if isinstance(found, Mapping) else None
    return src


def open_source(path: str | os.PathLike, *, trusted: bool = False) -> Source:
    """The checkpoint at ``path`` (file, index or directory; an ``hf://`` source is first resolved to files of
    the Hugging Face cache, see :mod:`~torchsmith.checkpoint.hub`), its header validated, no data read yet.

    Raises:
        CheckpointError: no checkpoint there; CorruptCheckpointError: damaged header or index;
        UnsafeCheckpointError: a pickle that needs code to load.
    """
    if isinstance(path, Source):  # already open (load_model hands over the file it checked)
        return path
    if is_hf_source(path):
        path = resolve_weights(path)
    path, inside = _resolve(Path(path))  # a reader never deletes: a temporary may be another host's save in progress
    if path.name.endswith(INDEX_SUFFIX):
        return _open_index(path, inside)
    try:
        kind = _sniff(path, inside)
    except OSError as e:
        raise CheckpointError(f"Cannot read {str(path)!r}: {e}") from e
    if kind == "torch":
        return _open_torch(path, trusted, inside)
    st = SafetensorsFile(path, inside=inside)
    return SafetensorsSource(path, [st], dict(st.aliases), dict(st.metadata), "safetensors")
