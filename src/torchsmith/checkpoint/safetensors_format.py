"""The safetensors format, read and written by hand.

Layout: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}``),
then the data; offsets are relative to the start of the data. Reading parses
and validates the whole header (collecting every problem) before any data is
touched; the data itself is read and verified by ``_engine`` (``preadv``
straight into each destination, checksums hashed from a small buffer per thread), or, opt-in
(``mapping`` / ``mapped``: ``load_model(mmap=True)``), viewed through a private mapping of the file.
"""

from __future__ import annotations

import functools
import json
import mmap
import operator
import os
import weakref
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from pathlib import Path

import torch

from ..errors import CorruptCheckpointError
from . import _engine, safe_json
from ._gc import gc_paused
from .checksums import HASH_NAME, PLACEHOLDER, bytes_digest, is_digest, tensor_hasher
from .files import open_regular
from .formats import DTYPE_NAMES, DTYPES, META_ALIASES, META_CHECKSUMS, META_DIGEST, META_HASH, SAFETENSORS_METADATA_KEY
from .limits import current, enforce

__all__ = ["SafetensorsFile", "write_safetensors", "metadata_digest", "byte_view"]

MAX_DIMS = 64  # torch's own limit on dimensions

_ITEMSIZE = {k: v.itemsize for k, v in DTYPES.items()}
_FIELDS = {"dtype", "shape", "data_offsets"}
_BY_POSITION = operator.itemgetter(3, 4)  # Entry (begin, end)


class Entry(NamedTuple):
    """One tensor in the header: dtype name, shape and absolute byte range in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


# helpers


def byte_view(t: torch.Tensor):
    """A writable numpy uint8 view of a contiguous CPU tensor's bytes (any dtype)."""
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen = dict(pairs)
    if len(seen) != len(pairs):  # rare: find the first duplicate to name it
        first: set = set()
        for k, _ in pairs:
            if k in first:
                raise ValueError(f"duplicate key {k!r}")
            first.add(k)
    return seen


def _problems_text(problems: list[str], limit: int = 10) -> str:
    shown = "; ".join(problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more


class SafetensorsFile:
    """A validated safetensors file: ``entries`` (name -> Entry), ``metadata``, checksums.

    Opening reads only the header; every problem found in it is collected and
    raised together as one :class:`CorruptCheckpointError` naming the file.
    The file stays open until the object is collected (or ``close()``): data is
    always read from the file the header came from, even if the path is
    replaced by a concurrent save in the meantime.

    Example::

        >>> _ = save_weights(create_model("resnet18", num_classes=10), "model.safetensors")
        >>> st = SafetensorsFile("model.safetensors")
        >>> st.entries["fc.weight"].shape, st.checksum_status
        ((10, 512), 'present')
        >>> st.read("fc.weight").shape
        torch.Size([10, 512])
    """

    def __init__(self, path: str | os.PathLike, *, inside: str | os.PathLike | None = None):
        self.path = Path(path)
        # one open file for the object's life: a concurrent save replaces the path, never this file;
        # a regular file only, and inside ``inside`` (the directory or index that named it)
        self._file = open_regular(self.path, inside=inside)
        self.close = weakref.finalize(self, self._file.close)
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> None:
        f = self._file
        try:
            self.size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            max_header = current().max_header_bytes
            if 0 <= n <= min(max_header, self.size - 8):
                raw = f.read(n)
        except OSError as e:
            raise CorruptCheckpointError(f"Cannot read {str(self.path)!r}: {e}") from e
        where = f"{str(self.path)!r} is not a valid safetensors file"
        if n < 0:
            raise CorruptCheckpointError(f"{where}: it is {self.size} bytes, shorter than the 8-byte header length.")
        enforce("max_header_bytes", n, f"{where}: its header is {n:,} bytes")
        if n > self.size - 8:
            raise CorruptCheckpointError(
                f"{where}: header length {n} runs past the end of the {self.size}-byte file (truncated?)."
            )
        listed = raw.count(b'"data_offsets"')  # one per entry: refused before parsing 100 MB of JSON
        enforce("max_tensors", listed, f"{where}: its header lists {listed:,} tensors")
        self.header_bytes = raw
        self.data_start = 8 + n
        with gc_paused():  # a header parse makes one small dict per tensor: no cycles, nothing for the GC to find
            self.entries, self.metadata = self._parse(raw, where)
        self.checksums, self.aliases = self._parse_torchsmith_metadata(where)

    # parsing

    def _parse(self, raw: bytes, where: str) -> tuple[dict[str, Entry], dict[str, str]]:
        try:
            header = safe_json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError as e:
            raise CorruptCheckpointError(f"{where}: the header is not UTF-8 ({e}).") from e
        except ValueError as e:
            raise CorruptCheckpointError(f"{where}: the header is not valid JSON ({e}).") from e
        if not isinstance(header, dict):
            raise CorruptCheckpointError(f"{where}: the header is a JSON {type(header).__name__}, expected an object.")
        problems: list[str] = []
        metadata = header.pop(SAFETENSORS_METADATA_KEY, None) or {}
        # names spelt with JSON escapes escape the count before parsing
        enforce("max_tensors", len(header), f"{where}: it lists {len(header):,} tensors")
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            problems.append(f"{SAFETENSORS_METADATA_KEY} must map strings to strings")
            metadata = {}
        data_len, start, check = self.size - self.data_start, self.data_start, self._check_entry
        entries: dict[str, Entry] = {}
        for name, info in header.items():
            problem = check(name, info, data_len)
            if problem:
                problems.append(problem)
            else:
                b, e = info["data_offsets"]
                entries[name] = Entry(name, info["dtype"], tuple(info["shape"]), start + b, start + e)
        ordered = sorted(entries.values(), key=_BY_POSITION)
        pos, last = self.data_start, None
        rejected = bool(problems)  # a rejected entry leaves a gap that is not a problem of its own
        for en in ordered:
            if en.begin < pos:
                problems.append(f"tensors {last.name!r} and {en.name!r} overlap (bytes {en.begin - self.data_start} to {min(pos, en.end) - self.data_start} of the data)")
            elif en.begin > pos and not rejected:
                problems.append(f"{en.begin - pos} unused bytes before tensor {en.name!r}")
            if last is None or en.end > pos:
                last = en
            pos = max(pos, en.end)
        if not problems and pos != self.size:
            problems.append(f"{self.size - pos} bytes after the last tensor (the data should end the file)")
        if problems:
            raise CorruptCheckpointError(f"{where}: {_problems_text(problems)}.")
        return entries, dict(metadata)

    @staticmethod
    def _check_entry(name: str, info: object, data_len: int) -> str | None:
        # one pass per field, no temporaries: a 100k-tensor header is checked in well under a second
        if type(info) is not dict or info.keys() != _FIELDS:
            return f"tensor {name!r} must have exactly 'dtype', 'shape' and 'data_offsets'"
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = _ITEMSIZE.get(dtype) if type(dtype) is str else None
        if itemsize is None:
            return f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPES)})"
        if type(shape) is not list:
            return f"tensor {name!r} has shape {shape!r}, expected a list of non-negative integers"
        numel = bound = 1
        for d in shape:
            if type(d) is not int or d < 0:
                return f"tensor {name!r} has shape {shape!r}, expected a list of non-negative integers"
            numel *= d
            bound *= d or 1
        if len(shape) > MAX_DIMS or bound >= 2**62:
            return f"tensor {name!r} has shape {shape!r}, beyond what any tensor can hold (at most {MAX_DIMS} dimensions, a product of sizes below 2**62)"
        if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int or type(offsets[1]) is not int:
            return f"tensor {name!r} has data_offsets {offsets!r}, expected [begin, end]"
        b, e = offsets
        if not 0 <= b <= e <= data_len:
            return f"tensor {name!r} has data_offsets [{b}, {e}] outside the {data_len} data bytes (truncated?)"
        if e - b != numel * itemsize:
            return f"tensor {name!r} ({dtype} {shape}) needs {numel * itemsize} bytes but its offsets span {e - b}"
        return None

    def _parse_torchsmith_metadata(self, where: str) -> tuple[dict[str, str] | None, dict[str, str]]:
        problems = []
        if {META_CHECKSUMS, META_HASH, META_DIGEST} & set(self.metadata):  # written by torchsmith: all three
            recorded = self.metadata.get(META_DIGEST)
            if recorded is None:
                problems.append(f"{META_DIGEST} is missing (a damaged key?)")
            elif recorded != metadata_digest(self.metadata):
                problems.append(
                    f"the metadata (aliases, checksum table) does not match its checksum (recorded {recorded}, "
                    f"hashes to {metadata_digest(self.metadata)}): the header was damaged or edited"
                )
        checksums = aliases = None
        try:
            if META_CHECKSUMS in self.metadata:
                checksums = safe_json.loads(self.metadata[META_CHECKSUMS])
            aliases = safe_json.loads(self.metadata.get(META_ALIASES, "{}"))
        except ValueError as e:
            raise CorruptCheckpointError(f"{where}: torchsmith metadata is not valid JSON ({e}).") from e
        if META_CHECKSUMS in self.metadata or META_HASH in self.metadata:  # one without the other: a damaged key
            if META_CHECKSUMS not in self.metadata:
                problems.append(f"{META_HASH} is recorded but {META_CHECKSUMS} is missing (a damaged key?)")
            elif self.metadata.get(META_HASH) != HASH_NAME:
                problems.append(f"checksums use hash {self.metadata.get(META_HASH)!r}, this version knows {HASH_NAME!r}")
            elif not isinstance(checksums, dict) or not all(is_digest(v) for v in checksums.values()):
                problems.append("the checksum table must map tensor names to 16 hex digits")
            elif set(checksums) != set(self.entries):
                odd = sorted(set(checksums) ^ set(self.entries))[:5]
                problems.append(f"the checksum table and the tensors disagree on names: {odd}")
        if not isinstance(aliases, dict) or not all(
            isinstance(a, str) and isinstance(t, str) and t in self.entries and a not in self.entries
            for a, t in aliases.items()
        ):
            problems.append(f"{META_ALIASES} must map new names to tensors in the file")
        if problems:
            raise CorruptCheckpointError(f"{where}: {_problems_text(problems)}.")
        return checksums, aliases

    # status

    @property
    def checksum_status(self) -> str:
        """'present' when torchsmith checksums are recorded, else 'absent'."""
        return "present" if self.checksums is not None else "absent"

    # reading

    def fileno(self) -> int:
        """The descriptor of the open file every read (and mapping) uses."""
        return self._file.fileno()

    def span(self, name: str) -> _engine.Span:
        """Where tensor ``name``'s bytes are (in the file this object holds open) and their recorded digest."""
        return self.spans[name]

    @functools.cached_property
    def spans(self) -> dict[str, _engine.Span]:
        """:meth:`span` of every tensor, made once."""
        fd, path, sums, Span = self._file.fileno(), str(self.path), self.checksums or {}, _engine.Span
        return {n: Span(fd, path, n, en.dtype, en.shape, en.begin, en.end, sums.get(n)) for n, en in self.entries.items()}

    def verify(self, names: Iterable[str] | None = None) -> int:
        """Check the recorded checksums of ``names`` (default: all); returns how many were checked.

        Reads and hashes the data in a small buffer per thread, on a few threads;
        the resident set grows by one buffer per thread at most.

        Raises:
            ChecksumError: naming the file and the first tensor (in file order) whose data differs.
        """
        if self.checksums is None:
            return 0
        spans = self.spans
        return _engine.verify([spans[n] for n in (self.entries if names is None else names)])

    def read_into(self, name: str, dst: torch.Tensor, *, verify: bool = False) -> None:
        """Read tensor ``name`` into the contiguous CPU tensor ``dst`` (same dtype and size)."""
        _engine.read([(self.span(name), dst)], verify=verify)

    def read(self, name: str, *, verify: bool = True) -> torch.Tensor:
        """A new CPU tensor holding ``name`` (checked against its checksum when ``verify``)."""
        en = self.entries[name]
        t = torch.empty(en.shape, dtype=en.torch_dtype)
        self.read_into(name, t, verify=verify)
        return t

    # mapping (opt-in: a file truncated under a mapping kills the reader with SIGBUS)

    def mapping(self) -> mmap.mmap | None:
        """A private, copy-on-write mapping of the whole open file (None for a file of no data).

        Writes to tensors viewing it stay in this process; the file is never written.
        """
        if self.size == self.data_start:
            return None
        mapped = mmap.mmap(self._file.fileno(), self.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if hasattr(mmap, "MADV_WILLNEED"):
            mapped.madvise(mmap.MADV_WILLNEED)  # start reading a cold file now, ahead of the checksums
        return mapped

    def mapped(self, name: str, mapping: mmap.mmap | None) -> torch.Tensor:
        """Tensor ``name`` viewing ``mapping`` (from :meth:`mapping`), or a read copy where its bytes
        are not aligned to its dtype (nothing is checked here: verify first)."""
        en = self.entries[name]
        dtype = en.torch_dtype
        if en.nbytes == 0 or mapping is None or en.begin % dtype.itemsize:
            return self.read(name, verify=False) if en.nbytes else torch.empty(en.shape, dtype=dtype)
        flat = torch.frombuffer(mapping, dtype=torch.uint8, count=en.nbytes, offset=en.begin)
        return flat.view(dtype).reshape(en.shape)


# writing


def metadata_digest(metadata: Mapping[str, str]) -> str:
    """The checksum of a header's metadata: every entry but the digest itself, as canonical JSON."""
    rest = {k: v for k, v in metadata.items() if k != META_DIGEST}
    return bytes_digest(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())


def _layout(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], checksums: dict[str, str] | None) -> tuple[bytes, list[tuple[str, int]]]:
    """The header bytes (8-byte padded) and the (name, nbytes) order of the data."""
    header: dict[str, object] = {}
    if metadata or checksums is not None:
        meta = dict(metadata)
        if checksums is not None:
            meta[META_HASH] = HASH_NAME
            meta[META_CHECKSUMS] = json.dumps(checksums, sort_keys=True, separators=(",", ":"))
            meta[META_DIGEST] = metadata_digest(meta)
        header[SAFETENSORS_METADATA_KEY] = meta
    order = []
    pos = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + n]}
        order.append((name, n))
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def write_safetensors(
    f,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
    checksums: bool = True,
    progress=None,
) -> bytes:
    """Write ``tensors`` to the open, seekable binary file ``f``; returns the header bytes.

    Data is written straight from each tensor's memory (non-contiguous or
    non-CPU tensors are copied one at a time). Checksums are computed while
    writing and patched into the header afterwards (placeholder digests have
    the same length, so the layout does not move).
    """
    meta = dict(metadata or {})
    if aliases:
        meta[META_ALIASES] = json.dumps(dict(aliases), sort_keys=True, separators=(",", ":"))
    digests = {name: PLACEHOLDER for name in tensors} if checksums else None
    head, order = _layout(tensors, meta, digests)
    start = f.tell()
    f.write(head)
    for name, _ in order:
        t = tensors[name].detach()
        if t.device.type != "cpu" or not t.is_contiguous():
            t = t.to("cpu").contiguous()
        data = byte_view(t)
        if digests is not None:
            h = tensor_hasher(DTYPE_NAMES[t.dtype], t.shape)
            h.update(data)
            digests[name] = h.hexdigest()
        f.write(data)
        if progress is not None:
            progress(data.nbytes)
    if digests is not None:
        final, _ = _layout(tensors, meta, digests)
        end = f.tell()
        f.seek(start)
        f.write(final)
        f.seek(end)
        head = final
    return head[8:]
