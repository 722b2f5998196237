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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._probe import CONV_TYPES, example_input, logger, probe
from .errors import SurgeryError, did_you_mean
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


def _find_head(model: nn.Module, input_size: Sequence[int] | None) -> str:
    """Our models name it (``get_classifier``); otherwise a probe finds the last Linear / 1x1 conv
    whose output has the model's output shape."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        return _find_path(model, get_classifier())
    seen: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_hook(lambda m, i, o, p=p: seen.append((p, o)))
        for p, m in model.named_modules()
        if isinstance(m, nn.Linear) or isinstance(m, CONV_TYPES) and all(k == 1 for k in m.kernel_size)
    ]
    try:
        x = example_input(model, input_size)
        y = probe(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(y, Tensor):
        raise SurgeryError(f"{type(model).__name__} returns {type(y).__name__}, not a tensor; pass path= to name the head.")
    candidates = list(dict.fromkeys(p for p, o in seen if o.shape == y.shape))
    if len(candidates) > 1:
        exact = list(dict.fromkeys(p for p, o in seen if o is y))
        candidates = exact if len(exact) == 1 else candidates
    if len(candidates) != 1:
        found = ", ".join(f"{p} -> {tuple(o.shape)}" for p, o in seen) or "none"
        raise SurgeryError(
            f"cannot tell the classifier of {type(model).__name__} (output {tuple(y.shape)}): "
            f"{'candidates ' + ', '.join(candidates) if candidates else 'no Linear / 1x1 conv gives that shape'}; "
            f"layers seen: {found}. Pass path='...'."
        )
    return candidates[0]


def replace_head(
    model: nn.Module, num_classes: int, *, path: str | None = None, input_size: Sequence[int] | None = None
) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs; returns ``model``.

    The classifier is ``model.get_classifier()`` where the model has one, else
    the last Linear / 1x1 conv whose output is the model's output (found by a
    shape-only probe; ``input_size`` overrides the guessed ``(1, C, 224, 224)``),
    else ``path``. Same in-features, bias, device and dtype; ``num_classes=0``
    puts an ``nn.Identity`` (pooled features). ``model.num_classes`` follows.

    Example::

        >>> model = replace_head(create_model("resnet50"), 20)
        >>> model.fc, model.num_classes
        (Linear(in_features=2048, out_features=20, bias=True), 20)
    """
    if num_classes < 0:
        raise SurgeryError(f"num_classes must be >= 0, got {num_classes}.")
    path = path if path is not None else _find_head(model, input_size)
    old = get_module(model, path)
    if num_classes == 0:
        new: nn.Module = nn.Identity()
    elif isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, CONV_TYPES):
        new = type(old)(
            old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
        )  # same geometry: a 3x3 head keeps its padding  # fmt: skip
    elif isinstance(old, nn.Identity) and isinstance(getattr(model, "num_features", None), int):
        new = nn.Linear(model.num_features, num_classes)
    else:
        raise SurgeryError(f"the head {path!r} is a {type(old).__name__}; replace_head handles Linear, conv and Identity heads.")
    _put(model, path, new)
    _update_attrs(model, num_classes=num_classes)
    _record(model, "replace_head", num_classes=num_classes, path=path)
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
    )


def freeze(
    model: nn.Module, patterns: str | Sequence[str] = ("*",), *, exclude: Sequence[str] = (), bn: BnPolicy = "eval"
) -> nn.Module:
    """Stop training the modules matched by glob ``patterns`` on module paths, minus ``exclude``; returns ``model``.

    A pattern matches a module and everything under it; ``"*"`` is the whole
    model. BatchNorm layers among the frozen ones follow ``bn``:

    - ``"eval"``: kept in eval mode even after ``model.train()``: running statistics stay as they are;
    - ``"frozen"``: replaced by :class:`FrozenBatchNorm2d` (2-D ones; others get ``"eval"``);
    - ``"train"``: left alone.

    :func:`unfreeze` undoes it exactly; :func:`freeze_report` says what is frozen.

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
    undo = {"requires_grad": {}, "bn_eval": [], "bn_replaced": {}, "bn": bn}
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
        if bn == "frozen" and isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            undo["bn_replaced"][path] = _bn_spec(module)
            _put(model, path, FrozenBatchNorm2d.from_batchnorm(module))
        else:
            module.train = functools.partial(_stay_in_eval, module)  # an instance attribute; unfreeze deletes it
            module.training = False
            undo["bn_eval"].append(path)
    model.__dict__.setdefault(_UNDO_ATTR, []).append(undo)  # plain attribute: no state_dict key
    _record(model, "freeze", patterns=patterns, exclude=list(exclude), bn=bn)
    return model


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


def adapt_input_channels(model: nn.Module, in_chans: int, *, path: str | None = None) -> nn.Module:
    """Make the first conv (or ``path``) take ``in_chans`` channels, keeping what it computes; returns ``model``.

    From ``C`` to ``in_chans`` channels, the new weight gives:

    - fewer channels: source channel ``i`` folds onto ``i % in_chans``, so the
      model on ``x`` equals the original on ``x`` tiled to ``C`` channels
      (3 -> 1: a gray image ``g`` gives the original's output on ``(g, g, g)``);
    - more channels: channels repeat (``j % C``) scaled by ``C / in_chans``, so
      the model on ``x`` tiled to ``in_chans`` equals the original on ``x``
      (3 -> 6: ``cat([x, x])`` gives the original's output on ``x``).

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
    weight = conv.weight.detach()  # (O, C, *k)
    source = weight.shape[1]
    if in_chans <= source:
        new = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])  # (O, in_chans, *k)
        new.index_add_(1, torch.arange(source, device=weight.device) % in_chans, weight)
    else:
        new = weight[:, torch.arange(in_chans, device=weight.device) % source] * (source / in_chans)
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
        features = self.drop(self.act(self.backbone(image)))  # (B, F)
        extra = extra.to(features.dtype)
        if self.fusion == "concat":
            fused = torch.cat([features, extra], dim=1)  # (B, F + E)
        else:
            fused = features + self.project(extra)  # (B, F)
        return self.head(fused)  # (B, num_classes)


def add_inputs(
    model: nn.Module,
    *,
    extra_features: int,
    num_classes: int,
    fusion: Literal["concat", "add"] = "concat",
    dropout: float = 0.0,
    input_size: Sequence[int] | None = None,
) -> MultiInputModel:
    """Wrap ``model`` into ``forward(image, extra) -> (B, num_classes)`` (the tutorial's two-input model).

    Returns the wrapper, whose ``.backbone`` is ``model`` itself (changed in
    place, not copied). A model with ``get_classifier()`` gives its pooled
    features: its head is replaced by ``nn.Identity``. Any other
    model's output ``(B, F)`` is used as is, through a ReLU as the tutorial does.
    A wrong extra width raises :class:`SurgeryError` naming both widths. The
    result exports with ``torch.export``.

    Example::

        >>> both = add_inputs(create_model("resnet50"), extra_features=1, num_classes=10)
        >>> both(torch.randn(2, 3, 224, 224), torch.randn(2)).shape      # (B, 10)
        torch.Size([2, 10])
    """
    pooled = callable(getattr(model, "get_classifier", None))
    if pooled:
        replace_head(model, 0)
    x = example_input(model, input_size)
    y = probe(model, x)
    if not isinstance(y, Tensor) or y.dim() != 2:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise SurgeryError(f"add_inputs needs a model giving (B, F) features; {type(model).__name__} gives {shape}.")
    step = {
        "op": "add_inputs",
        "num_features": int(y.shape[1]),
        "extra_features": extra_features,
        "num_classes": num_classes,
        "fusion": fusion,
        "relu": not pooled,
        "dropout": dropout,
    }
    return _wrap_inputs(model, step)


def _wrap_inputs(model: nn.Module, step: dict) -> MultiInputModel:
    """The :func:`add_inputs` wrapper from its recorded step; it inherits ``model``'s config plus the step."""
    both = MultiInputModel(
        model,
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
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return isinstance(module, _BatchNorm) and module.running_mean is not None and not module.training


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
    Needs eval mode (statistics fixed). Pairs come from a torch.fx trace, or,
    for a model fx cannot trace, from neighbours in ``nn.Sequential`` containers.

    Example::

        >>> model = fold_batchnorm(create_model("resnet18").eval())
        >>> model.bn1, model.conv1.bias.shape
        (Identity(), torch.Size([64]))
    """
    folded = []
    for conv_path, bn_path in _conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
        if isinstance(conv, CONV_TYPES) and _foldable_bn(bn) and bn.num_features == conv.out_channels:
            folded.append([conv_path, bn_path])
    _fold_pairs(model, folded)
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
