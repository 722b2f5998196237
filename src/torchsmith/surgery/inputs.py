"""Extra inputs: the tutorial's two-input model, a backbone's features (or its output) fused with an extra vector.

``add_inputs`` returns a new wrapper around the model (whose head it changes in place).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import HeadNotFoundError, SurgeryError
from ..paths import unwrapped
from ..registry import model_config, set_config
from ..runner import Call, example_call, main_output, probe, restored_on_failure
from ..steps import record, recorded_op
from .check import check_runs
from ..zoo.multi_input import MultiInputModel, check_fusion
from .heads import find_head, recording, replace_head
from .modules import first_tensor, get_module, put

__all__ = ["add_inputs"]

FUSES = ("features", "output")  # add_inputs(fuse=...): what goes into the head, or the model's output
logger = logging.getLogger("torchsmith")



class _HeadReached(Exception):
    """Raised by :class:`_HeadInput`'s hook: the rest of the forward is skipped."""


class _HeadInput(nn.Module):
    """``model`` run up to its head: returns what goes into the head (for a model that does more after
    its head, such as a softmax; a forward pre-hook ends the forward there)."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        got: list[Tensor] = []

        def stop(module: nn.Module, inputs: tuple) -> None:
            got.append(inputs[0])
            raise _HeadReached

        handle = self.model.get_submodule(self.head).register_forward_pre_hook(stop)
        try:
            self.model(*args, **kwargs)
        except _HeadReached:
            pass
        finally:
            handle.remove()
        if not got:
            raise SurgeryError(f"{type(self.model).__name__}'s forward did not reach its head {self.head!r}.")
        return got[0]


def _pooled(model: nn.Module, y: Any) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 2:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise SurgeryError(f"add_inputs needs a model giving (B, F) features; {type(model).__name__} gives {shape}.")
    return y


def _output(model: nn.Module, call: Call) -> Tensor:
    """The model's (B, F) output on ``call`` (its prediction, for a dict or tuple output)."""
    return _pooled(model, main_output(probe(model, call, error=SurgeryError, purpose="measure its output")))


def _features_into_head(model: nn.Module, call: Call) -> tuple[nn.Module, Tensor]:
    """``(backbone, its (B, F) output on call)``: the model with its head made ``nn.Identity`` (in place), or
    wrapped to stop at the head when it does more after it; the model itself when it has no head."""
    try:
        head = find_head(model, call)
    except HeadNotFoundError as err:
        logger.info("add_inputs: %s; fusing the model's output", err)
        return model, _output(model, call)
    old = get_module(model, head)
    put(model, head, nn.Identity())
    try:
        with recording(model, lambda m: m is get_module(model, head)) as seen:
            y = main_output(probe(model, call, error=SurgeryError, purpose="measure the features that go into its head"))
        if y is not None and seen and seen[-1][2] is y:
            features = _pooled(model, y)
            put(model, head, old)
            replace_head(model, 0, path=head)  # the same Identity, recorded
            return model, features
        put(model, head, old)  # something after the head: stop the forward at it instead
        backbone = _HeadInput(model, head)
        y = probe(backbone, call, error=SurgeryError, purpose="measure the features that go into its head")
        return backbone, _pooled(model, y)
    except BaseException:
        put(model, head, old)
        raise


@recorded_op("add_inputs", replay=lambda model, step: wrap_inputs(model, dict(step)))
def add_inputs(
    model: nn.Module,
    *,
    extra_features: int,
    num_classes: int,
    fusion: Literal["concat", "add"] = "concat",
    fuse: Literal["features", "output"] = "features",
    relu: bool = False,
    dropout: float = 0.0,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> MultiInputModel:
    """Wrap ``model`` into ``forward(image, extra) -> (B, num_classes)`` (the tutorial's two-input model).

    ``fuse="features"`` (default): the head is found as :func:`replace_head`
    finds it (``get_classifier()``, else a probe on ``input_size`` /
    ``example_inputs``) and the features that go into it are fused: the head
    becomes ``nn.Identity`` (in place; the model itself, not a copy, becomes
    ``.backbone``). A model that does more after its head (a softmax) keeps it
    and is run up to the head instead. A model with no head its output is used
    as is. ``fuse="output"``: the whole model, head kept, is the backbone and
    its ``(B, num_outputs)`` output is fused (the tutorial's resnet50: 1000 + 1
    -> 10). A dict output (``ModelOutput``) gives its ``logits``.

    What is fused goes through ``nn.ReLU`` when ``relu=True``, then
    ``nn.Dropout(dropout)``, then is concatenated with (``fusion="concat"``)
    or added to a projection of (``"add"``) the extra input, then a Linear
    gives ``num_classes`` logits. A wrong extra width raises
    :class:`SurgeryError` naming both widths. The result exports with
    ``torch.export`` (all but the run-up-to-the-head case). The wrapper is run
    once on the example input (one positional input) and an extra one; if it
    does not run, or anything else fails, ``model`` is left as it was and
    :class:`SurgeryError` names the failing layer.

    Example::

        >>> both = add_inputs(create_model("resnet50"), extra_features=1, num_classes=10)
        >>> both(torch.randn(2, 3, 224, 224), torch.randn(2)).shape      # (B, 10)
        torch.Size([2, 10])
        >>> tutorial = add_inputs(create_model("resnet50"), extra_features=1, num_classes=10,
        ...                       fuse="output", relu=True, dropout=0.5)
        >>> tutorial.head, tutorial.act, tutorial.backbone.fc.out_features     # ReLU, Dropout, cat: 1000 + 1 -> 10
        (Linear(in_features=1001, out_features=10, bias=True), ReLU(), 1000)
    """
    if fuse not in FUSES:
        raise SurgeryError(f"fuse must be 'features' or 'output', got {fuse!r}.")
    check_fusion(extra_features=extra_features, num_classes=num_classes, fusion=fusion, dropout=dropout)
    model = unwrapped(model)
    call = example_call(model, input_size=input_size or None, example_inputs=example_inputs, error=SurgeryError)
    with restored_on_failure(model):
        backbone, y = _features_into_head(model, call) if fuse == "features" else (model, _output(model, call))
        step = {
            "op": "add_inputs",
            "num_features": int(y.shape[1]),
            "extra_features": extra_features,
            "num_classes": num_classes,
            "fusion": fusion,
            "fuse": fuse,
            "relu": bool(relu),
            "dropout": dropout,
        }
        if isinstance(backbone, _HeadInput):
            step["head_input"] = backbone.head
        both = wrap_inputs(model, step)
        args, kwargs = call
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):  # the wrapper's forward(image, extra)
            extra = torch.empty(args[0].shape[0], extra_features, device="meta")  # (B, extra_features)
            check_runs(both, ((args[0], extra), {}), action="add_inputs")
    return both


def wrap_inputs(model: nn.Module, step: dict) -> MultiInputModel:
    """The :func:`add_inputs` wrapper from its recorded step; it inherits ``model``'s config plus the step.

    A step recorded before ``fuse`` existed has no ``"fuse"``: it fused features (``"features"``).
    """
    fuse = step.get("fuse", "features")
    if fuse not in FUSES or (fuse == "output" and step.get("head_input")):
        raise SurgeryError(f"add_inputs step {step!r}: 'fuse' must be 'features' or 'output' (without 'head_input').")
    backbone = _HeadInput(model, step["head_input"]) if step.get("head_input") else model
    both = MultiInputModel(
        backbone,
        num_features=step["num_features"],
        extra_features=step["extra_features"],
        num_classes=step["num_classes"],
        fusion=step["fusion"],
        act_layer=nn.ReLU if step["relu"] else None,
        dropout=step["dropout"],
    )
    ref = first_tensor(model)
    if ref is not None:  # the new layers live with the backbone
        both.to(device=ref.device)
    config = model_config(model)
    if config is not None:
        set_config(both, config)
        record(both, **step)
    return both
