"""Inference: folding BatchNorm into the conv before it, and ``optimize_for_inference``.

``fold_batchnorm`` and ``optimize_for_inference`` change the model in place and return it (with
``compile=True`` the second returns a ``torch.compile`` wrapper around it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..runner import CONV_TYPES
from ..errors import SurgeryError
from ..layers import FrozenBatchNorm2d
from ..steps import record, recorded_op
from .freeze import pinned_eval
from .modules import put
from .quantize import quantize_int8

__all__ = ["fold_batchnorm", "optimize_for_inference"]

logger = logging.getLogger("torchsmith")


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s affine map and statistics into ``conv`` (in place)."""
    with torch.no_grad():
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt() if bn.weight is not None else (bn.running_var + bn.eps).rsqrt()
        shift = (bn.bias if bn.bias is not None else 0) - bn.running_mean * scale
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)  # (O, 1, 1, 1): one scale per output channel
        weight = conv.weight * scale.reshape(shape).to(conv.weight.dtype)
        bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=conv.weight.requires_grad)


def _foldable_bn(module: nn.Module) -> bool:
    """FrozenBatchNorm2d, or an eval BatchNorm with statistics and BatchNorm's own forward (not timm's
    ``BatchNormAct2d``, whose activation would be lost)."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    plain = type(module).forward in (_BatchNorm.forward, nn.BatchNorm2d.forward) and not module._modules
    return isinstance(module, _BatchNorm) and plain and module.running_mean is not None and not module.training


class _NormLeafTracer(fx.Tracer):
    """torch.fx's tracer, keeping FrozenBatchNorm2d as one call (not traced into) so it can be folded."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, FrozenBatchNorm2d) or super().is_leaf_module(m, module_qualified_name)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) paths where the BatchNorm only ever sees that conv's output and nothing else reads it."""
    try:
        graph = _NormLeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - untraceable: only Sequential neighbours are certain
        logger.info("torch.fx cannot trace %s (%s); folding BatchNorm in nn.Sequential only", type(model).__name__, err)
        pairs = []
        for prefix, seq in model.named_modules():
            if isinstance(seq, nn.Sequential):
                names = list(seq._modules)
                pairs += [(f"{prefix}.{a}" if prefix else a, f"{prefix}.{b}" if prefix else b) for a, b in zip(names, names[1:])]
        counts: dict[int, int] = {}
        for _, m in model.named_modules(remove_duplicate=False):
            counts[id(m)] = counts.get(id(m), 0) + 1
        return [(c, b) for c, b in pairs if counts[id(model.get_submodule(c))] == 1 and counts[id(model.get_submodule(b))] == 1]
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1:
            if calls[node.target] == 1 and calls[source.target] == 1:
                pairs.append((source.target, node.target))
    return pairs


@recorded_op("fold_batchnorm", replay=lambda model, step: fold_pairs(model, step["pairs"]))
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a conv into that conv; returns ``model``.

    The BatchNorm becomes ``nn.Identity``; module names and the model's class stay.
    Pairs come from a torch.fx trace, or, for a model fx cannot trace, from
    neighbours in ``nn.Sequential`` containers.

    Raises:
        SurgeryError: a BatchNorm of a pair is in train mode (it normalises with
            the batch's statistics, which no fold can reproduce): call
            ``model.eval()`` first. Nothing is folded then.

    Example::

        >>> model = fold_batchnorm(create_model("resnet18").eval())
        >>> model.bn1, model.conv1.bias.shape
        (Identity(), torch.Size([64]))
    """
    pairs = []
    for conv_path, bn_path in _conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
        if isinstance(conv, CONV_TYPES) and isinstance(bn, (_BatchNorm, FrozenBatchNorm2d)) and bn.num_features == conv.out_channels:
            pairs.append((conv_path, bn_path))
    training = [b for _, b in pairs if isinstance(model.get_submodule(b), _BatchNorm) and model.get_submodule(b).training]
    training = [b for b in training if not pinned_eval(model.get_submodule(b))]
    if training:
        raise SurgeryError(
            f"fold_batchnorm needs eval mode: {len(training)} BatchNorm layers after a conv are in train mode "
            f"({', '.join(training[:3])}{' ...' if len(training) > 3 else ''}) and use each batch's statistics. "
            "Call model.eval() first (or use optimize_for_inference, which works on an eval copy)."
        )
    fold_pairs(model, [[c, b] for c, b in pairs if _foldable_bn(model.get_submodule(b))])
    return model


def fold_pairs(model: nn.Module, pairs: list[list[str]]) -> nn.Module:
    """Fold each ``[conv, bn]`` pair (already checked, or replayed from a recorded step), record the step;
    returns ``model``."""
    for conv_path, bn_path in pairs:
        _fold(model.get_submodule(conv_path), model.get_submodule(bn_path))
        put(model, bn_path, nn.Identity())
    if pairs:
        record(model, "fold_batchnorm", pairs=[list(p) for p in pairs])
    return model


def _replay_optimized(model: nn.Module, step) -> nn.Module:
    """The structure of :func:`optimize_for_inference` after its folds (replayed as their own steps): no grad.
    Eval mode and channels-last come once the weights are in (:func:`_after_load_optimized`)."""
    model.requires_grad_(False)
    record(model, **step)
    return model


def _after_load_optimized(model: nn.Module, step) -> None:
    inference_ready(model, channels_last=bool(step.get("channels_last")))


@recorded_op("optimize_for_inference", replay=_replay_optimized, after_load=_after_load_optimized)
def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    compile: bool = False,
    dtype: str | None = None,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Make ``model`` faster for inference, in place: eval mode, and what follows; returns ``model``.

    ``copy.deepcopy(model)`` first to keep the original. Conv+BatchNorm folded (:func:`fold_batchnorm`), 4-D weights in
    channels-last memory format (oneDNN's fast path on CPU, tensor cores on
    GPU), parameters with ``requires_grad=False`` (no autograd bookkeeping even
    outside ``no_grad``). Outputs equal the original's within ``1e-4 * max|y|``.

    With ``compile=True`` the model is also wrapped in ``torch.compile`` with
    Inductor's weight freezing (constant-folded, pre-packed weights, fused
    conv + add + ReLU): faster still, at the cost of a compile on the first
    call; call it under ``torch.inference_mode()`` or ``torch.no_grad()``
    (freezing applies only there). No TorchScript is involved.

    ``dtype="int8"`` (x86 CPUs, needs ``torchsmith[int8]``): a new compiled int8 module from PyTorch 2
    export quantization, calibrated on ``calibration`` (a few batches of real inputs) and refused
    (``SurgeryError``) when its top-1 predictions agree with ``model``'s on less than 99% of them;
    ``model`` itself is left as it was; it is always compiled (``compile``, ``channels_last`` do not
    apply). Not saveable: ``save_model`` the float model, quantize after ``load_model``
    (:mod:`torchsmith.surgery.quantize`).

    Example::

        >>> fast = optimize_for_inference(create_model("resnet50"))
        >>> fast.training, fast.bn1, fast.conv1.weight.requires_grad
        (False, Identity(), False)
        >>> faster = optimize_for_inference(create_model("mlp"), compile=True)
        >>> with torch.inference_mode():
        ...     faster(torch.randn(8, 784)).shape   # compiles once (resnet50: ~1.5x eager on CPU after)
        torch.Size([8, 10])
    """
    if dtype is not None:
        if dtype != "int8" or calibration is None:
            raise SurgeryError(
                f"optimize_for_inference(dtype={dtype!r}, calibration={'...' if calibration is not None else None}): "
                f"dtype takes 'int8' (with calibration=, a few batches of real inputs) or None (float)."
            )
        return quantize_int8(model, calibration)
    fast = model.eval()
    fold_batchnorm(fast)
    inference_ready(fast, channels_last=channels_last)
    record(fast, "optimize_for_inference", channels_last=channels_last)
    if compile:
        # per-call Inductor options: no global switch is flipped
        fast = torch.compile(fast, options={"freezing": True})
    return fast


def inference_ready(model: nn.Module, *, channels_last: bool) -> None:
    """The rest of :func:`optimize_for_inference` after folding (also replayed after ``load_model`` reads weights)."""
    model.eval().requires_grad_(False)
    if channels_last and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
