"""Totals: parameters (a shared or tied one counted once), bytes per dtype, FLOPs, training memory.

Units: FLOPs count one multiply or one add (2 x MACs, as ``torch.utils.flop_counter``); bytes are
binary (KiB, MiB, GiB).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..units import format_bytes

__all__ = ["Totals", "model_totals", "format_bytes", "format_flops"]


@dataclass
class Totals:
    """Whole-model figures of a :class:`~torchsmith.Summary`.

    ``training_bytes`` is a training step with Adam: weights and buffers + gradients of the
    trainable parameters + Adam's two states of them + the activations saved for backward.
    """

    total_params: int
    trainable_params: int
    param_bytes: dict[str, int]  # dtype name -> bytes, e.g. {"float32": 46_758_048}
    trainable_bytes: int
    buffer_bytes: int
    total_flops: int = 0
    saved_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(self.param_bytes.values())

    @property
    def training_bytes(self) -> int:
        return self.weight_bytes + self.buffer_bytes + 3 * self.trainable_bytes + self.saved_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "param_bytes": dict(self.param_bytes),
            "trainable_bytes": self.trainable_bytes,
            "buffer_bytes": self.buffer_bytes,
            "total_flops": self.total_flops,
            "saved_activation_bytes": self.saved_bytes,
            "training_bytes_adam": self.training_bytes,
        }


def model_totals(model: nn.Module) -> Totals:
    """Parameter counts and bytes of ``model`` (``model.parameters()`` yields a tied parameter once).

    >>> t = model_totals(nn.Linear(4, 2))
    >>> t.total_params, t.param_bytes
    (10, {'float32': 40})
    """
    by_dtype: Counter = Counter()
    total = trainable = trainable_bytes = 0
    for p in model.parameters():
        nbytes = p.numel() * p.element_size()
        by_dtype[str(p.dtype).removeprefix("torch.")] += nbytes
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            trainable_bytes += nbytes
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return Totals(total, trainable, dict(by_dtype), trainable_bytes, buffers)




def format_flops(n: int, unit: str = "FLOPs") -> str:
    """``23_030_000_000`` -> ``'23.03 GFLOPs'`` (decimal prefixes).

    >>> format_flops(23_034_912_768), format_flops(0)
    ('23.03 GFLOPs', '0 FLOPs')
    """
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n} {unit}"
