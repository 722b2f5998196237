"""Model surgery for any ``nn.Module``: find, replace, re-head, freeze, re-input, fold.

Every function here changes the model you pass, in place, and returns it (so
calls chain); ``add_inputs`` and ``optimize_for_inference(compile=True)``
return a wrapper around it. None copies: ``copy.deepcopy(model)`` first to
keep the original. Reports come from their own functions (``freeze_report``).
On a model built through the registry, each change of structure is recorded
as a JSON step in ``model.torchsmith_config`` so ``load_model`` can replay it.

The tutorial's "modify a pretrained model" section, done right: setting
``fc.out_features = 20`` changes a printed number and nothing else;
:func:`replace_head` builds a new layer, so the model really gives 20 outputs.

Example::

    >>> model = create_model("resnet50")
    >>> replace_head(model, 20)(torch.randn(1, 3, 224, 224)).shape     # (B, 20)
    torch.Size([1, 20])
    >>> print(freeze_report(freeze(model, exclude=["layer2", "layer3", "layer4"])))   # doctest: +ELLIPSIS
    frozen: conv1, bn1, layer1, fc ...
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._probe import CONV_TYPES, Call, example_call, logger, probe
from .errors import SurgeryError, TorchsmithError, did_you_mean
from .layers import FrozenBatchNorm2d
from .registry import model_config, set_config, update_config

__all__ = [
    "get_module",
    "replace_module",
    "replace_head",
    "FreezeReport",
    "freeze",
    "freeze_report",
    "unfreeze",
    "adapt_input_channels",
    "MultiInputModel",
    "add_inputs",
    "fold_batchnorm",
    "optimize_for_inference",
]

BnPolicy = Literal["eval", "frozen", "train"]
_UNDO_ATTR = "_torchsmith_freeze_undo"


# helpers


def _paths(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _first_tensor(*modules: nn.Module) -> Tensor | None:
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            return tensor
    return None


def _find_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise SurgeryError(f"{type(target).__name__} is not a submodule of {type(model).__name__}.")


def _update_attrs(model: nn.Module, **kwargs: int) -> None:
    """Keep the ``num_classes`` / ``in_chans`` attributes true after surgery (the recorded config gets a step)."""
    for key, value in kwargs.items():
        if isinstance(getattr(model, key, None), int):
            setattr(model, key, value)


def _record(model: nn.Module, op: str, **args) -> None:
    """Append the step ``{"op": op, **args}`` to a registry-built model's config (replayed by ``load_model``)."""
    update_config(model, step={"op": op, **args})


# find and replace


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is the model itself).

    Example::

        >>> get_module(create_model("resnet50"), "layer3.1.conv2")
        Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise SurgeryError(f"{type(model).__name__} has no module {path!r}.{did_you_mean(path, _paths(model))}") from err


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path``, moved to the device (and floating dtype) of what it replaces; returns ``model``.

    ``new`` is recorded for ``save_model`` when torchsmith can describe it
    without pickle: built with ``create_model`` or ``create_layer``. Any other
    module works the same in memory, and ``save_model`` refuses the model,
    naming the path.

    Example::

        >>> model = replace_module(create_model("resnet18"), "layer1.0.relu", nn.GELU())
        >>> type(model.layer1[0].relu).__name__
        'GELU'
    """
    _put(model, path, new)
    described = model_config(new)
    if described is not None:
        _record(model, "replace_module", path=path, module=described)
    return model


def _put(model: nn.Module, path: str, new: nn.Module) -> None:
    """``replace_module`` without recording (for the operations that record themselves)."""
    if not path:
        raise SurgeryError("replace_module needs a submodule path; the root cannot replace itself.")
    old = get_module(model, path)
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    ref = _first_tensor(old, model)
    if ref is not None:
        new = new.to(device=ref.device)
        if ref.is_floating_point():
            new = new.to(dtype=ref.dtype)  # only floating tensors change dtype
    setattr(parent, name, new)


# heads


def _is_head_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, CONV_TYPES) and all(k == 1 for k in module.kernel_size)


def _tensors(output: Any) -> list[Tensor]:
    """Every tensor in a model's output: a tensor, a dict (``ModelOutput``), a tuple (namedtuple) or list of them."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _tensors(v)]
    return []


def _main_output(output: Any) -> Tensor | None:
    """The prediction in a model's output: the tensor itself, ``["logits"]`` / ``["out"]`` of a dict
    (transformers, torchvision segmentation), or the first element of a tuple (torchvision's aux outputs)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        return None
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@contextmanager
def _recording(model: nn.Module, keep) -> Iterator[list[tuple[str, Any, Any]]]:
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


def _find_head(model: nn.Module, call: Call | None) -> str:
    """Our models and timm's name it (``get_classifier``); otherwise a probe finds the last Linear / 1x1 conv
    whose output is the model's prediction (its output, or ``logits`` / ``out`` / the first of a tuple)."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        return _find_path(model, get_classifier())
    call = call if call is not None else example_call(model)
    with _recording(model, _is_head_layer) as seen:
        y = probe(model, call, purpose="find its classifier")
    main = _main_output(y)
    if main is None:
        raise SurgeryError(
            f"{type(model).__name__} returns {type(y).__name__}, with no tensor, 'logits' or 'out' to call its "
            "prediction; pass path='...' to name the head."
        )
    candidates = _producer(seen, main)
    if len(candidates) != 1:
        found = ", ".join(f"{p} -> {tuple(o.shape)}" for p, _, o in seen if isinstance(o, Tensor)) or "none"
        raise SurgeryError(
            f"cannot tell the classifier of {type(model).__name__} (output {tuple(main.shape)}): "
            f"{'candidates ' + ', '.join(candidates) if candidates else 'no Linear / 1x1 conv gives that shape'}; "
            f"layers seen: {found}. Pass path='...'."
        )
    return candidates[0]


def _aux_heads(model: nn.Module, call: Call | None, head: str) -> tuple[list[str], list[str]]:
    """Classifier layers that only the train-mode forward returns (inception's ``AuxLogits.fc``, googlenet's
    ``aux1.fc2``) with as many outputs as ``head``; and the train-only outputs of that width no layer explains."""
    width = _out_features(get_module(model, head))
    args, kwargs = call if call is not None else example_call(model)
    twice = lambda x: torch.cat([x, x]) if isinstance(x, Tensor) and x.dim() else x  # noqa: E731 - train-mode BatchNorm needs 2 samples
    call = tuple(twice(a) for a in args), {k: twice(v) for k, v in kwargs.items()}
    try:
        with _recording(model, _is_head_layer) as seen:
            y = probe(model, call, training=True, meta_only=True)
    except TorchsmithError as err:  # no train-mode pass on meta: nothing to say about aux heads
        logger.debug("no train-mode probe of %s (%s)", type(model).__name__, err)
        return [], []
    heads, left = [], []
    for i, t in enumerate(_tensors(y)):
        if t.dim() < 2 or t.shape[1] != width:
            continue
        producers = _producer(seen, t)
        if producers == [head]:
            continue  # the main prediction
        others = [p for p in producers if p != head]
        if len(others) == 1 and _out_features(get_module(model, others[0])) == width:
            heads.append(others[0])
        else:
            left.append(f"output {i} {tuple(t.shape)}")
    return list(dict.fromkeys(heads)), left


def _out_features(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, CONV_TYPES):
        return layer.out_channels
    return None


def _new_head(model: nn.Module, path: str, old: nn.Module, num_classes: int) -> nn.Module:
    """A fresh layer like ``old`` (every constructor setting) with ``num_classes`` outputs."""
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
    if isinstance(old, nn.Identity) and isinstance(getattr(model, "num_features", None), int):
        return nn.Linear(model.num_features, num_classes)
    raise SurgeryError(f"the head {path!r} is a {type(old).__name__}; replace_head handles Linear, conv and Identity heads.")


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs; returns ``model``.

    The classifier is ``path`` when given, else ``model.get_classifier()``
    where the model has one (ours, timm's), else the last Linear / 1x1 conv
    whose output is the model's prediction, found by a shape-only probe on
    ``input_size`` / ``example_inputs`` (a tensor, a tuple of positional
    arguments or a dict of keyword arguments: token ids for BERT), or on a
    guessed ``(1, C, 224, 224)``. A head found by the probe brings the
    auxiliary heads the train-mode forward returns with it (inception_v3's
    ``AuxLogits.fc``, googlenet's ``aux1.fc2`` / ``aux2.fc2``): all are
    replaced; train-only outputs of the old width that no layer explains are
    named in a warning. Every setting of the old layer is kept (bias; a conv's
    kernel, stride, padding, dilation, groups, padding mode), and its device
    and dtype; ``num_classes=0`` puts an ``nn.Identity`` (pooled features).
    ``model.num_classes`` follows.

    Example::

        >>> model = replace_head(create_model("resnet50"), 20)
        >>> model.fc, model.num_classes
        (Linear(in_features=2048, out_features=20, bias=True), 20)
    """
    if num_classes < 0:
        raise SurgeryError(f"num_classes must be >= 0, got {num_classes}.")
    call = example_call(model, input_size, example_inputs) if input_size or example_inputs is not None else None
    aux: list[str] = []
    if path is None:
        path = _find_head(model, call)
        if not callable(getattr(model, "get_classifier", None)):
            aux, left = _aux_heads(model, call, path)
            if left:
                warnings.warn(
                    f"replace_head({type(model).__name__}, {num_classes}) changed {[path, *aux]}, but train-mode "
                    f"outputs {left} keep the old width and come from no Linear / 1x1 conv; change them with replace_module.",
                    stacklevel=2,
                )
    new = {p: _new_head(model, p, get_module(model, p), num_classes) for p in [path, *aux]}
    for p, layer in new.items():
        _put(model, p, layer)
    _update_attrs(model, num_classes=num_classes)
    for p in new:
        _record(model, "replace_head", num_classes=num_classes, path=p)
    return model


# freezing


def _matching(model: nn.Module, patterns: Iterable[str], what: str) -> set[str]:
    """Module paths matched by glob ``patterns``, each with everything under it ("" is the model)."""
    paths = [name for name, _ in model.named_modules()]
    roots, unknown = set(), []
    for pattern in patterns:
        hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            unknown.append(pattern)
        roots.update(hits)
    if unknown:
        lines = [f"  {p!r}.{did_you_mean(p, paths[1:])}" for p in unknown]
        raise SurgeryError(f"{what} pattern(s) match no module of {type(model).__name__}:\n" + "\n".join(lines))
    return {p for p in paths if any(p == r or r == "" or p.startswith(r + ".") for r in roots)}


def _covering(model: nn.Module, keep) -> list[str]:
    """Top-most module paths whose parameters (all of them, at least one) satisfy ``keep``, in model order."""
    hits = [name for name, m in model.named_modules() if (ps := list(m.parameters())) and all(keep(p) for p in ps)]
    if "" in hits:
        return [""]
    return [p for p in hits if not any(p.startswith(q + ".") for q in hits)]


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` for a frozen BatchNorm: always eval, so running statistics never move."""
    return nn.Module.train(module, False)


def _numel(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


@dataclass
class FreezeReport:
    """What freezing did to a model (:func:`freeze_report`). ``str(report)`` is a short readable summary."""

    frozen: list[str]  # top-most modules whose parameters are all frozen ("" = the whole model)
    trainable: list[str]  # top-most modules whose parameters are all trainable
    frozen_params: int  # parameter values that do not train
    trainable_params: int  # parameter values that train
    total_params: int
    bn: str  # the BatchNorm policy of the last freeze ("" when never frozen by freeze)
    bn_eval: list[str] = field(default_factory=list)  # BatchNorm layers pinned to eval mode
    bn_replaced: list[str] = field(default_factory=list)  # BatchNorm layers swapped for FrozenBatchNorm2d
    bn_not_replaced: list[str] = field(default_factory=list)  # bn="frozen": subclasses kept (and pinned to eval)

    def __str__(self) -> str:
        def short(paths: list[str]) -> str:
            names = ["<model>" if p == "" else p for p in paths]
            return ", ".join(names[:8]) + (f" ... (+{len(names) - 8})" if len(names) > 8 else "") if names else "nothing"

        lines = [
            f"frozen: {short(self.frozen)} ({self.frozen_params:,} parameters)",
            f"trainable: {short(self.trainable)} ({self.trainable_params:,} of {self.total_params:,} parameters)",
        ]
        if self.bn_replaced:
            lines.append(f"BatchNorm: {len(self.bn_replaced)} layers replaced by FrozenBatchNorm2d")
        if self.bn_eval:
            lines.append(f"BatchNorm: {len(self.bn_eval)} layers kept in eval mode (running statistics fixed)")
        if self.bn_not_replaced:
            lines.append(
                f"BatchNorm: {len(self.bn_not_replaced)} subclass layers not replaced (their own forward or extra "
                f"layers, e.g. {self.bn_not_replaced[0]}), kept in eval mode instead"
            )
        return "\n".join(lines)


def freeze_report(model: nn.Module) -> FreezeReport:
    """What is frozen in ``model`` now: top-most frozen / trainable modules, counts, BatchNorm layers pinned or replaced.

    Works on any model (frozen by :func:`freeze` or by hand).

    Example::

        >>> model = freeze(create_model("resnet50"), exclude=["layer2", "layer3", "layer4"])
        >>> report = freeze_report(model)
        >>> report.trainable, report.frozen_params
        (['layer2', 'layer3', 'layer4'], 2274344)
    """
    undos = model.__dict__.get(_UNDO_ATTR, [])
    frozen = _numel(p for p in model.parameters() if not p.requires_grad)
    total = _numel(model.parameters())
    return FreezeReport(
        frozen=_covering(model, lambda p: not p.requires_grad),
        trainable=_covering(model, lambda p: p.requires_grad),
        frozen_params=frozen,
        trainable_params=total - frozen,
        total_params=total,
        bn=undos[-1]["bn"] if undos else "",
        bn_eval=[p for p, m in model.named_modules() if isinstance(m, _BatchNorm) and "train" in m.__dict__],
        bn_replaced=[p for undo in undos for p in undo["bn_replaced"]],
        bn_not_replaced=[p for undo in undos for p in undo.get("bn_not_replaced", [])],
    )


def freeze(
    model: nn.Module, patterns: str | Sequence[str] = ("*",), *, exclude: Sequence[str] = (), bn: BnPolicy = "eval"
) -> nn.Module:
    """Stop training the modules matched by glob ``patterns`` on module paths, minus ``exclude``; returns ``model``.

    A pattern matches a module and everything under it; ``"*"`` is the whole
    model. BatchNorm layers among the frozen ones follow ``bn``:

    - ``"eval"``: kept in eval mode even after ``model.train()``: running statistics stay as they are;
    - ``"frozen"``: replaced by :class:`FrozenBatchNorm2d` (plain 2-D ones; other
      BatchNorms, and subclasses with their own forward or extra layers such as
      timm's ``BatchNormAct2d``, get ``"eval"`` and are listed in
      ``freeze_report(model).bn_not_replaced``);
    - ``"train"``: left alone.

    A parameter shared by a frozen and an excluded module (GPT-2's ``lm_head``
    tied to ``wte``) is one tensor: it is frozen, with a warning. A failure
    leaves the model as it was. :func:`unfreeze` undoes it exactly;
    :func:`freeze_report` says what is frozen.

    Example::

        >>> model = freeze(create_model("resnet50"), exclude=["layer2", "layer3", "layer4"])
        >>> model.conv1.weight.requires_grad, model.bn1.training, model.train().bn1.training
        (False, False, False)
    """
    if bn not in ("eval", "frozen", "train"):
        raise SurgeryError(f"bn must be 'eval', 'frozen' or 'train', got {bn!r}.")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = _matching(model, patterns, "freeze") - (_matching(model, exclude, "exclude") if exclude else set())
    ordered = [p for p, _ in model.named_modules() if p in chosen]
    undo = {"requires_grad": {}, "bn_eval": [], "bn_replaced": {}, "bn": bn, "bn_not_replaced": []}
    originals: dict[str, nn.Module] = {}  # for a rollback: the very modules, with their modes
    modes: dict[str, bool] = {}
    try:
        for path in ordered:
            module = model.get_submodule(path)
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    param.requires_grad_(False)
                    undo["requires_grad"][f"{path}.{name}" if path else name] = True
        for path in ordered:
            module = model.get_submodule(path)
            if not isinstance(module, _BatchNorm) or bn == "train":
                continue
            if bn == "frozen" and _plain_batchnorm2d(module):
                undo["bn_replaced"][path] = _bn_spec(module)
                originals[path] = module
                _put(model, path, FrozenBatchNorm2d.from_batchnorm(module))
                continue
            if bn == "frozen" and isinstance(module, nn.BatchNorm2d):
                undo["bn_not_replaced"].append(path)
            modes[path] = module.training
            undo["bn_eval"].append(path)
            module.train = functools.partial(_stay_in_eval, module)  # an instance attribute; unfreeze deletes it
            module.training = False
    except BaseException:  # leave the model exactly as it was
        for path, module in originals.items():
            _put(model, path, module)
        for path, training in modes.items():
            module = model.get_submodule(path)
            module.__dict__.pop("train", None)
            module.training = training
        for name in undo["requires_grad"]:
            model.get_parameter(name).requires_grad_(True)
        raise
    model.__dict__.setdefault(_UNDO_ATTR, []).append(undo)  # plain attribute: no state_dict key
    _record(model, "freeze", patterns=patterns, exclude=list(exclude), bn=bn)
    _warn_ties(model, chosen)
    return model


def _plain_batchnorm2d(module: nn.Module) -> bool:
    """A BatchNorm2d that FrozenBatchNorm2d can stand for: BatchNorm2d's own forward, no extra layers
    (timm's ``BatchNormAct2d`` carries ``drop`` and ``act``: replacing it would drop them)."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and type(module).forward is nn.BatchNorm2d.forward
        and not module._modules
        and module.track_running_stats
        and module.running_mean is not None
    )


def _warn_ties(model: nn.Module, chosen: set[str]) -> None:
    """Warn when a parameter outside ``chosen`` is the same tensor as one inside (GPT-2's ``lm_head`` and ``wte``)."""
    owners: dict[int, tuple[list[str], list[str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            inside, outside = owners.setdefault(id(param), ([], []))
            (inside if path in chosen else outside).append(f"{path}.{name}" if path else name)
    tied = [(inside, outside) for inside, outside in owners.values() if inside and outside]
    if tied:
        text = "; ".join(f"{', '.join(o)} is {', '.join(i)}" for i, o in tied)
        warnings.warn(
            f"freeze: tied parameters ({text}): one tensor, so the excluded name is frozen too. "
            "Exclude both names, or untie them (give the excluded one its own nn.Parameter) first.",
            stacklevel=3,
        )


def _bn_spec(bn: nn.BatchNorm2d) -> dict:
    """What :func:`unfreeze` needs to rebuild a BatchNorm2d from the FrozenBatchNorm2d that replaced it."""
    tracked = bn.num_batches_tracked
    return {
        "eps": bn.eps,
        "momentum": bn.momentum,
        "affine": bn.affine,
        "requires_grad": bn.weight.requires_grad if bn.affine else False,
        "num_batches_tracked": None if tracked is None or tracked.is_meta else int(tracked),
    }


def _unfrozen_bn(frozen: FrozenBatchNorm2d, spec: dict) -> nn.BatchNorm2d:
    """A BatchNorm2d holding ``frozen``'s current values (as loaded or trained), configured as the original."""
    bn = nn.BatchNorm2d(frozen.num_features, eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"])
    bn = bn.to(device=frozen.running_mean.device, dtype=frozen.running_mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(frozen.running_mean)
        bn.running_var.copy_(frozen.running_var)
        if spec["affine"]:
            bn.weight.copy_(frozen.weight)
            bn.bias.copy_(frozen.bias)
            bn.weight.requires_grad_(spec["requires_grad"])
            bn.bias.requires_grad_(spec["requires_grad"])
        if spec["num_batches_tracked"] is not None and not bn.num_batches_tracked.is_meta:
            bn.num_batches_tracked.fill_(spec["num_batches_tracked"])
    return bn


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo every :func:`freeze` on ``model``, last first: ``requires_grad``, BatchNorm modules and modes; returns ``model``.

    A BatchNorm replaced by ``FrozenBatchNorm2d`` comes back as a BatchNorm2d
    with the frozen layer's current values (those of a loaded checkpoint too).

    Example::

        >>> model = freeze(create_model("resnet18"), bn="frozen")
        >>> type(unfreeze(model).bn1).__name__, model.conv1.weight.requires_grad
        ('BatchNorm2d', True)
    """
    undos = model.__dict__.pop(_UNDO_ATTR, [])
    for undo in reversed(undos):
        for path, spec in undo["bn_replaced"].items():
            _put(model, path, _unfrozen_bn(model.get_submodule(path), spec))
            model.get_submodule(path).train(model.get_submodule(path.rpartition(".")[0]).training)
        for path in undo["bn_eval"]:
            module = model.get_submodule(path)
            module.__dict__.pop("train", None)
            module.train(model.get_submodule(path.rpartition(".")[0]).training)
        for name in undo["requires_grad"]:
            model.get_parameter(name).requires_grad_(True)
    if undos:
        _record(model, "unfreeze")
    return model


# inputs


def _first_conv(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES):
            return name
    raise SurgeryError(f"{type(model).__name__} has no Conv1d/2d/3d layer; pass path= to name the input layer.")


def _check_takes_the_input(model: nn.Module, path: str, call: Call) -> None:
    """Refuse a conv whose input is not the model's input as given (inception_v3's ``transform_input``
    mixes channels, detectors normalise per channel): changing its channels cannot keep the model equivalent."""
    given: list[Any] = []
    received: list[Any] = []
    conv = model.get_submodule(path)
    handles = [
        model.register_forward_pre_hook(lambda m, args, kwargs: given.extend([*args, *kwargs.values()]), with_kwargs=True),
        conv.register_forward_pre_hook(lambda m, args: received.append(args[0])),
    ]
    try:
        probe(model, call, purpose=f"check that {path!r} reads its input")
    finally:
        for handle in handles:
            handle.remove()
    if not received:
        raise SurgeryError(f"{type(model).__name__}'s forward never calls {path!r}; pass path= to name the input conv.")
    if not any(received[0] is x for x in given):
        raise SurgeryError(
            f"{type(model).__name__}'s forward changes its input before {path!r} (e.g. inception_v3's transform_input "
            "indexes the RGB channels, detectors normalise each channel): adapting that conv's channels would not "
            "keep the model equivalent, or would break its forward. Turn that step off (transform_input=False) "
            "or adapt the model's input handling yourself, then call adapt_input_channels."
        )


def adapt_input_channels(
    model: nn.Module,
    in_chans: int,
    *,
    path: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Make the first conv (or ``path``) take ``in_chans`` channels, keeping what it computes; returns ``model``.

    From ``C`` to ``N = in_chans`` channels. The equivalence that holds, for any ``C`` and ``N``:
    an input ``x`` with ``N`` channels and one ``x'`` with ``C`` channels give equal outputs when
    channels whose indices are equal modulo ``min(C, N)`` are equal. In words:

    - ``N <= C`` (fewer): old channel ``c`` folds onto ``c % N``: the model on ``x`` equals the original
      on ``x`` tiled to ``C`` channels, ``x[:, arange(C) % N]`` (3 -> 1: a gray image ``g`` gives the
      original's output on ``(g, g, g)``);
    - ``N > C`` (more): new channel ``j`` gets ``w[:, j % C]`` divided by how many new channels repeat
      that old channel, so the original on ``x`` equals the model on ``x`` tiled to ``N`` channels,
      ``x[:, arange(N) % C]``, whether or not ``C`` divides ``N`` (3 -> 5: ``(r, g, b, r, g)``).

    Equal outputs need the conv to see the model's input unchanged: a model
    whose forward changes it first (inception_v3 with ``transform_input=True``,
    torchvision detectors' per-channel normalisation) is refused with
    :class:`SurgeryError`, checked by a shape probe on ``input_size`` /
    ``example_inputs`` (else a guessed ``(1, C, 224, 224)``); the model is
    left as it was.

    Example::

        >>> model = adapt_input_channels(create_model("resnet18"), 1)
        >>> model.conv1, model.in_chans
        (Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False), 1)
    """
    if in_chans < 1:
        raise SurgeryError(f"in_chans must be >= 1, got {in_chans}.")
    path = path if path is not None else _first_conv(model)
    conv = get_module(model, path)
    if not isinstance(conv, CONV_TYPES) or conv.groups != 1:
        raise SurgeryError(f"{path!r} is {conv}; adapt_input_channels needs an ungrouped Conv1d/2d/3d.")
    _check_takes_the_input(model, path, example_call(model, input_size, example_inputs))
    return _adapt_channels(model, in_chans, path)


def _adapt_channels(model: nn.Module, in_chans: int, path: str) -> nn.Module:
    """The weight change of :func:`adapt_input_channels`, recorded (replayed by ``load_model`` with no probe)."""
    conv = get_module(model, path)
    weight = conv.weight.detach()  # (O, C, *k)
    source = weight.shape[1]
    if in_chans <= source:
        new = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])  # (O, in_chans, *k)
        new.index_add_(1, torch.arange(source, device=weight.device) % in_chans, weight)
    else:
        old_of_new = torch.arange(in_chans, device="cpu") % source  # new channel j stands for j % C
        # counted on the CPU (shapes only: bincount has no meta kernel, and load_model replays this on meta)
        repeats = torch.bincount(old_of_new, minlength=source).to(device=weight.device, dtype=weight.dtype)  # (C,)
        old_of_new = old_of_new.to(weight.device)
        shape = (1, in_chans) + (1,) * (weight.dim() - 2)
        new = weight[:, old_of_new] / repeats[old_of_new].reshape(shape)  # (O, in_chans, *k)
    conv.weight = nn.Parameter(new, requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_chans
    _update_attrs(model, in_chans=in_chans)
    _record(model, "adapt_input_channels", in_chans=in_chans, path=path)
    return model


class MultiInputModel(nn.Module):
    """``forward(image, extra)``: a backbone's features fused with an extra vector, then a linear head.

    ``fusion="concat"``: ``head(cat([features, extra]))``; ``"add"``:
    ``head(features + project(extra))``. Returns logits (no softmax: losses
    such as ``cross_entropy`` take logits).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_features: int,
        extra_features: int,
        num_classes: int,
        fusion: Literal["concat", "add"] = "concat",
        act_layer: type[nn.Module] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if fusion not in ("concat", "add"):
            raise SurgeryError(f"fusion must be 'concat' or 'add', got {fusion!r}.")
        if extra_features < 1 or num_classes < 1:
            raise SurgeryError(f"extra_features and num_classes must be >= 1, got {extra_features} and {num_classes}.")
        self.num_features = num_features
        self.extra_features = extra_features
        self.num_classes = num_classes
        self.fusion = fusion
        self.backbone = backbone
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.project = nn.Linear(extra_features, num_features) if fusion == "add" else nn.Identity()
        fused = num_features + extra_features if fusion == "concat" else num_features
        self.head = nn.Linear(fused, num_classes)

    def forward(self, image: Tensor, extra: Tensor) -> Tensor:
        if extra.dim() == 1 and self.extra_features == 1:
            extra = extra.unsqueeze(1)  # (B,) -> (B, 1): one scalar per sample
        if extra.dim() != 2 or extra.shape[1] != self.extra_features:
            raise SurgeryError(
                f"extra input must be (B, {self.extra_features}) (extra_features={self.extra_features}), got {tuple(extra.shape)}."
            )
        features = self.backbone(image)
        if not isinstance(features, Tensor):  # a dict output (transformers' ModelOutput): its prediction
            features = _main_output(features)
        features = self.drop(self.act(features))  # (B, F)
        extra = extra.to(features.dtype)
        if self.fusion == "concat":
            fused = torch.cat([features, extra], dim=1)  # (B, F + E)
        else:
            fused = features + self.project(extra)  # (B, F)
        return self.head(fused)  # (B, num_classes)


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


def _features_into_head(model: nn.Module, call: Call) -> tuple[nn.Module, Tensor]:
    """``(backbone, its (B, F) output on call)``: the model with its head made ``nn.Identity`` (in place), or
    wrapped to stop at the head when it does more after it; the model itself when it has no head."""
    try:
        head = _find_head(model, call)
    except SurgeryError as err:
        if "cannot tell the classifier" not in str(err):
            raise
        logger.info("add_inputs: %s; fusing the model's output", err)
        return model, _pooled(model, _main_output(probe(model, call, purpose="measure its output")))
    old = get_module(model, head)
    _put(model, head, nn.Identity())
    try:
        with _recording(model, lambda m: m is get_module(model, head)) as seen:
            y = _main_output(probe(model, call, purpose="measure the features that go into its head"))
        if y is not None and seen and seen[-1][2] is y:
            features = _pooled(model, y)
            _put(model, head, old)
            replace_head(model, 0, path=head)  # the same Identity, recorded
            return model, features
        _put(model, head, old)  # something after the head: stop the forward at it instead
        backbone = _HeadInput(model, head)
        return backbone, _pooled(model, probe(backbone, call, purpose="measure the features that go into its head"))
    except BaseException:
        _put(model, head, old)
        raise


def add_inputs(
    model: nn.Module,
    *,
    extra_features: int,
    num_classes: int,
    fusion: Literal["concat", "add"] = "concat",
    dropout: float = 0.0,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> MultiInputModel:
    """Wrap ``model`` into ``forward(image, extra) -> (B, num_classes)`` (the tutorial's two-input model).

    The head is found as :func:`replace_head` finds it (``get_classifier()``,
    else a probe on ``input_size`` / ``example_inputs``) and the features that
    go into it are fused: the head becomes ``nn.Identity`` (in place; the model
    itself, not a copy, becomes ``.backbone``). A model that does more after its head (a softmax)
    keeps it and is run up to the head instead. A model with no head its
    output is used as is; a dict output (``ModelOutput``) gives its
    ``logits``. A wrong extra width raises :class:`SurgeryError` naming both
    widths. The result exports with ``torch.export`` (the first two cases).
    A failure leaves ``model`` as it was.

    Example::

        >>> both = add_inputs(create_model("resnet50"), extra_features=1, num_classes=10)
        >>> both(torch.randn(2, 3, 224, 224), torch.randn(2)).shape      # (B, 10)
        torch.Size([2, 10])
    """
    call = example_call(model, input_size, example_inputs)
    backbone, y = _features_into_head(model, call)
    step = {
        "op": "add_inputs",
        "num_features": int(y.shape[1]),
        "extra_features": extra_features,
        "num_classes": num_classes,
        "fusion": fusion,
        "relu": False,
        "dropout": dropout,
    }
    if isinstance(backbone, _HeadInput):
        step["head_input"] = backbone.head
    return _wrap_inputs(model, step)


def _wrap_inputs(model: nn.Module, step: dict) -> MultiInputModel:
    """The :func:`add_inputs` wrapper from its recorded step; it inherits ``model``'s config plus the step."""
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
    ref = _first_tensor(model)
    if ref is not None:  # the new layers live with the backbone
        both.to(device=ref.device)
    config = model_config(model)
    if config is not None:
        set_config(both, config)
        _record(both, **step)
    return both


# inference


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
    training = [b for b in training if not isinstance(model.get_submodule(b).__dict__.get("train"), functools.partial)]
    if training:
        raise SurgeryError(
            f"fold_batchnorm needs eval mode: {len(training)} BatchNorm layers after a conv are in train mode "
            f"({', '.join(training[:3])}{' ...' if len(training) > 3 else ''}) and use each batch's statistics. "
            "Call model.eval() first (or use optimize_for_inference, which works on an eval copy)."
        )
    _fold_pairs(model, [[c, b] for c, b in pairs if _foldable_bn(model.get_submodule(b))])
    return model


def _fold_pairs(model: nn.Module, pairs: list[list[str]]) -> None:
    """Fold each ``[conv, bn]`` pair (already checked, or replayed from a recorded step) and record the step."""
    for conv_path, bn_path in pairs:
        _fold(model.get_submodule(conv_path), model.get_submodule(bn_path))
        _put(model, bn_path, nn.Identity())
    if pairs:
        _record(model, "fold_batchnorm", pairs=[list(p) for p in pairs])


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True, compile: bool = False) -> nn.Module:
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

    Example::

        >>> fast = optimize_for_inference(create_model("resnet50"))
        >>> fast.training, fast.bn1, fast.conv1.weight.requires_grad
        (False, Identity(), False)
        >>> faster = optimize_for_inference(create_model("mlp"), compile=True)
        >>> with torch.inference_mode():
        ...     faster(torch.randn(8, 784)).shape   # compiles once (resnet50: ~1.5x eager on CPU after)
        torch.Size([8, 10])
    """
    fast = model.eval()
    fold_batchnorm(fast)
    _inference_ready(fast, channels_last=channels_last)
    _record(fast, "optimize_for_inference", channels_last=channels_last)
    if compile:
        # per-call Inductor options: no global switch is flipped
        fast = torch.compile(fast, options={"freezing": True})
    return fast


def _inference_ready(model: nn.Module, *, channels_last: bool) -> None:
    """The rest of :func:`optimize_for_inference` after folding (also replayed after ``load_model`` reads weights)."""
    model.eval().requires_grad_(False)
    if channels_last and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
