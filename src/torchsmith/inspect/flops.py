"""FLOP formulas: PyTorch's own (``torch.utils.flop_counter.flop_registry``) plus the ops it lacks.

One FLOP is one multiply or one add, so a multiply-accumulate is 2 FLOPs (the convention of
``FlopCounterMode``: resnet152 at 224x224 is 23.03 GFLOPs, 11.5 GMACs). Added here: the CPU
flash-attention kernel of ``scaled_dot_product_attention`` and the fused CPU LSTM layer
(``mkldnn_rnn_layer``); GRU and LSTM on other backends decompose to ``addmm`` and are counted there.
Element-wise ops and reductions are not counted (as in ``FlopCounterMode``); the summary lists them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

__all__ = ["FORMULAS", "count_flops", "counts_nothing"]

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _sdpa_cpu_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(_shape(query), _shape(key), _shape(value))


def _mkldnn_rnn_layer_flop(input, weight0, weight1, *args, out_val=None, **kwargs) -> int:
    # input (seq, batch, in) or (batch, seq, in); weight0 (G*H, in) input-to-gates, weight1 (G*H, H) hidden-to-gates
    seq, batch = input.shape[0], input.shape[1]
    gates, n_in = weight0.shape
    hidden = weight1.shape[1]
    return 2 * seq * batch * gates * (n_in + hidden)


FORMULAS: dict[Any, Any] = dict(flop_registry)
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
if hasattr(aten, "mkldnn_rnn_layer"):
    FORMULAS[aten.mkldnn_rnn_layer] = _mkldnn_rnn_layer_flop

# ops that move, view, create or convert tensors: no arithmetic, so not listed as "not counted"
_NO_ARITHMETIC = {
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided", "arange", "scalar_tensor", "lift_fresh",
    "clone", "copy_", "_to_copy", "detach", "alias", "contiguous", "cat", "stack", "split", "split_with_sizes",
    "unsafe_split", "chunk", "unbind", "index_select", "gather", "slice_scatter", "select_scatter", "fill_",
    "zero_", "masked_fill", "masked_fill_", "index", "index_put_", "constant_pad_nd", "pad", "repeat", "tril",
    "triu", "embedding", "_unsafe_view", "_reshape_alias", "sym_size", "sym_stride", "sym_numel", "is_same_size",
    "_local_scalar_dense", "item", "native_dropout", "bernoulli_", "rand_like", "randn_like", "randint",
    "uniform_", "normal_", "upsample_nearest2d", "upsample_nearest1d", "upsample_nearest3d", "_unsafe_index",
    "flip", "roll", "channel_shuffle", "pixel_shuffle", "_assert_async", "_assert_tensor_metadata", "to",
    "_unsafe_index_put", "resize_", "device",
}


def count_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> int | None:
    """FLOPs of one aten op call, or ``None`` when no formula covers it.

    >>> a, b = torch.empty(8, 16, device="meta"), torch.empty(16, 4, device="meta")
    >>> count_flops(torch.ops.aten.mm.default, (a, b), {}, a @ b)   # 2 * 8 * 16 * 4
    1024
    """
    formula = FORMULAS.get(func.overloadpacket)
    if formula is None:
        return None
    return int(formula(*args, **kwargs, out_val=out))


def counts_nothing(func: Any) -> bool:
    """True for ops without arithmetic (views, creation, copies): not worth listing as uncounted."""
    return func.is_view or func.overloadpacket.__name__.rstrip("_") in _NO_ARITHMETIC or \
        func.overloadpacket.__name__ in _NO_ARITHMETIC
