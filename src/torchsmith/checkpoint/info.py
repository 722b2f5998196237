"""Looking at checkpoints without a model: ``inspect_checkpoint``, ``diff_checkpoints``, ``convert_checkpoint``.

    >>> from torchsmith import create_model, save_weights
    >>> model = create_model("resnet18")
    >>> _ = save_weights(model, "model.safetensors"), save_weights(model, "b.pt")
    >>> info = inspect_checkpoint("model.safetensors")
    >>> info.tensors, info.values, info.checksums
    (122, 11699132, 'verified')
    >>> diff_checkpoints("model.safetensors", "b.pt").max_abs_diff["fc.weight"]
    0.0
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..display import REPR_ROWS, capped, html_table, more
from ..units import format_bytes
from .keys import WRAPPER_SEGMENTS, match_keys, strip_wrappers
from .files import checked_path
from .formats import dtype_name
from .limits import Limits, takes_limits
from .sources import Source, open_source
from .weights import parse_size, save_weights

__all__ = ["CheckpointInfo", "inspect_checkpoint", "CheckpointDiff", "diff_checkpoints", "convert_checkpoint"]


@dataclass
class CheckpointInfo:
    """What a checkpoint holds: per-tensor ``[key, shape, dtype]``, totals, layout, metadata, checksum status.

    ``values`` counts every value stored (parameters and buffers alike: a file does not say which is
    which), each tied tensor once; ``nbytes`` is their size.
    """

    path: str
    format: str
    tensors: int
    values: int
    nbytes: int
    entries: list[tuple[str, list[int], str]]
    prefixes: dict[str, int]
    layout: str
    metadata: dict[str, str]
    aliases: dict[str, str]
    checksums: str
    source_key: str | None = None
    other_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def _notes(self) -> list[str]:
        notes = [
            f"tensors: {self.tensors:,}   values: {self.values:,}   bytes: {self.nbytes:,} ({format_bytes(self.nbytes, large_decimals=1)})",
            f"checksums: {self.checksums}",
        ]
        if self.prefixes:
            notes.append("prefixes: " + ", ".join(f"{p!r} on {n:,} keys" for p, n in self.prefixes.items()))
        if self.source_key:
            notes.append(f"weights under {self.source_key!r}; other entries: {', '.join(self.other_keys) or 'none'}")
        return notes

    def _rows(self, limit: int | None) -> tuple[list[tuple[str, str, str]], int]:
        shown, left = capped(self.entries, limit)
        rows = [(k + (f" = {self.aliases[k]}" if k in self.aliases else ""), "(" + ", ".join(map(str, shape)) + ")", dtype)
                for k, shape, dtype in shown]
        return rows, left

    def render(self, limit: int | None = None) -> str:
        """Every tensor as ``key  shape  dtype`` (the first ``limit``, then a count), and the totals."""
        rows, left = self._rows(limit)
        widths = [max((len(r[i]) for r in rows), default=0) for i in range(2)]
        lines = [f"{self.path} ({self.format}, {self.layout})"]
        lines += [f"  {k:<{widths[0]}}  {shape:<{widths[1]}}  {dtype}" for k, shape, dtype in rows]
        if left:
            lines.append("  " + more(left, "tensors", "print(info) lists them; info.entries holds them"))
        return "\n".join(lines + self._notes())

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:  # the REPL: the first 40 tensors and the totals
        return self.render(REPR_ROWS)

    def _repr_html_(self) -> str:
        rows, left = self._rows(REPR_ROWS)
        notes = [more(left, "tensors", "print(info) lists them"), *self._notes()]
        return html_table(f"{self.path} ({self.format}, {self.layout})", ["key", "shape", "dtype"], rows, notes=notes)


def _prefix_counts(keys: list[str]) -> dict[str, int]:
    counts: Counter = Counter()
    for k in keys:
        parts = k.split(".")[:-1]
        for p in dict.fromkeys(parts):
            if p in WRAPPER_SEGMENTS:
                counts[f"{p}."] += 1
    return dict(counts)


def _layout(src: Source) -> str:
    if src.format == "safetensors-sharded":
        return f"sharded: {len(src.files)} files + index"
    if src.source_key:
        return f"training checkpoint (weights under {src.source_key!r})"
    return "single file"


@takes_limits
def inspect_checkpoint(path: str | os.PathLike, *, verify: bool = True, trusted: bool = False, limits: Limits | None = None) -> CheckpointInfo:
    """Describe a checkpoint; with ``verify`` its checksums are checked (``'verified'``, ``'absent'``).

    Raises:
        ChecksumError / CorruptCheckpointError / UnsafeCheckpointError: as for load_weights.
    """
    src = open_source(path, trusted=trusted)
    stored = src.keys()
    entries = []
    values = nbytes = 0
    for k in stored:
        shape, dtype = src.spec(k)
        entries.append((k, list(shape), dtype_name(dtype)))
        if k not in src.aliases:
            n = 1
            for d in shape:
                n *= d
            values += n
            nbytes += n * dtype.itemsize
    status = src.checksum_status
    if verify and status == "present":
        src.verify([k for k in stored if k not in src.aliases])
        status = "verified"
    return CheckpointInfo(
        path=str(src.path),
        format=src.format,
        tensors=len(stored),
        values=values,
        nbytes=nbytes,
        entries=entries,
        prefixes=_prefix_counts(stored),
        layout=_layout(src),
        metadata=dict(src.metadata),
        aliases=dict(src.aliases),
        checksums=status,
        source_key=src.source_key,
        other_keys=list(src.other_keys),
    )


@dataclass
class CheckpointDiff:
    """Differences between two checkpoints (``a`` and ``b``), keys matched as load_weights would.

    Keys are ``a``'s (``only_in_b``: ``b``'s); ``prefixes`` names the wrapper segments (``module.``) that one
    side had and the other not, per side, with the number of keys, as the match removed them.
    """

    a: str
    b: str
    only_in_a: list[str]
    only_in_b: list[str]
    shape: dict[str, tuple[list[int], list[int]]]
    dtype: dict[str, tuple[str, str]]
    max_abs_diff: dict[str, float]
    prefixes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.shape or self.dtype or any(self.max_abs_diff.values()))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["same"] = self.same
        return out

    def groups(self) -> list[tuple[str, list[str]]]:
        """``(kind, lines)`` per kind of difference, keys as matched (wrapper segments removed), in the order
        only in a, only in b, shape, dtype, values (largest difference first)."""
        def key(k: str) -> str:
            return strip_wrappers(k)[0]

        differing = sorted(((k, v) for k, v in self.max_abs_diff.items() if v), key=lambda kv: -kv[1])
        groups = [
            (f"only in {self.a}", [f"- {key(k)}" for k in self.only_in_a]),
            (f"only in {self.b}", [f"+ {key(k)}" for k in self.only_in_b]),
            ("shape differs", [f"{key(k)}: {tuple(sa)} vs {tuple(sb)}" for k, (sa, sb) in self.shape.items()]),
            ("dtype differs", [f"{key(k)}: {ta} vs {tb}" for k, (ta, tb) in self.dtype.items()]),
        ]
        if self.max_abs_diff:
            groups.append((f"values differ (max abs difference; {len(self.max_abs_diff):,} shared tensors compared)",
                           [f"{key(k)}: {v:.3g}" for k, v in differing]))
        return [(kind, lines) for kind, lines in groups if lines]

    def render(self, limit: int | None = None, *, more_hint: str = "print(diff) lists them") -> str:
        """The differences grouped by kind, each with its count and its first ``limit`` lines (all: None)."""
        lines = [f"keys matched after removing {prefix!r} from {n:,} keys of {name}"
                 for side, name in (("a", self.a), ("b", self.b)) for prefix, n in self.prefixes.get(side, {}).items()]
        for kind, items in self.groups():
            shown, left = capped(items, limit)
            lines += [f"{kind}: {len(items):,}", *(f"  {line}" for line in shown)]
            if left:
                lines.append("  " + more(left, "", more_hint))
        return "\n".join([*lines, "same" if self.same else "different"])

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:  # the REPL: the first 10 of each kind
        return self.render(DIFF_ROWS)

    def _repr_html_(self) -> str:
        rows = []
        for kind, items in self.groups():
            shown, left = capped(items, DIFF_ROWS)
            rows += [(f"{kind} ({len(items):,})" if i == 0 else "", line) for i, line in enumerate(shown)]
            if left:
                rows.append(("", more(left, "", "print(diff) lists them")))
        return html_table(f"{self.a} vs {self.b}: {'same' if self.same else 'different'}", ["kind", "key"], rows)


DIFF_ROWS = 10  # lines of each kind of difference repr() and `torchsmith diff` show


Tensors = Mapping[str, torch.Tensor]


def _named_tensors(target: str | os.PathLike | Tensors, trusted: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """A checkpoint's tensors, or a state dict as given."""
    if isinstance(target, Mapping):
        return "<state dict>", dict(target)
    from .weights import read_weights

    return str(target), read_weights(target, trusted=trusted)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """0.0 for the same bits or NaN where the other has NaN too; inf where only one side is NaN."""
    if a.dtype == b.dtype and torch.equal(_bits(a), _bits(b)):
        return 0.0
    if a.numel() == 0:
        return 0.0
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return float((a != b).any())
    x, y = a.to(torch.float64), b.to(torch.float64)
    nan_x, nan_y = x.isnan(), y.isnan()
    diff = torch.where(x == y, 0.0, (x - y).abs())  # equal infinities: 0, not inf - inf = nan
    diff = torch.where(nan_x & nan_y, 0.0, torch.where(nan_x | nan_y, torch.inf, diff))
    return diff.max().item()


@takes_limits
def diff_checkpoints(
    a: str | os.PathLike | Tensors, b: str | os.PathLike | Tensors, *, trusted: bool = False, limits: Limits | None = None
) -> CheckpointDiff:
    """Compare two checkpoints (paths, or state dicts such as ``model.state_dict()``).

    Keys are matched through wrapper prefixes (``module.`` / ``_orig_mod.``);
    values are compared in float64 as the maximum absolute difference per
    tensor, except where one side is on the meta device (a model built on meta
    has shapes and dtypes, no values): then keys, shapes and dtypes only. NaN
    where the other side has NaN is equal (a file equals itself), NaN against a
    number is a difference of ``inf``.
    ``torchsmith diff ckpt MODELNAME`` compares a checkpoint with a registered
    model that way.
    """
    name_a, sd_a = _named_tensors(a, trusted)
    name_b, sd_b = _named_tensors(b, trusted)
    match = match_keys(sd_b, sd_a)  # pairs: key in a -> key in b
    shape, dtype, maxdiff = {}, {}, {}
    for ka, kb in match.pairs.items():
        ta, tb = sd_a[ka], sd_b[kb]
        if ta.shape != tb.shape:
            shape[ka] = (list(ta.shape), list(tb.shape))
            continue
        if ta.dtype != tb.dtype:
            dtype[ka] = (dtype_name(ta.dtype), dtype_name(tb.dtype))
        if ta.is_meta or tb.is_meta:
            continue
        maxdiff[ka] = _max_abs_diff(ta, tb)
    prefixes = {side: dict(found) for side, found in (("a", match.added), ("b", match.removed)) if found}
    return CheckpointDiff(name_a, name_b, list(match.missing), list(match.unexpected), shape, dtype, maxdiff, prefixes)


@takes_limits
def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    strip_prefix: str | None = None,
    max_shard_size: int | str | None = None,
    trusted: bool = False,
    progress: Callable[[int, int], None] | None = None,
    limits: Limits | None = None,
) -> Path:
    """Convert between ``.pt`` and ``.safetensors`` (sharded with ``max_shard_size``), verifying on the way.

    ``src`` may also be a distributed checkpoint directory (``torch.distributed.checkpoint``): its model
    tensors are consolidated into whole tensors (see :mod:`torchsmith.checkpoint.dcp`).

    ``strip_prefix`` removes a prefix from every key that has it (``"module."``). Tied tensors
    (one tensor under several names, as in a ``pytorch_model.bin``) are stored once. The output's
    directory is created when it does not exist. ``progress(done_bytes, total_bytes)`` is called as
    tensors are written. Returns the path written.

    Raises:
        CheckpointError: the output would be the input file, or a stripped key collides with another.
    """
    from .dcp import is_dcp, read_dcp  # torch.distributed.checkpoint is imported only when converting
    from .weights import read_weights

    from .hub import is_hf_source

    src = src if is_hf_source(src) else checked_path(src)  # hf://ORG/NAME is a source, not a path to normalise
    dst = checked_path(dst, action="write")
    if os.path.realpath(dst) == os.path.realpath(src):  # realpath: a loop of links is a name, not an error
        raise CheckpointError(f"convert: output {str(dst)!r} is the input; choose another path.")
    if max_shard_size is not None:
        parse_size(max_shard_size)  # validate before reading anything
    sd = read_dcp(src, trusted=trusted) if is_dcp(src) else read_weights(src, trusted=trusted)
    if strip_prefix:
        renamed = {k[len(strip_prefix) :] if k.startswith(strip_prefix) else k: v for k, v in sd.items()}
        if len(renamed) != len(sd):
            raise CheckpointError(f"convert: stripping {strip_prefix!r} makes two keys equal; nothing was written.")
        sd = renamed
    total = sum(t.numel() * t.element_size() for t in sd.values())
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    parent = Path(dst).parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise CheckpointError(f"convert: cannot create the directory {str(parent)!r}: {e.strerror or e}. Nothing was written.") from e
    try:
        return save_weights(sd, dst, max_shard_size=max_shard_size, progress=tick)
    except BaseException:
        for p in created:  # a failed convert leaves no new directories behind (innermost first)
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
