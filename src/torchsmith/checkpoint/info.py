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
from .keys import WRAPPER_SEGMENTS, match_keys
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
    """Differences between two checkpoints (``a`` and ``b``), keys matched as load_weights would."""

    a: str
    b: str
    only_in_a: list[str]
    only_in_b: list[str]
    shape: dict[str, tuple[list[int], list[int]]]
    dtype: dict[str, tuple[str, str]]
    max_abs_diff: dict[str, float]

    @property
    def same(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.shape or self.dtype or any(self.max_abs_diff.values()))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["same"] = self.same
        return out


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
    return CheckpointDiff(name_a, name_b, list(match.missing), list(match.unexpected), shape, dtype, maxdiff)


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

    src, dst = checked_path(src), checked_path(dst, action="write")
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
