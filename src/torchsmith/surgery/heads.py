"""Heads: finding a model's classifier (``get_classifier``, or a shape-only probe) and replacing it.

``replace_head`` changes the model in place and returns it.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..codec import is_child_name, nn_layer
from ..errors import HeadNotFoundError, SurgeryError, TorchsmithError
from ..paths import inner_path, unwrapped
from ..registry import model_config
from ..runner import (
    CONV_TYPES, Call, example_call, main_output, output_tensors, probe, refuse_uninitialised, restored_on_failure,
)  # fmt: skip
from ..steps import record, recorded_op
from .check import check_runs, checking_call
from .modules import find_path, first_tensor, get_module, put, update_attrs

__all__ = ["replace_head"]

logger = logging.getLogger("torchsmith")
HEAD_OPTIONS = ("hidden", "dropout", "names", "output")  # what a replace_head step records beside num_classes, path



def is_head_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, CONV_TYPES) and all(k == 1 for k in module.kernel_size)


@contextmanager
def recording(model: nn.Module, keep) -> Iterator[list[tuple[str, Any, Any]]]:
    """Forward hooks on every module ``keep`` accepts, recording ``(path, inputs, output)``; removed on exit."""
    seen: list[tuple[str, Any, Any]] = []
    handles = [m.register_forward_hook(lambda m, i, o, p=p: seen.append((p, i, o))) for p, m in model.named_modules() if keep(m)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _producer(seen: list[tuple[str, Any, Any]], target: Tensor) -> list[str]:
    """Recorded layers whose output is ``target``: the very tensor, else the only ones of its shape."""
    exact = list(dict.fromkeys(p for p, _, o in seen if o is target))
    if len(exact) == 1:
        return exact
    return list(dict.fromkeys(p for p, _, o in seen if isinstance(o, Tensor) and o.shape == target.shape))


def find_head(model: nn.Module, call: Call | None) -> str:
    """Our models and timm's name it (``get_classifier``); otherwise a probe finds the last Linear / 1x1 conv
    whose output is the model's prediction (its output, or ``logits`` / ``out`` / the first of a tuple).

    Raises:
        HeadNotFoundError: no such layer, or several (listing them).
        SurgeryError: the probe cannot run, or the output holds no prediction.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        return find_path(model, get_classifier())
    call = call if call is not None else example_call(model, error=SurgeryError)
    with recording(model, is_head_layer) as seen:
        y = probe(model, call, error=SurgeryError, purpose="find its classifier")
    main = main_output(y)
    if main is None:
        raise SurgeryError(
            f"{type(model).__name__} returns {type(y).__name__}, with no tensor, 'logits' or 'out' to call its "
            "prediction; pass path='...' to name the head."
        )
    candidates = _producer(seen, main)
    if len(candidates) != 1:
        found = ", ".join(f"{p} -> {tuple(o.shape)}" for p, _, o in seen if isinstance(o, Tensor)) or "none"
        raise HeadNotFoundError(
            f"cannot tell the classifier of {type(model).__name__} (output {tuple(main.shape)}): "
            f"{'candidates ' + ', '.join(candidates) if candidates else 'no Linear / 1x1 conv gives that shape'}; "
            f"layers seen: {found}. Pass path='...'."
        )
    return candidates[0]


def _aux_heads(model: nn.Module, call: Call | None, head: str) -> tuple[list[str], list[str]]:
    """Classifier layers that only the train-mode forward returns (inception's ``AuxLogits.fc``, googlenet's
    ``aux1.fc2``) with as many outputs as ``head``; and the train-only outputs of that width no layer explains."""
    width = out_features(get_module(model, head))
    args, kwargs = call if call is not None else example_call(model, error=SurgeryError)
    twice = lambda x: torch.cat([x, x]) if isinstance(x, Tensor) and x.dim() else x  # noqa: E731 - train-mode BatchNorm needs 2 samples
    call = tuple(twice(a) for a in args), {k: twice(v) for k, v in kwargs.items()}
    try:
        with recording(model, is_head_layer) as seen:
            y = probe(model, call, training=True, allow_real=False, error=SurgeryError)
    except TorchsmithError as err:  # no train-mode pass on meta or fake: nothing to say about aux heads
        logger.debug("no train-mode probe of %s (%s)", type(model).__name__, err)
        return [], []
    heads, left = [], []
    for i, t in enumerate(output_tensors(y)):
        if t.dim() < 2 or t.shape[1] != width:
            continue
        producers = _producer(seen, t)
        if producers == [head]:
            continue  # the main prediction
        others = [p for p in producers if p != head]
        if len(others) == 1 and out_features(get_module(model, others[0])) == width:
            heads.append(others[0])
        else:
            left.append(f"output {i} {tuple(t.shape)}")
    return list(dict.fromkeys(heads)), left


def out_features(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, CONV_TYPES):
        return layer.out_channels
    return None


def _new_head(model: nn.Module, path: str, old: nn.Module, num_classes: int, **options: Any) -> nn.Module:
    """A fresh layer like ``old`` (every constructor setting) with ``num_classes`` outputs; with ``options``
    (hidden layers, dropout, names, an output activation) a named ``nn.Sequential`` of torch.nn layers."""
    if options:
        return _layered_head(model, path, old, num_classes, **options)
    if num_classes == 0:
        return nn.Identity()
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, CONV_TYPES):
        if num_classes % old.groups:
            raise SurgeryError(
                f"the head {path!r} is {old} with groups={old.groups}; {num_classes} outputs do not split into "
                f"{old.groups} groups. Ask for a multiple of {old.groups}, or replace it with replace_module."
            )
        return type(old)(
            old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        )  # fmt: skip
    if _in_width(model, old) is not None:  # an Identity head, or a Sequential one replace_head made
        return nn.Linear(_in_width(model, old), num_classes)
    raise SurgeryError(f"the head {path!r} is a {type(old).__name__}; replace_head handles Linear, conv and Identity heads.")


def _in_width(model: nn.Module, old: nn.Module) -> int | None:
    """The features a head reads: a Linear's, ``model.num_features`` for an Identity, or the first Linear's of a
    Sequential (after dropout only: the heads replace_head builds)."""
    if isinstance(old, nn.Linear):
        return old.in_features
    if isinstance(old, nn.Identity) and isinstance(getattr(model, "num_features", None), int):
        return model.num_features
    if type(old) is nn.Sequential:
        first = next((m for m in old if not isinstance(m, nn.Dropout)), None)
        return first.in_features if isinstance(first, nn.Linear) else None
    return None


def _layered_head(
    model: nn.Module, path: str, old: nn.Module, num_classes: int, *,
    hidden: Sequence[int] = (), dropout: float = 0.0, names: Sequence[str] | None = None, output: str | None = None,
) -> nn.Sequential:  # fmt: skip
    """Linear(in, h1) -> ReLU -> Dropout -> ... -> Linear(h_last, num_classes) [-> output], named ``names``
    (default fc1, relu1, dropout1, ..., fc<n>, output); every layer is on the config codec's allow-list."""
    width = _in_width(model, old)
    if width is None:
        raise SurgeryError(
            f"the head {path!r} is a {type(old).__name__}; hidden layers, dropout, names and an output layer are "
            f"for a Linear head (an Identity one on a model with num_features, or one replace_head built). "
            f"Replace it with replace_module."
        )
    if num_classes == 0:
        raise SurgeryError("num_classes=0 leaves no classifier to put hidden layers, names or an output layer around.")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise SurgeryError(f"hidden takes positive layer widths, e.g. hidden=[128]; got {list(hidden)!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise SurgeryError(f"dropout is a probability from 0 to below 1, got {dropout!r}.")
    layers: list[tuple[str, nn.Module]] = []
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
        layers += [(f"dropout{i}", nn.Dropout(dropout))] if dropout else []
        width = h
    if dropout and not hidden:
        layers.append(("dropout1", nn.Dropout(dropout)))
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    if output is not None:
        layers.append(("output", _output_layer(output)))
    if names is not None:
        default = [n for n, _ in layers]
        bad = [n for n in names if not is_child_name(n)]
        if len(names) != len(layers) or bad or len(set(names)) != len(names):
            raise SurgeryError(
                f"names: {len(layers)} distinct names (letters, digits, _) for the layers {default}, got {names!r}."
            )
        layers = [(n, m) for n, (_, m) in zip(names, layers)]
    return nn.Sequential(OrderedDict(layers))


def _output_layer(name: str) -> nn.Module:
    """The allow-listed torch.nn layer ``name`` put after the classifier, over the class dimension (``dim=1``)."""
    try:
        cls = nn_layer(name)
    except TorchsmithError as e:
        raise SurgeryError(f"output={name!r}: {e}") from None
    takes_dim = "dim" in inspect.signature(cls).parameters
    try:
        return cls(dim=1) if takes_dim else cls()
    except TypeError as e:
        raise SurgeryError(f"output={name!r}: {name} needs arguments ({e}); name a layer such as 'LogSoftmax' or 'Sigmoid'.") from None


def _head_options(step: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a recorded ``replace_head`` step (none in a step written before they existed)."""
    return {k: step[k] for k in HEAD_OPTIONS if k in step}


# buffers tied to the head's width


_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_SAME = {"to", "type", "type_as", "contiguous", "clone", "detach", "view", "reshape", "expand", "expand_as", "unsqueeze"}


class _Added(TorchFunctionMode):
    """Notes which ``watched`` buffers (by the stand-in a run sees, and what ``.to()`` / views make of it) are
    added to a head's output."""

    def __init__(self, outputs: dict[int, Tensor], aliases: dict[int, str]) -> None:
        super().__init__()
        self.outputs, self.aliases, self.found = outputs, aliases, set()
        self.kept: list[Tensor] = []  # what the aliases' ids stand for, alive so no id is reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        tensors = [a for a in args if isinstance(a, Tensor)]
        if name in _ADDS and any(id(t) in self.outputs for t in tensors):
            self.found.update(self.aliases[id(t)] for t in tensors if id(t) in self.aliases)
        elif name in _SAME and tensors and id(tensors[0]) in self.aliases and isinstance(out, Tensor):
            self.aliases[id(out)] = self.aliases[id(tensors[0])]
            self.kept.append(out)
        return out


def tied_buffers(model: nn.Module, heads: Sequence[str], call: Call | None) -> list[str]:
    """Buffers outside the heads whose last dim is the head's width and that the forward adds to a head's
    output (BART / Marian / Pegasus's ``final_logits_bias``), seen on one shape-only run of ``call``."""
    width = out_features(get_module(model, heads[0]))
    inside = lambda name: any(name.startswith(h + ".") for h in heads)  # noqa: E731
    candidates = [n for n, b in model.named_buffers() if b.dim() and b.shape[-1] == width and not inside(n)]
    if not candidates or call is None or width is None:
        return []
    outputs: dict[int, Tensor] = {}
    aliases: dict[int, str] = {}

    def stand_ins(module: nn.Module, args: tuple) -> None:  # each attempt: the buffers the run sees now
        outputs.clear()
        aliases.clear()
        aliases.update((id(model.get_buffer(n)), n) for n in candidates)

    def head_output(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            outputs[id(output)] = output

    handles = [model.register_forward_pre_hook(stand_ins)]
    handles += [get_module(model, h).register_forward_hook(head_output) for h in heads]
    try:
        with _Added(outputs, aliases) as mode:
            probe(model, call, error=SurgeryError, purpose="find buffers added to its head's output")
    finally:
        for handle in handles:
            handle.remove()
    return [n for n in candidates if n in mode.found]


def _resize_buffer(model: nn.Module, name: str, num_classes: int) -> None:
    """Give the buffer ``name`` ``num_classes`` entries in its last dim (zeros: the head is new), kept persistent or not."""
    owner_path, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_path)
    old = owner._buffers[leaf]
    persistent = leaf not in owner._non_persistent_buffers_set
    owner.register_buffer(leaf, old.new_zeros(*old.shape[:-1], num_classes), persistent=persistent)


# the edit


def put_heads(model: nn.Module, num_classes: int, paths: Sequence[str], options: Mapping[str, Any],
              buffers: Sequence[str] = ()) -> nn.Module:  # fmt: skip
    """New heads at ``paths`` and ``buffers`` resized, recorded (the structure of :func:`replace_head`,
    replayed by ``load_model`` with no probe); returns ``model``."""
    new = {p: _new_head(model, p, get_module(model, p), num_classes, **options) for p in paths}
    for p, layer in new.items():
        put(model, p, layer)
    for name in buffers:
        _resize_buffer(model, name, num_classes)
    update_attrs(model, num_classes=num_classes)
    for i, p in enumerate(new):
        resized = {"buffers": list(buffers)} if buffers and not i else {}  # on the main head's step
        record(model, "replace_head", num_classes=num_classes, path=p, **options, **resized)
    return model


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """The model's own ``reset_classifier(num_classes)`` (timm's convention: every head, ``head_dist`` too), its new
    layers put on the model's device and dtype, recorded unless it records itself (torchsmith's zoo does)."""
    before = {id(m) for m in model.modules()}
    config = model_config(model)
    ref = first_tensor(model)
    model.reset_classifier(num_classes)
    for m in model.modules():
        if id(m) not in before and ref is not None:
            m.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    update_attrs(model, num_classes=num_classes)
    if config is not None and len(model_config(model)["steps"]) == len(config["steps"]):
        record(model, "replace_head", num_classes=num_classes, reset_classifier=True)
    return model


def _replay_replace_head(model: nn.Module, step: Mapping[str, Any]) -> nn.Module:
    if step.get("reset_classifier"):
        return reset_head(model, step["num_classes"])
    return put_heads(model, step["num_classes"], [step["path"]], _head_options(step), step.get("buffers", ()))


@recorded_op("replace_head", replay=_replay_replace_head)
def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: str | None = None,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    names: Sequence[str] | None = None,
    output: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs; returns ``model``.

    A model with timm's ``reset_classifier(num_classes)`` (timm's, ours) is
    given to it when no ``path`` and no layer options are asked for: it
    changes every head (deit's and LeViT's ``head`` and ``head_dist``), and
    ``load_model`` calls it again. Otherwise the classifier is ``path`` when
    given, else ``model.get_classifier()`` where the model has one, else the
    last Linear / 1x1 conv whose output is the model's prediction, found by a
    shape-only probe on ``input_size`` / ``example_inputs`` (a tensor, a tuple
    of positional arguments or a dict of keyword arguments: token ids for
    BERT), or on a guessed ``(1, C, 224, 224)``. A head found by the probe
    brings the auxiliary heads the train-mode forward returns with it
    (inception_v3's ``AuxLogits.fc``, googlenet's ``aux1.fc2`` / ``aux2.fc2``):
    all are replaced; train-only outputs of the old width that no layer
    explains are named in a warning. Every setting of the old layer is kept
    (bias; a conv's kernel, stride, padding, dilation, groups, padding mode),
    and its device and dtype; ``num_classes=0`` puts an ``nn.Identity`` (pooled
    features). ``model.num_classes`` follows. Buffers the forward adds to the
    head's output with the head's width (BART / Marian / mBART / Pegasus's
    ``final_logits_bias``, seen on a probe) get ``num_classes`` zeros.

    A head of several layers, in one recorded step: ``hidden`` widths give
    ``Linear -> ReLU`` pairs (each followed by ``Dropout(dropout)`` when
    ``dropout > 0``; with no hidden layers the dropout comes before the
    classifier), then the classifier ``Linear``, then ``output``: an
    allow-listed torch.nn layer name (``"LogSoftmax"``, ``"Softmax"``: over
    ``dim=1``; ``"Sigmoid"``). The layers are named ``fc1, relu1, dropout1,
    ..., fc<n>, output`` or by ``names``, one per layer in that order. A
    Linear head takes these options, as do an Identity one on a model with
    ``num_features`` and a head built this way (replaced again, it becomes a
    Linear without them).

    Afterwards the model is run once on the example input (or a guessed one that
    ran it before; with none, the change is not checked): if it no longer runs
    (another layer still has the old width), it is restored and
    :class:`SurgeryError` names the layer that fails.

    Example::

        >>> model = replace_head(create_model("resnet50"), 20)
        >>> model.fc, model.num_classes
        (Linear(in_features=2048, out_features=20, bias=True), 20)
        >>> replace_head(model, 10, hidden=[128], dropout=0.5, output="LogSoftmax").fc   # the tutorial's head
        Sequential(
          (fc1): Linear(in_features=2048, out_features=128, bias=True)
          (relu1): ReLU()
          (dropout1): Dropout(p=0.5, inplace=False)
          (fc2): Linear(in_features=128, out_features=10, bias=True)
          (output): LogSoftmax(dim=1)
        )
    """
    if num_classes < 0:
        raise SurgeryError(f"num_classes must be >= 0, got {num_classes}.")
    inner = unwrapped(model)
    refuse_uninitialised(inner, error=SurgeryError, action="replace its head")
    listed = lambda v: [v] if isinstance(v, (int, str)) else list(v or ())  # noqa: E731 - hidden=128, names="fc"
    options = {"hidden": listed(hidden), "dropout": dropout, "names": listed(names), "output": output}
    options = {k: v for k, v in options.items() if v}  # the defaults are left out of the step
    check = checking_call(inner, input_size=input_size, example_inputs=example_inputs, action="replace_head")
    resets = callable(getattr(inner, "reset_classifier", None))
    if path is None and not options and resets:
        with restored_on_failure(inner):
            try:
                reset_head(inner, num_classes)
            except TorchsmithError:
                raise
            except Exception as err:  # the model's own code: said as ours, the model as it was
                raise SurgeryError(
                    f"{type(inner).__name__}.reset_classifier({num_classes}) failed ({type(err).__name__}: {err}); "
                    "pass path='...' to replace its head layer instead."
                ) from err
            check_runs(inner, check, action=f"{type(inner).__name__}.reset_classifier({num_classes})")
        return model
    call = check if bool(input_size) or example_inputs is not None else None
    aux: list[str] = []
    if path is None:
        path = find_head(inner, call)
        if not callable(getattr(inner, "get_classifier", None)):
            aux, left = _aux_heads(inner, call, path)
            if left:
                warnings.warn(
                    f"replace_head({type(inner).__name__}, {num_classes}) changed {[path, *aux]}, but train-mode "
                    f"outputs {left} keep the old width and come from no Linear / 1x1 conv; change them with replace_module.",
                    stacklevel=2,
                )
    path = inner_path(path)
    buffers = tied_buffers(inner, [path, *aux], check)
    hint = "It has reset_classifier(num_classes), which changes every head: call replace_head without path=." if resets else ""
    with restored_on_failure(inner):
        put_heads(inner, num_classes, [path, *aux], options, buffers)
        check_runs(inner, check, action="replace_head", hint=hint)
    return model
