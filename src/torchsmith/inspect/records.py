"""Per-layer records: what one module call produced (shapes of every output leaf, parameters, FLOPs, bytes).

Nothing here runs a model; :mod:`.collect` fills these records and :mod:`.format` prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..runner import tensor_leaves

__all__ = ["OutputLeaf", "LayerRecord", "output_leaves", "format_shape"]


@dataclass(frozen=True)
class OutputLeaf:
    """One tensor inside a module's output: where it sits (``"logits"``, ``"[0]"``, ``""`` for a bare tensor)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.nbytes}


@dataclass
class LayerRecord:
    """One module call (or one module that never ran) in a :class:`~torchsmith.Summary`.

    ``params`` counts the module's distinct parameters (a tied weight once); ``flops`` includes its
    children's. ``status`` is ``"ok"``, ``"failed"`` (the forward raised inside it), ``"unfinished"``
    (it was running when a child failed), ``"not run"`` (never called) or ``"not reached"`` (the
    forward stopped before it).
    """

    path: str
    type: str
    depth: int
    call: int = 1  # 1 for the first call of this module, 2 for its second, ...
    params: int = 0
    trainable: str = "--"  # "yes" | "no" | "partial" | "--" (no parameters)
    tied: tuple[str, ...] = ()  # parameters of this module that other modules also hold
    outputs: list[OutputLeaf] = field(default_factory=list)
    flops: int = 0
    status: str = "ok"

    @property
    def output_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in self.outputs)

    def __repr__(self) -> str:  # one line: where, what, shapes out, parameters, FLOPs
        shapes = ", ".join((f"{leaf.key}: " if leaf.key else "") + format_shape(leaf.shape) for leaf in self.outputs)
        call = f", call {self.call}" if self.call > 1 else ""
        status = f", {self.status}" if self.status != "ok" else ""
        return (f"LayerRecord({self.path or '<model>'!r}, {self.type}{call}: out {shapes or '--'}, "
                f"{self.params:,} params, {self.flops:,} FLOPs{status})")

    @property
    def name(self) -> str:
        """The last component of the path (``"conv1"``), or the class name for the root."""
        return self.path.rsplit(".", 1)[-1] if self.path else self.type

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "depth": self.depth,
            "call": self.call,
            "params": self.params,
            "trainable": self.trainable,
            "tied": list(self.tied),
            "outputs": [leaf.to_dict() for leaf in self.outputs],
            "flops": self.flops,
            "output_bytes": self.output_bytes,
            "status": self.status,
        }


def _leaf(key: str, t: torch.Tensor) -> OutputLeaf:
    return OutputLeaf(key, tuple(t.shape), str(t.dtype).removeprefix("torch."), t.numel() * t.element_size())


def output_leaves(obj: Any) -> Iterator[OutputLeaf]:
    """Every tensor in a (nested) tuple / list / dict / dataclass / ``ModelOutput``, with its key path
    (walked by :func:`torchsmith.runner.tensor_leaves`).

    >>> out = {"logits": torch.zeros(2, 8, 100), "hidden": (torch.zeros(2, 8, 32),)}
    >>> [(leaf.key, leaf.shape) for leaf in output_leaves(out)]
    [('logits', (2, 8, 100)), ('hidden.0', (2, 8, 32))]
    """
    for key, t in tensor_leaves(obj):
        yield _leaf(key, t)


def format_shape(shape: tuple[int, ...]) -> str:
    """``(1, 64, 56, 56)`` as written by Python (``(7,)`` for one dimension, ``()`` for a scalar).

    >>> format_shape((1, 64, 56, 56)), format_shape((7,))
    ('(1, 64, 56, 56)', '(7,)')
    """
    return str(tuple(shape))
