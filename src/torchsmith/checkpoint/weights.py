"""Saving and loading weights: ``save_weights``, ``load_weights``, ``read_weights``.

    >>> model = create_model("resnet18")
    >>> save_weights(model, "model.safetensors")
    PosixPath('model.safetensors')
    >>> report = load_weights(model, "model.safetensors")
    >>> report.ok
    True

Loading validates everything (keys, shapes, dtypes, checksums) before writing a single byte into the model, then
reads each tensor straight from the file into the parameter it belongs to: no second copy of the weights in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, IncompatibleCheckpointError
from . import safe_json
from ._gc import gc_paused
from ._interrupts import deferred_interrupts
from .atomic import atomic_write
from .formats import DTYPE_NAMES, META_ALIASES, META_INDEX_DIGEST, RESERVED_PREFIX, dtype_name, format_for, index_path, is_shard_of, shard_names
from .keys import Rename, explaining_prefix, guess_layout
from .limits import Limits, takes_limits
from .materialize import meta_tensors, put, recompute
from .report import Cast, LoadReport, Mismatch
from .safetensors_format import write_safetensors
from .sources import SafetensorsSource, Source, TensorSource, index_digest, open_source, tensor_identity
from .torch_format import write_torch_file
from .upgrades import plan_keys

__all__ = ["save_weights", "load_weights", "read_weights", "parse_size", "state_dict_of", "dedupe", "check_metadata"]

log = logging.getLogger(__name__)

BATCH_BYTES = 256 * 2**20  # fresh tensors read at once when each must then be moved or cast
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


# helpers


def parse_size(size: int | str) -> int:
    """Bytes from ``"2GB"``, ``"500MB"``, ``"1GiB"`` or an int.

    >>> parse_size("2GB"), parse_size("1GiB")
    (2000000000, 1073741824)
    """
    if isinstance(size, int) and size > 0:
        return size
    m = _SIZE.match(str(size))
    if not m or float(m.group(1)) <= 0:
        raise CheckpointError(f"max_shard_size={size!r} is not a size; use e.g. '2GB', '500MB', '1GiB' or a byte count.")
    unit = m.group(2).lower().removesuffix("b")
    return int(float(m.group(1)) * _UNITS[unit])


def state_dict_of(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors to save: a module's ``state_dict()`` or a mapping, checked to hold only real tensors."""
    if isinstance(model_or_state_dict, nn.Module):
        sd = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        sd = dict(model_or_state_dict)
    else:
        raise CheckpointError(
            f"save_weights expects an nn.Module or a mapping of name -> tensor, got {type(model_or_state_dict).__name__}"
            + (" (a bound method: call model.state_dict())" if callable(model_or_state_dict) else "")
            + "."
        )
    lazy = [k for k, v in sd.items() if torch.nn.parameter.is_lazy(v)]
    if lazy:  # their shapes are unknown until the first forward; nothing else can be asked of them
        raise CheckpointError(f"Cannot save these weights: {lazy[:10]} belong to lazy layers that are not initialised yet; "
                              "run one forward first (model(example_input)) to initialise its lazy layers.")
    problems = [f"{k!r} is a {type(v).__name__}" for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    problems += [f"{k!r} is on the meta device (no data)" for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_meta]
    problems += [f"key {k!r} is not a string" for k in sd if not isinstance(k, str)]
    problems += [
        f"{k!r} has dtype {v.dtype}, which safetensors cannot store"
        for k, v in sd.items()
        if isinstance(v, torch.Tensor) and v.dtype not in DTYPE_NAMES
    ]
    if problems:
        raise CheckpointError(f"Cannot save these weights: {'; '.join(problems[:10])}. Save tensors only (materialised, named by strings).")
    return sd


def dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors stored once, and ``alias -> stored name`` for exact duplicates (tied weights)."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in sd.items():
        if t.numel() == 0:
            stored[name] = t
            continue
        ident = tensor_identity(t)
        if ident in seen:
            aliases[name] = seen[ident]
        else:
            seen[ident] = name
            stored[name] = t
    return stored, aliases


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    reserved = [k for k in metadata if isinstance(k, str) and k.startswith(RESERVED_PREFIX)]
    if bad or reserved:
        raise CheckpointError(
            f"metadata must map strings to strings, without {RESERVED_PREFIX!r} keys (reserved); "
            f"offending keys: {sorted(map(str, bad + reserved))}. Convert values with str() or json.dumps()."
        )
    return metadata


def _old_shards(index: Path) -> set[str]:
    try:
        return set(safe_json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _remove_shards(index: Path, names: set[str]) -> None:
    """Delete shard files of an older save that the current one no longer uses."""
    for name in names:
        if is_shard_of(name, index):
            with contextlib.suppress(FileNotFoundError):
                (index.parent / name).unlink()


def _save_sharded(path: Path, stored, aliases, metadata, limit: int, progress) -> Path:
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in stored.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    index = index_path(path)
    if len(shards) == 1:
        with atomic_write(path) as f:
            write_safetensors(f, stored, metadata=metadata, aliases=aliases, progress=progress)
        if index.exists():  # an older sharded save of the same name would shadow this file
            _remove_shards(index, _old_shards(index))
            index.unlink()
        return path
    names = shard_names(path, len(shards))
    weight_map = {}
    for shard_name, keys in zip(names, shards):
        with atomic_write(path.parent / shard_name) as f:
            write_safetensors(f, {k: stored[k] for k in keys}, metadata=metadata, progress=progress)
        weight_map.update(dict.fromkeys(keys, shard_name))
    total = sum(t.numel() * t.element_size() for t in stored.values())
    meta: dict[str, object] = {"total_size": total, **metadata}
    if aliases:
        meta[META_ALIASES] = aliases
    doc = {"metadata": meta, "weight_map": weight_map}
    meta[META_INDEX_DIGEST] = index_digest(doc)  # covers the weight map and the aliases
    old = _old_shards(index)
    with atomic_write(index) as f:
        f.write(json.dumps(doc, indent=2).encode())
    _remove_shards(index, old - set(names))
    return index


# saving


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write weights atomically, with a checksum of every tensor; returns the path written.

    The format follows the suffix (one table, ``checkpoint.formats``): ``.pt`` /
    ``.pth`` / ``.bin`` / ``.ckpt`` / ``.pkl`` / ``.tar`` write a torch file
    (``{"state_dict", "torchsmith"}``), anything else safetensors. Tied (shared) tensors are stored once and re-tied on load.
    With ``max_shard_size`` (``"2GB"``), a safetensors checkpoint larger than
    that is split into ``model-00001-of-0000N.safetensors`` files plus
    ``model.safetensors.index.json`` (the index path is returned).
    ``progress`` is called with the bytes written after each tensor.

    Example::

        >>> model = create_model("resnet18")
        >>> save_weights(model, "resnet18.safetensors")
        PosixPath('resnet18.safetensors')
        >>> save_weights(model.state_dict(), "big.safetensors", max_shard_size="10MB")   # 45 MB in shards
        PosixPath('big.safetensors.index.json')
    """
    path = Path(path)
    sd = state_dict_of(model_or_state_dict)
    metadata = check_metadata(metadata)
    if format_for(path) == "torch":
        if max_shard_size is not None:
            raise CheckpointError(f"max_shard_size applies to safetensors; {str(path)!r} is a torch file. Use a .safetensors path.")
        with atomic_write(path) as f:
            write_torch_file(f, sd, metadata=metadata)
        if progress is not None:
            progress(sum(t.numel() * t.element_size() for t in sd.values()))
        return path
    stored, aliases = dedupe(sd)
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    if limit is None:
        with atomic_write(path) as f:
            write_safetensors(f, stored, metadata=metadata, aliases=aliases, progress=progress)
        return path
    return _save_sharded(path, stored, aliases, metadata, limit, progress)


@gc_paused()  # many small objects, no cycles: see _gc
@takes_limits
def read_weights(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", verify: bool = True, trusted: bool = False, limits: Limits | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as a new state dict (aliases share their tensor).

    Raises:
        CheckpointError (and subclasses): missing, damaged, refused (pickle) or mismatched checksum.
    """
    src = open_source(path, trusted=trusted)
    fresh: dict[str, torch.Tensor] = {}
    for key in src.keys():
        shape, dtype = src.spec(key)
        fresh.setdefault(src.real(key), torch.empty(shape, dtype=dtype))
    src.read_many(list(fresh.items()), verify=verify)  # checked as it arrives; dropped on error
    return {key: fresh[src.real(key)].to(map_location) for key in src.keys()}


# loading


def _castable(a: torch.dtype, b: torch.dtype) -> bool:
    if a == b or (a.is_floating_point and b.is_floating_point):
        return True
    ints = a not in (torch.bool,) and not a.is_floating_point and not a.is_complex
    return ints and b not in (torch.bool,) and not b.is_floating_point and not b.is_complex


def _plan(src: Source, model: nn.Module, prefix: str | None, rename: Rename | None = None, verify: bool = True) -> tuple[LoadReport, list, list]:
    """Check every key, shape and dtype; return the report, the ``(target, file_key)`` reads and the
    ``(target, tensor)`` writes of values a module's upgrade made (BatchNorm's ``num_batches_tracked``)."""
    targets = model.state_dict(keep_vars=True)
    keys = plan_keys(model, src.keys(), targets, prefix=prefix, rename=rename, spec=src.spec,
                     read=lambda fk: src.read(fk, verify=verify), metadata=getattr(src, "module_metadata", None))  # fmt: skip
    report = LoadReport(
        path=str(src.path), format=src.format, missing=keys.missing, unexpected=keys.unexpected,
        prefixes_removed=keys.removed, prefixes_added=keys.added, source_key=src.source_key,
        other_keys=list(src.other_keys), tied=sorted(src.aliases.items()), model_keys=len(targets),
        unlisted=list(src.unlisted), renamed=keys.renamed, dropped=keys.dropped, upgraded=keys.upgraded,
    )
    writes, values = [], []
    done: dict[tuple, str] = {}
    # one loop of plain lookups: a 100k-key plan in a fraction of a second
    specs, aliases, loaded = src._specs(), src.aliases, report.loaded
    n_values = nbytes = 0
    for mk, fk in keys.pairs.items():
        target = targets[mk]
        value = fk if isinstance(fk, torch.Tensor) else None
        shape, dtype = (tuple(value.shape), value.dtype) if value is not None else specs[aliases.get(fk, fk)]
        same = dtype == target.dtype
        if target.shape != shape or not (same or _castable(dtype, target.dtype)):
            report.mismatched.append(Mismatch(mk, shape, tuple(target.shape), dtype_name(dtype), dtype_name(target.dtype)))
            continue
        loaded.append(mk)
        if not same:
            report.casts.append(Cast(mk, dtype_name(dtype), dtype_name(target.dtype)))
        ident = tensor_identity(target)
        if ident in done:  # tied in the model: one write serves both keys
            continue
        done[ident] = mk
        if value is not None:
            if value is not target:  # a module's upgrade kept the model's own value: nothing to write
                values.append((target, value))
            continue
        writes.append((target, fk))
        n = target.numel()
        n_values += n
        nbytes += n * target.element_size()
    report.values, report.nbytes = n_values, nbytes
    # a model key the file lacks whose tensor is one the load fills is tied (save_pretrained drops lm_head.weight)
    for mk in list(report.missing):
        partner = done.get(tensor_identity(targets[mk]))
        if partner is not None:
            report.missing.remove(mk)
            report.tied_in_model.append((mk, partner))
    return report, writes, values


def _left_on_meta(report: LoadReport, model: nn.Module, writes: list, map_location) -> dict[str, torch.Tensor]:
    """Meta tensors the writes will not fill: recompute the ones the model can (returned), name the rest."""
    filled = {id(target) for target, _ in writes}  # values (upgrades) included: the caller passes both
    left = {name: t for name, t in meta_tensors(model).items() if id(t) not in filled}
    if not left:
        return {}
    in_state = set(model.state_dict(keep_vars=True))
    rebuilt = recompute(model, [n for n in left if n not in in_state], device=map_location)
    report.recomputed = sorted(rebuilt)
    report.on_meta = sorted(n for n in left if n not in rebuilt)
    return rebuilt


ERROR_KEYS = 3  # keys of each kind the message of a refused load names (the error's .report has all)


def _refuse(report: LoadReport, model: nn.Module, strict: bool, skip_mismatched: bool, src: Source) -> None:
    problems = []
    if strict and report.missing:
        problems.append(f"{len(report.missing):,} model keys missing from the file")
    if strict and report.unexpected:
        problems.append(f"{len(report.unexpected):,} file keys unknown to the model")
    if report.mismatched and not skip_mismatched:
        problems.append(f"{len(report.mismatched):,} keys with a different shape or dtype")
    if strict and report.on_meta:
        problems.append(f"{len(report.on_meta):,} tensors would be left on the meta device, without values")
    if not problems:
        return
    hints = []
    looks_like = guess_layout({k: src.spec(k)[0] for k in src.keys()}) if report.missing or report.unexpected else None
    if looks_like:
        hints.append(f"these weights look like {looks_like}: build that model to load them")
    explained = explaining_prefix(report.missing, report.unexpected) if strict else None
    if explained:
        prefix, n = explained
        hints.append(f"pass prefix={prefix!r} to strip it from the file's keys or add it to them "
                     f"(it finds {n:,} of the {len(report.missing):,} missing keys)")
    if strict and (report.missing or report.unexpected):
        hints.append("pass strict=False to load the keys that match")
    if report.mismatched and not skip_mismatched:
        hints.append("pass skip_mismatched=True to skip the mismatched ones (e.g. a new head)")
    if strict and report.on_meta:
        hints.append("build the model with real buffers (only its parameters on meta), or pass strict=False and give the "
                     "tensors under 'on meta' values before using the model")  # fmt: skip
    advice = "; ".join(hints)
    raise IncompatibleCheckpointError(
        f"load_weights: {report.path} does not fit {type(model).__name__}: {', '.join(problems)}. "
        f"Nothing was loaded; the model is unchanged. {advice[0].upper() + advice[1:]}.\n"
        f"{report.render(ERROR_KEYS, owner='error.report', refused=True)}",
        report,
    )


def check_fits(model: nn.Module, src: Source) -> None:
    """Refuse ``src`` for ``model`` (strictly: keys, shapes, dtypes) without reading or writing data.

    ``load_model`` runs it on the model built on the meta device before any real allocation.
    """
    report, _, _ = _plan(src, model, None)
    report.checksums = src.checksum_status
    _refuse(report, model, strict=True, skip_mismatched=False, src=src)


def _batches(writes: list, src: Source, map_location) -> list[list]:
    """The fresh reads in one batch when they stay as read (CPU, same dtype), else in batches of
    about BATCH_BYTES, each moved or cast before the next is read (bounded staging memory)."""
    staged = [w for w in writes if torch.device(map_location).type != "cpu" or src.spec(w[1])[1] != w[0].dtype]
    if not staged:
        return [writes] if writes else []
    batches: list[list] = [[]]
    size = 0
    for target, fk in writes:
        n = target.numel() * target.element_size()
        if batches[-1] and size + n > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append((target, fk))
        size += n
    return batches


def _empty(spec: tuple[tuple[int, ...], torch.dtype]) -> torch.Tensor:
    shape, dtype = spec
    return torch.empty(shape, dtype=dtype)


def _assign(model: nn.Module, new: dict[int, torch.Tensor]) -> None:
    """Put new tensors where meta ones were, keeping tied parameters tied."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table, is_param in ((module._parameters, True), (module._buffers, False)):
            for name, old in table.items():
                if old is None or id(old) not in new:
                    continue
                if id(old) not in made:
                    t = new[id(old)]
                    made[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad) if is_param else t
                table[name] = made[id(old)]


@gc_paused()
@takes_limits
def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    prefix: str | None = "auto",
    skip_mismatched: bool = False,
    rename: Rename | None = None,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    trusted: bool = False,
    mmap: bool = False,
    limits: Limits | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` in place and report what happened.

    Reads safetensors (single or sharded), torch files (``weights_only=True``; training-loop dicts are found) and
    ``save_model`` directories. ``prefix="auto"`` handles ``module.`` / ``_orig_mod.`` on either side; a string
    such as ``"backbone."`` is stripped or added; ``None`` matches exactly. Meta parameters are materialised on
    ``map_location``, others written in place. A key the file lacks whose tensor is that of a loaded key is
    ``tied``; non-persistent buffers still on meta are recomputed when the model can be rebuilt, else named under
    ``on_meta``. Floating-point dtypes are cast (and reported). ``rename``: ``{regex: repl}`` or a callable
    ``key -> key`` (None drops it), applied before matching (``report.renamed``). Upgrades modules declare
    (``_load_from_state_dict``, pre-hooks, a file's ``version``) apply as in ``load_state_dict``
    (``report.upgraded``). ``mmap=True`` (safetensors, CPU): meta tensors become views of a private mapping of
    the checked file (a file truncated under it kills the process: SIGBUS). docs/checkpoints.md says more.

    Transactional: keys, shapes, dtypes and checksums are all checked before anything is written; on any error the
    model is byte-for-byte unchanged. Bounded: a file asking for more than :class:`Limits` allow is refused before
    anything is allocated, naming the bound (``limits=Limits(...)`` raises one for a file you trust).

    Raises:
        IncompatibleCheckpointError: missing / unexpected keys or tensors left on meta (``strict``), or
            mismatched shapes (unless ``skip_mismatched``); ``.report`` holds the details.
        ChecksumError: damaged tensor data, naming the file and tensor.
        UnsafeCheckpointError: a pickle needing code (pass ``trusted=True`` only for files you trust).
        CorruptCheckpointError: a damaged file.

    Example::

        >>> resnet = create_model("resnet18")
        >>> _ = save_weights(nn.DataParallel(resnet), "dp_checkpoint.pt")
        >>> report = load_weights(resnet, "dp_checkpoint.pt")   # saved from DataParallel
        >>> report.prefixes_removed
        {'module.': 122}
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"load_weights expects an nn.Module to load into, got {type(model).__name__}.")
    src = open_source(path, trusted=trusted)
    report, writes, values = _plan(src, model, prefix, rename, verify)
    rebuilt = _left_on_meta(report, model, writes + values, map_location)
    checking = verify and src.checksum_status == "present"
    report.checksums = "present" if src.checksum_status == "present" else "absent"  # what a refusal reports
    _refuse(report, model, strict, skip_mismatched, src)
    report.checksums = "verified" if checking else ("skipped" if src.checksum_status == "present" else "absent")
    in_place = [w for w in writes if not w[0].is_meta]
    if checking and in_place:  # verify before touching the model: the pass that keeps the load transactional
        report.checksums_checked = src.verify([fk for _, fk in writes])
    on_the_fly = checking and not in_place
    # meta targets: fresh tensors, checked as the data arrives (one pass), assigned only once all is read
    new: dict[int, torch.Tensor] = {}
    fresh_writes = [w for w in writes if w[0].is_meta]
    if mmap and isinstance(src, SafetensorsSource) and torch.device(map_location).type == "cpu":
        mapped = [w for w in fresh_writes if src.spec(w[1])[1] == w[0].dtype]  # a cast needs new memory
        new.update((id(t), v) for (t, _), v in zip(mapped, src.map_many([fk for _, fk in mapped], verify=on_the_fly)))
        fresh_writes = [w for w in fresh_writes if id(w[0]) not in new]
    for batch in _batches(fresh_writes, src, map_location):
        fresh = [(target, fk, _empty(src.spec(fk))) for target, fk in batch]
        src.read_many([(fk, t) for _, fk, t in fresh], verify=on_the_fly)
        new.update((id(target), t.to(device=map_location, dtype=target.dtype)) for target, _, t in fresh)
    new.update((id(target), v.to(device=map_location, dtype=target.dtype)) for target, v in values if target.is_meta)
    # the copy: a Ctrl-C now would leave some tensors old and some new; it is raised when the copy ends
    with deferred_interrupts(), torch.no_grad():
        # live targets: straight into the parameter's memory when it has the file's layout, else through a temporary
        direct, other = [], []
        for target, fk in in_place:
            dst = target.data
            plain = dst.device.type == "cpu" and dst.is_contiguous() and dst.dtype == src.spec(fk)[1]
            (direct if plain and not isinstance(src, TensorSource) else other).append((fk, dst))
        src.read_many(direct, verify=False)
        for fk, dst in other:
            dst.copy_(src.tensors[src.real(fk)] if isinstance(src, TensorSource) else src.read(fk, verify=False))
        for target, v in values:
            if not target.is_meta:
                target.data.copy_(v)
        if on_the_fly:
            report.checksums_checked = len(writes)
        _assign(model, new)
        for name, value in rebuilt.items():
            put(model, name, value)
    log.debug("loaded %s", report)
    return report
