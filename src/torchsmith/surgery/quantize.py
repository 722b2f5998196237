"""int8 inference on x86 CPUs: PyTorch 2 export quantization, lowered by Inductor to oneDNN's int8 kernels.

:func:`quantize_int8` returns a new, compiled module and leaves the model it is given as it was
(``optimize_for_inference(model, dtype="int8", calibration=...)`` calls it). The route, each step of
which is a library's own:

1. ``torch.export`` (strict: TorchDynamo records which module or function each node came from, which
   the quantizer matches patterns on), then functionalised (``x += y`` becomes an add);
2. torchao's ``X86InductorQuantizer``: int8 activations (per tensor, observed on the calibration
   batches) and int8 weights (per output channel), conv + BatchNorm folded, conv + add + ReLU as one
   quantized pattern;
3. ``torch.compile`` with Inductor's weight freezing (per call, no global switch): the quantize /
   dequantize pairs become oneDNN int8 convolutions and matmuls (VNNI / AMX where the CPU has them).

The result is checked before it is returned: on every calibration batch its top-1 prediction (the
argmax over dimension 1 of the main output, per sample and position) must agree with the float
model's at least ``min_agreement`` of the time, else :class:`~torchsmith.errors.SurgeryError`.

Needs ``torchao`` (``pip install 'torchsmith[int8]'``), imported only when int8 is asked for.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import SurgeryError
from ..runner import ExampleInputs, as_call, main_output, modes_kept

__all__ = ["quantize_int8", "top1_agreement", "Int8Model", "QUANTIZED_ATTR"]

QUANTIZED_ATTR = "torchsmith_quantized"  # an attribute of the int8 model: save_model names it in its refusal
MIN_AGREEMENT = 0.99


def _torchao():
    try:
        from torchao.quantization.pt2e import quantizer as _  # noqa: F401
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as e:
        raise SurgeryError(
            f"optimize_for_inference(dtype='int8') needs torchao (PyTorch 2 export quantization): "
            f"pip install 'torchsmith[int8]' (or pip install torchao). ({e})"
        ) from e
    return prepare_pt2e, convert_pt2e, x86


def top1_agreement(reference: Any, candidate: Any) -> float:
    """The share of top-1 predictions (argmax over dimension 1 of the main output) that agree.

    >>> top1_agreement(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([[0.2, 0.7], [0.1, 0.3]]))
    0.5
    """
    a, b = main_output(reference), main_output(candidate)
    if a is None or b is None or a.shape != b.shape or a.dim() < 2:
        raise SurgeryError(
            "optimize_for_inference(dtype='int8') checks the result by its top-1 predictions, which needs a "
            "(B, C, ...) tensor output (logits); this model's output is not one."
        )
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


class Int8Model(nn.Module):
    """The quantized graph, compiled by Inductor with weight freezing on each call (no global switch:
    Inductor's int8 weight packing reads its ``freezing`` option outside ``torch.compile(options=)``).

    Call it under ``torch.inference_mode()`` or ``torch.no_grad()``: freezing applies only there. The
    first call with a new input shape compiles (seconds); keep batch shapes few.
    """

    torchsmith_quantized = "int8"  # QUANTIZED_ATTR: save_model names it in its refusal

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph_module = graph
        # static shapes: each new batch size compiles once (Inductor's int8 convolutions mis-stride under
        # a symbolic batch in torch 2.13); the graph itself takes any batch size
        self.compiled = torch.compile(graph, dynamic=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def _export(model: nn.Module, call) -> torch.fx.GraphModule:
    """The model as a functional ATen graph whose nodes name their source module or function (batch size dynamic)."""
    args, kwargs = call
    dims = tuple({0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
    program = torch.export.export(model, args, kwargs, dynamic_shapes=dims if not kwargs else None, strict=True)
    program = program.run_decompositions({})  # functional: "out += identity" becomes an add
    for node in program.graph.nodes:  # ... and is matched as one, so conv + add + ReLU quantize together
        stack = node.meta.get("source_fn_stack")
        if stack and stack[-1][1] is operator.iadd and node.target == torch.ops.aten.add.Tensor:
            node.meta["source_fn_stack"] = [*stack[:-1], (stack[-1][0], operator.add)]
    return program.module()


def quantize_int8(
    model: nn.Module, calibration: Iterable[ExampleInputs], *, min_agreement: float = MIN_AGREEMENT
) -> nn.Module:
    """A compiled int8 copy of ``model``, calibrated on ``calibration`` and checked on it; ``model`` is unchanged.

    ``calibration``: a few batches of real inputs, each what you pass to the model (a tensor, a tuple of
    positional arguments or a dict of keyword arguments); a hundred or so samples in all are plenty.

    Raises:
        SurgeryError: torchao missing, no calibration batch, the model does not export, or the int8
            model's top-1 predictions agree with the float model's on less than ``min_agreement`` of
            the calibration data (nothing is returned then).
    """
    prepare_pt2e, convert_pt2e, x86 = _torchao()
    calls = [as_call(batch, error=SurgeryError) for batch in calibration]
    if not calls:
        raise SurgeryError("optimize_for_inference(dtype='int8') needs calibration=: a few batches of real inputs.")
    with modes_kept(model, training=False), torch.no_grad():
        try:
            graph = _export(model, calls[0])
        except Exception as e:  # the model's own code, or what export cannot capture
            raise SurgeryError(
                f"optimize_for_inference(dtype='int8'): torch.export cannot capture {type(model).__name__} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). int8 needs an exportable model."
            ) from e
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        for args, kwargs in calls:  # observers record each activation's range
            prepared(*args, **kwargs)
        converted = convert_pt2e(prepared)
        fast = Int8Model(converted)
        with torch.inference_mode():
            agreed = [top1_agreement(model(*a, **k), fast(*a, **k)) for a, k in calls]
    agreement = sum(agreed) / len(agreed)
    if agreement < min_agreement:
        raise SurgeryError(
            f"optimize_for_inference(dtype='int8'): the int8 model's top-1 predictions agree with the float "
            f"model's on {agreement:.1%} of the calibration data, below the {min_agreement:.0%} allowed; nothing "
            f"was changed. Calibrate on more representative batches, or keep this model in float32."
        )
    return fast
