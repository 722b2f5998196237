"""Bounds on what a checkpoint may make torchsmith read, allocate or build.

A few kilobytes of hostile file can ask for gigabytes: a torch file of
expanded views, a header of millions of entries, a ``config.json`` asking
for a 200,000-layer model. Every load checks the file against these bounds
*before* it allocates or builds anything, and a refusal names the bound and
how to raise it. The defaults sit far above real checkpoints (a 671B
mixture-of-experts shard's header is a few MB; the safetensors reference
refuses headers over 100 MB too).

Raise a bound for a file you trust with ``limits=`` on any load function,
or ``--limit NAME=VALUE`` on the command line:

    >>> Limits().max_expansion
    2.0
    >>> big = Limits(max_header_bytes=400 * 2**20)
    >>> big.max_header_bytes, big.max_expansion   # the other bounds keep their defaults
    (419430400, 2.0)
    >>> with applied(big):
    ...     current().max_header_bytes
    419430400
    >>> Limits.parse(["max_expansion=8", "max_config_values=50000"])
    Limits(max_expansion=8.0, max_header_bytes=104857600, max_tensors=300000, max_json_bytes=268435456, max_config_bytes=16777216, max_config_values=50000, max_config_depth=32, max_dcp_entries=100000, max_modules=100000, max_parameters=2000000000)

A bound is a positive number no smaller than its floor (``FLOORS``: below it, nothing could load),
written with ASCII digits (``--limit max_tensors=500_000``; ``max_expansion`` may have a fraction):

    >>> Limits(max_expansion=0.5)
    Traceback (most recent call last):
    ...
    torchsmith.errors.CheckpointError: Limits(max_expansion=0.5): at least 1 (a bound below that refuses every file).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..errors import CheckpointError, CorruptCheckpointError, TorchsmithError, did_you_mean

__all__ = [
    "Limits", "FLOORS", "DCP_ENTRY_BYTES", "applied", "current", "enforce", "enforce_model_size", "how_to_raise",
    "model_size", "takes_limits",
]


@dataclass(frozen=True)
class Limits:
    """What one load may ask for (see the module docstring). Keyword-only; unknown names are refused.

    Attributes:
        max_expansion: a torch file's tensors may take at most this many times the file's size
            (plus 16 MiB) once loaded: tied views share storage, but a small file never turns
            into a huge allocation (an expanded tensor, one storage viewed many times).
        max_header_bytes: the JSON header of one safetensors file.
        max_tensors: tensors in one safetensors file or shard index (a 671B mixture-of-experts
            checkpoint with FP8 scales holds about 100,000; each costs about 2 KiB to plan and
            load, so the default keeps a header's bookkeeping under 1 GB: a 100 MB header of a
            million one-byte tensors is refused before it is parsed).
        max_json_bytes: a shard index (``*.safetensors.index.json``).
        max_config_bytes: a ``save_model`` directory's ``config.json``.
        max_config_values: numbers, strings, lists and dicts in its ``kwargs`` and ``steps``
            (a ResNet needs about 20): checked before the model is built.
        max_config_depth: how deeply those lists and dicts nest.
        max_dcp_entries: stored pieces (tensor chunks and other entries) a distributed
            checkpoint's ``.metadata`` lists; each takes about 3 KiB unpickled and 10 KiB to
            plan (a model sharded over 8 ranks with Adam state: 3 x 8 per parameter tensor).
            ``.metadata`` is refused before it is unpickled when it would take more than
            ``DCP_ENTRY_BYTES`` per entry.
        max_modules: modules a spec or ``config.json`` may build, counted as they are built
            (ResNet-152 has 423; nested ``repeat`` multiplies).
        max_parameters: parameter values a spec or ``config.json`` may build (ResNet-152 has
            60 million), counted on the meta device before a real build allocates them.
    """

    max_expansion: float = 2.0
    max_header_bytes: int = 100 * 2**20
    max_tensors: int = 300_000
    max_json_bytes: int = 256 * 2**20
    max_config_bytes: int = 16 * 2**20
    max_config_values: int = 10_000
    max_config_depth: int = 32
    max_dcp_entries: int = 100_000
    max_modules: int = 100_000
    max_parameters: int = 2_000_000_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _kind(f)
            number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not number or value <= 0 or (kind is int and value != int(value)):
                raise CheckpointError(
                    f"Limits({f.name}={value!r}): expected a positive {'number' if kind is float else 'integer'}."
                )
            if value < FLOORS[f.name]:
                raise CheckpointError(
                    f"Limits({f.name}={value!r}): at least {FLOORS[f.name]:g} (a bound below that refuses every file)."
                )
            object.__setattr__(self, f.name, kind(value))

    @classmethod
    def parse(cls, items: Iterable[str]) -> "Limits":
        """Limits from ``NAME=VALUE`` strings (the CLI's ``--limit``); the rest keep their defaults.

        ``NAME`` is a field name as written here; ``VALUE`` is ASCII digits (``_`` may group them),
        with a fraction only for ``max_expansion``.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for item in items:
            name, sep, text = item.partition("=")
            if not sep or name not in fields:
                hint = did_you_mean(name.strip().replace("-", "_"), fields, n=1) if name else ""
                raise CheckpointError(
                    f"--limit {item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}.{hint}"
                )
            is_float = _kind(fields[name]) is float
            if len(text) > 40 or not (_DECIMAL if is_float else _INTEGER).fullmatch(text):
                raise CheckpointError(
                    f"--limit {item!r}: {text!r} is not {'a number' if is_float else 'a whole number'} written "
                    f"with the digits 0-9 (e.g. {name}={'4' if is_float else '500000'})."
                )
            values[name] = float(text.replace("_", "")) if is_float else int(text.replace("_", ""))
        return cls(**values)


# below these, nothing could load: an empty safetensors header is 8 bytes, a shard index
# ({"weight_map":{}}) 17, the smallest config.json a few hundred, and its [kwargs, steps] 3 values
FLOORS: dict[str, float] = {
    "max_expansion": 1.0,
    "max_header_bytes": 8,
    "max_tensors": 1,
    "max_json_bytes": 16,
    "max_config_bytes": 128,
    "max_config_values": 3,
    "max_config_depth": 1,
    "max_dcp_entries": 1,
    "max_modules": 1,
    "max_parameters": 1,
}
_INTEGER = re.compile(r"[0-9]+(?:_[0-9]+)*")  # ASCII only: str.isdigit and int() accept other scripts' digits
_DECIMAL = re.compile(r"[0-9]+(?:_[0-9]+)*(?:\.[0-9]+)?")
DCP_ENTRY_BYTES = 8192  # what one .metadata entry may take unpickled, in the estimate made before unpickling (torch's: about 6 KiB)


def _kind(field: dataclasses.Field) -> type:
    """``float`` for a bound that may be fractional (``max_expansion``), else ``int``."""
    return float if field.type in (float, "float") else int


_CURRENT: contextvars.ContextVar[Limits] = contextvars.ContextVar("torchsmith_checkpoint_limits", default=Limits())


def current() -> Limits:
    """The limits in effect for the load running in this thread (the defaults unless one was given)."""
    return _CURRENT.get()


@contextlib.contextmanager
def applied(limits: Limits | None) -> Iterator[None]:
    """Run the block under ``limits`` (``None``: keep those in effect)."""
    if limits is None:
        yield
        return
    if not isinstance(limits, Limits):
        raise CheckpointError(f"limits= expects torchsmith.Limits, got {type(limits).__name__}.")
    token = _CURRENT.set(limits)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def how_to_raise(name: str, needed: float | None = None) -> str:
    """The sentence an error ends with: which bound refused the file and how to raise it."""
    value = getattr(current(), name)
    show = (lambda v: f"{v:g}") if isinstance(value, float) else (lambda v: str(int(v)))
    hint = "N" if needed is None else show(needed)
    shown = show(value)
    return f"The limit is {name}={shown}; if you trust the file, raise it: limits=Limits({name}={hint}) (command line: --limit {name}={hint})."


def enforce(name: str, found: int, what: str, *, error: type[TorchsmithError] = CorruptCheckpointError) -> None:
    """Refuse ``found`` over the bound ``name``: ``error("{what}, over the limit. ...")`` (a damaged or hostile
    file by default; the spec builder raises ``SpecError``)."""
    if found > getattr(current(), name):
        raise error(f"{what}, over the limit. {how_to_raise(name, needed=found)}")


def model_size(module) -> tuple[int, int]:
    """``(modules, parameter values)`` of an ``nn.Module``: what ``max_modules`` and ``max_parameters`` bound
    (counted from shapes, so a model on the meta device counts the same as a real one)."""
    return sum(1 for _ in module.modules()), sum(p.numel() for p in module.parameters())


def enforce_model_size(modules: int, parameters: int, what: str, *, error: type[TorchsmithError] = CorruptCheckpointError) -> None:
    """Refuse a model of more than ``max_modules`` modules or ``max_parameters`` parameter values (``what``
    names what asks for it: ``"the spec"``, ``"'run/config.json'"``)."""
    enforce("max_modules", modules, f"{what} builds {modules:,} modules (or more)", error=error)
    enforce("max_parameters", parameters, f"{what} builds {parameters:,} parameter values (or more)", error=error)


F = TypeVar("F", bound=Callable)


def takes_limits(fn: F) -> F:
    """Run ``fn`` under the ``limits=`` keyword it declares (``None``: the limits already in effect)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with applied(kwargs.get("limits")):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
