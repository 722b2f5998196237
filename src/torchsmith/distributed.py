"""Distributed checkpoints of a model and its optimizer: DCP save and load, any number of ranks.

:func:`save_distributed` writes a ``torch.distributed.checkpoint`` (DCP) directory: every rank writes its
own shards in parallel (a DDP replica is written once, an FSDP2 shard by its owner) and rank 0 writes
``.metadata``. :func:`load_distributed` reads it back into a model wrapped any way, on any number of ranks:
a checkpoint written by 2 FSDP ranks loads into 1 plain model (resharding), and the other way round.
Keys are the plain module's (no ``module.`` / ``_orig_mod.``), as ``get_state_dict`` makes them.

Both work the same without a process group (one process). Neither changes its arguments except
:func:`load_distributed`, which loads into ``model``, ``optimizer`` and ``state`` in place, and only once
the whole checkpoint has been read and checked (a failed load leaves them as they were).

    >>> import tempfile, torch
    >>> from torchsmith import save_distributed, load_distributed
    >>> tmp = tempfile.mkdtemp()
    >>> model = torch.nn.Linear(4, 2)                                    # weight (2, 4), bias (2,)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> save_distributed(model, opt, f"{tmp}/dcp", state={"progress": {"epoch": 3}}).name
    'dcp'
    >>> progress = {"epoch": 0}                                          # dicts are filled for the keys they have
    >>> load_distributed(model, opt, f"{tmp}/dcp", state={"progress": progress}); progress
    {'epoch': 3}

``torchsmith convert runs/dcp model.safetensors`` consolidates the model's weights into one file.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint.formats import DCP_MODEL_KEY, DCP_OPTIM_KEY  # the layout convert reads back
from .errors import CheckpointError, IncompatibleCheckpointError

# torch.distributed.checkpoint (and our reader over it, checkpoint/dcp.py) is imported inside the
# functions: it would add about a third to `import torchsmith`.

__all__ = ["save_distributed", "load_distributed"]


# helpers


def _plain_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """``state`` with every Stateful (a scheduler, a sampler) replaced by its ``state_dict()``."""
    out = {}
    for name, value in (state or {}).items():
        if name in (DCP_MODEL_KEY, DCP_OPTIM_KEY):
            raise CheckpointError(f"state key {name!r} is reserved for the model or optimizer; choose another name.")
        if _stateful(value):
            out[name] = value.state_dict()
        elif isinstance(value, dict):
            out[name] = value
        else:
            raise CheckpointError(
                f"state[{name!r}] is a {type(value).__name__}; pass a dict or an object with state_dict() and "
                f"load_state_dict() (a scheduler, a sampler)."
            )
    return out


def _stateful(value: Any) -> bool:
    """An object DCP would treat as Stateful: it has ``state_dict()`` and ``load_state_dict()``."""
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def _expected(wanted: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """DCP entry names with their global shapes (model tensors, optimizer state tensors), and the other top-level names."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, t in wanted.get(DCP_MODEL_KEY, {}).items():
        if isinstance(t, torch.Tensor):
            shapes[f"{DCP_MODEL_KEY}.{key}"] = tuple(t.shape)
    for fqn, per_param in wanted.get(DCP_OPTIM_KEY, {}).get("state", {}).items():
        for name, t in per_param.items():
            if isinstance(t, torch.Tensor) and t.dim() > 0:  # 0-d entries (Adam's step) may be stored as values
                shapes[f"{DCP_OPTIM_KEY}.state.{fqn}.{name}"] = tuple(t.shape)
    others = [name for name in wanted if name != DCP_MODEL_KEY]
    return shapes, others


def _check_against(metadata, wanted: Mapping[str, Any], directory: Path) -> None:
    """Every problem between what we load and what the checkpoint holds, in one IncompatibleCheckpointError."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    stored = metadata.state_dict_metadata
    shapes, others = _expected(wanted)
    missing = [k for k in shapes if k not in stored]
    missing += [name for name in others if not any(k == name or k.startswith(f"{name}.") for k in stored)]
    bad = [
        f"{k}: checkpoint {tuple(stored[k].size)}, here {shape}"
        for k, shape in shapes.items()
        if isinstance(stored.get(k), TensorStorageMetadata) and tuple(stored[k].size) != shape
    ]
    unexpected = [k for k in stored if DCP_MODEL_KEY in wanted and k.startswith(f"{DCP_MODEL_KEY}.") and k not in shapes]
    if missing or bad or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} model entries this model lacks ({_few(unexpected)})")
        if bad:
            parts.append(f"{len(bad)} shape mismatches ({'; '.join(bad[:5])})")
        raise IncompatibleCheckpointError(
            f"load_distributed: {str(directory)!r} does not fit: {'; '.join(parts)}. Nothing was loaded. "
            f"Build the model (and optimizer) as it was when saved, or take the weights alone with "
            f"`torchsmith convert DCP_DIR out.safetensors` and load_weights."
        )


def _group() -> bool:
    """True when a default process group runs (under torchrun); else DCP reads and writes as one process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _one_process_quietly() -> Iterator[None]:
    """DCP warns on every call without a process group; one process is a use we support, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, what: str) -> dict[str, Any]:
    """``get_optimizer_state_dict``, with a clear error for an optimizer over another model's parameters."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    try:
        return get_optimizer_state_dict(model, optimizer)
    except KeyError as e:  # torch finds no name for a parameter
        raise CheckpointError(
            f"{what}: the optimizer holds tensors that are not parameters of this {type(model).__name__}; "
            f"pass the optimizer built over this model's parameters (after wrapping it)."
        ) from e


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")


# save and load


def save_distributed(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    directory: str | os.PathLike,
    *,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (plain, DDP, FSDP2 or compiled) and ``optimizer`` as a DCP checkpoint; returns ``directory``.

    A collective: under a process group every rank calls it with the same ``directory`` (on a shared or
    per-node filesystem). ``state`` holds extra entries: dicts of numbers / strings / tensors, or objects with
    ``state_dict()`` (an LR scheduler). Entries: ``model.<key>``, ``optim.state.<key>.<name>``,
    ``optim.param_groups...``, ``<state name>.<key>``. DCP writes in place (no temporary and rename, unlike
    save_model): save each checkpoint into a new directory (``ckpt/epoch-3``) rather than over the last one.

    Example (one process; under torchrun the same call on every rank)::

        >>> import os, tempfile, torch
        >>> directory = save_distributed(torch.nn.Linear(4, 2), None, f"{tempfile.mkdtemp()}/linear-dcp")
        >>> sorted(os.listdir(directory))                                    # rank 0 also writes .metadata
        ['.metadata', '__0_0.distcp']
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    directory = Path(directory)
    to_save: dict[str, Any] = {DCP_MODEL_KEY: get_model_state_dict(model)}
    if optimizer is not None:
        to_save[DCP_OPTIM_KEY] = _optimizer_state(model, optimizer, "save_distributed")
    to_save.update(_plain_state(state))
    with _one_process_quietly():
        dcp.save(to_save, checkpoint_id=directory, no_dist=not _group())
    return directory


def load_distributed(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    directory: str | os.PathLike,
    *,
    state: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> None:
    """Load a :func:`save_distributed` checkpoint into ``model``, ``optimizer`` and ``state``, in place.

    Works with any number of ranks and any wrapping: DCP reads the slice each rank holds from whichever
    files hold it. Every key and shape is checked against the checkpoint's metadata before any data is
    read; the data is read into copies, and only then put into the model, the optimizer (``set_state_dict``)
    and ``state`` (dicts updated, Statefuls given ``load_state_dict``). ``.metadata`` and non-tensor entries
    are read without running pickled code unless ``trusted=True`` (see :mod:`torchsmith.checkpoint.dcp`).

    Example::

        >>> import tempfile, torch
        >>> saved = torch.nn.Linear(4, 2)
        >>> directory = save_distributed(saved, None, f"{tempfile.mkdtemp()}/linear-dcp")
        >>> model = torch.nn.Linear(4, 2)
        >>> load_distributed(model, None, directory)
        >>> torch.equal(model.weight, saved.weight)
        True

    Raises:
        CheckpointError: not a DCP directory.
        CorruptCheckpointError: a data file could not be read (truncated, missing) on some rank.
        IncompatibleCheckpointError: missing entries, model entries the model lacks, or shape mismatches (all listed).
        UnsafeCheckpointError: the metadata or an entry needs code to unpickle.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.utils._pytree import tree_map_only

    from .checkpoint.dcp import DCPReader, SafeLoadPlanner, dcp_errors

    directory = Path(directory)
    reader = DCPReader(directory, trusted=trusted)
    metadata = reader.read_metadata()
    wanted: dict[str, Any] = {DCP_MODEL_KEY: get_model_state_dict(model)}
    plain = _plain_state(state)
    _check_against(metadata, {**wanted, **plain}, directory)  # before the optimizer's state is initialised
    if optimizer is not None:
        wanted[DCP_OPTIM_KEY] = _optimizer_state(model, optimizer, "load_distributed")
        _check_against(metadata, {DCP_OPTIM_KEY: wanted[DCP_OPTIM_KEY]}, directory)
    # read into copies: the model, optimizer and state change only once everything has been read
    copies = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), wanted)
    copies.update(copy.deepcopy(plain))
    with dcp_errors(directory):  # the same reader: the metadata it checked is the one the load plans from
        with _one_process_quietly():
            dcp.load(copies, storage_reader=reader, planner=SafeLoadPlanner(trusted=trusted), no_dist=not _group())
    set_model_state_dict(model, copies[DCP_MODEL_KEY])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, copies[DCP_OPTIM_KEY])
    for name, value in (state or {}).items():
        if _stateful(value):
            value.load_state_dict(copies[name])
        else:
            value.clear()
            value.update(copies[name])
