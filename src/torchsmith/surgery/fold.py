"""Inference: folding BatchNorm into the conv before it, and ``optimize_for_inference``.

``fold_batchnorm`` and ``optimize_for_inference`` change the model in place and return it (with
``compile=True`` the second returns a ``torch.compile`` wrapper around it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import SurgeryError
from ..paths import unwrapped
from ..runner import Call, example_input, map_tensors, on_stand_ins, restored_on_failure, tensor_leaves
from ..steps import record, recorded_op
from .check import checking_call
from .fold_proof import foldable_bn, observed_pairs, traced_pairs
from .freeze import pinned_eval
from .modules import first_tensor, put
from .parametrized import unparametrized
from .quantize import quantize_int8

__all__ = ["fold_batchnorm", "optimize_for_inference"]

logger = logging.getLogger("torchsmith")

TOLERANCE = 1e-4  # a fold may change float32 outputs by at most this much of max|y| (more in lower precision)
SMALL = 64  # the side of a guessed input the check runs for real: a 3-D conv's guess of 224^3 would be costly


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s affine map and statistics into ``conv`` (in place); a parametrized conv (weight_norm ...)
    first becomes a plain one holding its current weight."""
    unparametrized(conv)
    with torch.no_grad():
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt() if bn.weight is not None else (bn.running_var + bn.eps).rsqrt()
        shift = (bn.bias if bn.bias is not None else 0) - bn.running_mean * scale
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)  # (O, 1, 1, 1): one scale per output channel
        weight = conv.weight * scale.reshape(shape).to(conv.weight.dtype)
        bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=conv.weight.requires_grad)


def _check_call(model: nn.Module, input_size: Sequence[int] | None, example_inputs: Any) -> Call | None:
    """The call the fold is proven and checked on: the given one, else a small guessed image (``SMALL`` a side)
    when the model runs at that size, else the runner's guess; None when nothing runs it."""
    if input_size or example_inputs is not None:
        return checking_call(model, input_size=input_size, example_inputs=example_inputs, action="fold_batchnorm")
    try:
        guess = example_input(model, error=SurgeryError)
    except SurgeryError:
        return None
    if guess.dim() >= 3 and guess.is_floating_point():
        small = (*guess.shape[:2], *[SMALL] * (guess.dim() - 2))
        with contextlib.suppress(SurgeryError):  # a model with one input size: the full guess below
            return checking_call(model, input_size=small, action="fold_batchnorm")
    return checking_call(model, action="fold_batchnorm")


def _proven_pairs(model: nn.Module, call: Call | None) -> list[tuple[str, str]]:
    """The (conv, BatchNorm) pairs a torch.fx graph proves, else one observed run (nothing without a call)."""
    pairs = traced_pairs(model)
    if pairs is not None:
        return pairs
    if call is None:
        logger.info("fold_batchnorm: torch.fx cannot trace %s and no example input runs it: nothing folded "
                    "(pass example_inputs= to fold what one run proves)", type(model).__name__)
        return []
    logger.info("fold_batchnorm: torch.fx cannot trace %s; folding the pairs one run proves", type(model).__name__)
    return observed_pairs(model, call)


# the outputs, before and after


def _real_call(model: nn.Module, call: Call) -> Call | None:
    """``call`` with inputs given by shape made real (floats random, seeded; integers zeros) on the model's
    device; None when the model has no real weights to compute with."""
    ref = first_tensor(model)
    if ref is None or ref.is_meta:
        return None
    generator = torch.Generator().manual_seed(0)

    def real(t: torch.Tensor) -> torch.Tensor:
        if not t.is_meta:
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(ref.device)
        return torch.zeros(t.shape, dtype=t.dtype, device=ref.device)

    return map_tensors(call[0], real), map_tensors(call[1], real)


def _outputs(model: nn.Module, call: Call) -> Any:
    """One real eval-mode run (running statistics untouched); None when it cannot run."""
    try:
        with torch.no_grad(), on_stand_ins(model, call, backend="real", training=False) as run:
            return run.forward()
    except Exception as err:  # noqa: BLE001 - no reference: the fold is not checked (logged)
        logger.info("fold_batchnorm: %s does not run for real on the example input (%s); the fold is not checked",
                    type(model).__name__, err)
        return None


def _difference(before: Any, after: Any) -> float:
    """The largest change between two outputs, relative to each floating tensor's ``max|y|``: ``inf`` when
    their structure, shapes or exact (integer) values differ."""
    old, new = list(tensor_leaves(before)), list(tensor_leaves(after))
    if [k for k, _ in old] != [k for k, _ in new] or any(a.shape != b.shape for (_, a), (_, b) in zip(old, new)):
        return math.inf
    worst = 0.0
    for (_, a), (_, b) in zip(old, new):
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return math.inf
            continue
        scale = max(float(a.abs().max()), torch.finfo(a.dtype).tiny) if a.numel() else 1.0
        worst = max(worst, float((a.float() - b.float()).abs().max()) / scale if a.numel() else 0.0)
    return worst


def _check_outputs(model: nn.Module, call: Call, reference: Any, pairs: list[list[str]],
                   seen: dict[str, tuple[Any, torch.Tensor]]) -> None:
    """Raise :class:`SurgeryError` when the folded model's outputs differ from ``reference`` beyond tolerance.

    Outputs that select discretely (a detector's labels and boxes: integers, or a number of rows that float
    rounding can flip) are judged fold by fold instead: each folded conv on the input its pair saw."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tolerance = max(TOLERANCE, 10 * torch.finfo(dtype).eps)
    folded = _outputs(model, call)
    changed = _difference(reference, folded)
    if changed > tolerance and _each_fold_kept(model, pairs, seen, tolerance):
        if math.isinf(changed) or changed <= tolerance + 4 * _rounding(model, call, folded):
            logger.info("fold_batchnorm: %s moved %.2e (rounding, or a discrete selection); each of %d folds "
                        "checked on its own input", type(model).__name__, changed, len(pairs))
            return
    if changed > tolerance:
        shown = ", ".join(f"{c} + {b}" for c, b in pairs[:4]) + (" ..." if len(pairs) > 4 else "")
        how = (f"would change integer outputs of {type(model).__name__} (labels, indices: a selection such as a "
               "detector's boxes, which float rounding can flip)" if math.isinf(changed) else
               f"would change the outputs of {type(model).__name__} by {changed:.2e} of max|y| (more than {tolerance:.0e})")
        raise SurgeryError(
            f"fold_batchnorm: folding {len(pairs)} BatchNorm layers ({shown}) {how}; nothing was folded. Either a "
            "layer's forward does more than its class says, or the outputs select discretely: use fold_batchnorm on "
            "a submodule whose outputs are continuous (a detector's model.backbone), or leave those BatchNorms."
        )


@recorded_op("fold_batchnorm", replay=lambda model, step: fold_pairs(model, step["pairs"]))
def fold_batchnorm(model: nn.Module, *, example_inputs: Any = None, input_size: Sequence[int] | None = None) -> nn.Module:
    """Fold every eval-mode BatchNorm fed by a conv alone into that conv; returns ``model``.

    The BatchNorm becomes ``nn.Identity``; module names and the model's class stay.
    Only proven pairs are folded: a torch.fx trace shows the BatchNorm reads
    the conv's output and nothing else does, or, for a model fx cannot trace,
    one run on ``example_inputs`` / ``input_size`` (else a guessed input, 64
    pixels a side where the model runs at that size) shows it with hooks; and the conv is a plain one (a subclass with its own
    forward, such as timm's weight-standardised ``StdConv2d``, is left). Then
    the folded model is run against the original on that input (random values,
    eval mode) and the fold is rolled back if an output moved more than
    ``1e-4 * max|y|`` (float32); outputs that select discretely (a detector's
    labels and boxes, which rounding can flip) are judged fold by fold: each
    folded conv on the very input its pair saw. A model with no weights to run (meta) or no
    input that runs it is folded unchecked (logged); an untraceable one with no
    such input is not folded. A parametrized conv (``weight_norm`` ...) becomes
    a plain conv holding its folded weight.

    Raises:
        SurgeryError: a BatchNorm of a pair is in train mode (it normalises with
            the batch's statistics, which no fold can reproduce): call
            ``model.eval()`` first; or the outputs would change. Nothing is folded then.

    Example::

        >>> model = fold_batchnorm(create_model("resnet18").eval())
        >>> model.bn1, model.conv1.bias.shape
        (Identity(), torch.Size([64]))
    """
    inner = unwrapped(model)
    call = _check_call(inner, input_size, example_inputs)
    pairs = _proven_pairs(inner, call)
    training = [b for _, b in pairs if isinstance(inner.get_submodule(b), _BatchNorm) and inner.get_submodule(b).training]
    training = [b for b in training if not pinned_eval(inner.get_submodule(b))]
    if training:
        raise SurgeryError(
            f"fold_batchnorm needs eval mode: {len(training)} BatchNorm layers after a conv are in train mode "
            f"({', '.join(training[:3])}{' ...' if len(training) > 3 else ''}) and use each batch's statistics. "
            "Call model.eval() first (or use optimize_for_inference, which works on an eval copy)."
        )
    pairs = [[c, b] for c, b in pairs if foldable_bn(inner.get_submodule(b))]
    if not pairs:
        return model
    real = _real_call(inner, call) if call is not None else None
    seen: dict[str, tuple[Any, torch.Tensor]] = {}
    with _seen_by_pairs(inner, pairs, seen):
        reference = _outputs(inner, real) if real is not None else None
    with restored_on_failure(inner):
        fold_pairs(inner, pairs)
        if reference is not None:
            _check_outputs(inner, real, reference, pairs, seen)
    return model


@contextlib.contextmanager
def _seen_by_pairs(model: nn.Module, pairs: list[list[str]], seen: dict[str, tuple[Any, torch.Tensor]]):
    """Hooks, removed on exit, that keep each pair's conv input and BatchNorm output of one run (the first call)."""
    handles = []

    def keep_input(path: str):
        def hook(m, args) -> None:  # a copy: a later in-place op must not change what the check replays
            if path not in seen:
                seen[path] = (map_tensors(args, lambda t: t.detach().clone()), None)
        return hook

    def keep_output(conv_path: str):
        def hook(m, args, out):
            if conv_path in seen and seen[conv_path][1] is None and isinstance(out, torch.Tensor):
                seen[conv_path] = (seen[conv_path][0], out.detach().clone())
        return hook

    try:
        for conv_path, bn_path in pairs:
            handles.append(model.get_submodule(conv_path).register_forward_pre_hook(keep_input(conv_path)))
            handles.append(model.get_submodule(bn_path).register_forward_hook(keep_output(conv_path)))
        yield seen
    finally:
        for h in handles:
            h.remove()


def _rounding(model: nn.Module, call: Call, outputs: Any) -> float:
    """How far float32 rounding alone moves ``model``'s outputs: float32 against a float64 copy (relative to
    ``max|y|``; 0 where float64 does not run; inf where rounding alone changes which boxes a detector keeps).
    An ill-conditioned model (a detector's box regression through RoIAlign) moves 1e-3 under any reordering."""
    try:
        wide = copy.deepcopy(model).double()
        to64 = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
        wide_out = _outputs(wide, (map_tensors(call[0], to64), map_tensors(call[1], to64)))
    except Exception:  # noqa: BLE001 - no float64: no allowance
        return 0.0
    return _difference(outputs, wide_out) if wide_out is not None else 0.0  # inf: rounding alone flips a selection


def _each_fold_kept(model: nn.Module, pairs: list[list[str]], seen: dict[str, tuple[Any, torch.Tensor]], tolerance: float) -> bool:
    """Every folded conv, run on the very input its pair saw, gives what its BatchNorm gave (within ``tolerance``
    of ``max|y|``): the folds are right whatever the model does downstream with their outputs."""
    for conv_path, _ in pairs:
        args, want = seen.get(conv_path, (None, None))
        if want is None:
            return False
        with torch.no_grad():
            got = model.get_submodule(conv_path)(*args)
        if got.shape != want.shape or _difference(want, got) > tolerance:
            return False
    return True


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
    example_inputs: Any = None,
    input_size: Sequence[int] | None = None,
    dtype: str | None = None,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Make ``model`` faster for inference, in place: eval mode, and what follows; returns ``model``.

    ``copy.deepcopy(model)`` first to keep the original. Conv+BatchNorm folded (:func:`fold_batchnorm`), 4-D weights in
    channels-last memory format (oneDNN's fast path on CPU, tensor cores on
    GPU), parameters with ``requires_grad=False`` (no autograd bookkeeping even
    outside ``no_grad``). Outputs equal the original's within ``1e-4 * max|y|``:
    the fold is checked on ``example_inputs`` / ``input_size`` (else a guessed
    input) and refused, leaving the model as it was, when they would not.

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
        return quantize_int8(unwrapped(model), calibration)
    fast = unwrapped(model)
    with restored_on_failure(fast):  # a refused fold leaves the model's modes as they were too
        fast.eval()
        fold_batchnorm(fast, example_inputs=example_inputs, input_size=input_size)
    inference_ready(fast, channels_last=channels_last)
    record(fast, "optimize_for_inference", channels_last=channels_last)
    if compile:
        # per-call Inductor options: no global switch is flipped
        return torch.compile(fast, options={"freezing": True})
    return model


def inference_ready(model: nn.Module, *, channels_last: bool) -> None:
    """The rest of :func:`optimize_for_inference` after folding (also replayed after ``load_model`` reads weights)."""
    model.eval().requires_grad_(False)
    if channels_last:  # 4-D tensors only: Module.to(memory_format=) fails on 5-D ones (timm's lambda layers)
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
