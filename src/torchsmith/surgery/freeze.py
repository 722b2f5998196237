"""Freezing: ``requires_grad`` by glob patterns on module paths, BatchNorm policies, the report, and the undo.

``freeze`` and ``unfreeze`` change the model in place and return it; ``freeze_report`` returns a new report.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..display import html_table
from ..errors import SurgeryError, did_you_mean
from ..layers import FrozenBatchNorm2d
from ..paths import inner_path, module_paths, unwrapped
from ..runner import refuse_uninitialised, restored_on_failure
from ..steps import record, recorded_op
from .check import check_runs, checking_call
from .modules import put

__all__ = ["FreezeReport", "freeze", "freeze_report", "unfreeze", "pinned_eval"]

BnPolicy = Literal["eval", "frozen", "train"]
_UNDO_ATTR = "_torchsmith_freeze_undo"



def _matching(model: nn.Module, patterns: Iterable[str], what: str) -> set[str]:
    """Module paths matched by glob ``patterns``, each with everything under it ("" is the model); a module
    registered under two names is matched by either (and its paths under both are in the set)."""
    paths = ["", *module_paths(model)]
    roots, unknown = set(), []
    for pattern in patterns:
        hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            unknown.append(pattern)
        roots.update(hits)
    if unknown:
        lines = [f"  {p!r}.{did_you_mean(p, paths[1:])}" for p in unknown]
        raise SurgeryError(f"{what} pattern(s) match no module of {type(model).__name__}:\n" + "\n".join(lines))
    under = {p for p in paths if any(p == r or r == "" or p.startswith(r + ".") for r in roots)}
    chosen = {id(model.get_submodule(p)) for p in under}
    return under | {p for p, m in model.named_modules(remove_duplicate=False) if id(m) in chosen}  # and their other names


def _covering(model: nn.Module, keep) -> list[str]:
    """Top-most module paths whose parameters (all of them, at least one) satisfy ``keep``, in model order."""
    hits = [name for name, m in model.named_modules() if (ps := list(m.parameters())) and all(keep(p) for p in ps)]
    if "" in hits:
        return [""]
    return [p for p in hits if not any(p.startswith(q + ".") for q in hits)]


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` for a frozen BatchNorm: always eval, so running statistics never move."""
    return nn.Module.train(module, False)


def _pin_eval(module: nn.Module) -> None:
    module.train = functools.partial(_stay_in_eval, module)  # an instance attribute; unfreeze deletes it
    module.training = False


def _unpin(module: nn.Module) -> None:
    module.__dict__.pop("train", None)


def pinned_eval(module: nn.Module) -> bool:
    """Whether :func:`freeze` pinned ``module`` to eval mode (``module.train()`` keeps it in eval).

    Example::

        >>> model = freeze(create_model("resnet18"), ["layer1"])
        >>> pinned_eval(model.layer1[0].bn1), pinned_eval(model.bn1)
        (True, False)
    """
    train = module.__dict__.get("train")
    return isinstance(train, functools.partial) and train.func is _stay_in_eval


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

    def __repr__(self) -> str:  # the REPL: the same lines as print()
        return str(self)

    def _repr_html_(self) -> str:
        rows = [(line.partition(": ")[0], line.partition(": ")[2]) for line in str(self).splitlines()]
        return html_table("FreezeReport", ["", "modules and parameters"], rows)


def freeze_report(model: nn.Module) -> FreezeReport:
    """What is frozen in ``model`` now: top-most frozen / trainable modules, counts, BatchNorm layers pinned or replaced.

    Works on any model (frozen by :func:`freeze` or by hand).

    Example::

        >>> model = freeze(create_model("resnet50"), exclude=["layer2", "layer3", "layer4"])
        >>> report = freeze_report(model)
        >>> report.trainable, report.frozen_params
        (['layer2', 'layer3', 'layer4'], 2274344)
    """
    model = unwrapped(model)
    refuse_uninitialised(model, error=SurgeryError, action="report what is frozen")
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
        bn_eval=[p for p, m in model.named_modules() if isinstance(m, _BatchNorm) and pinned_eval(m)],
        bn_replaced=[p for undo in undos for p in undo["bn_replaced"]],
        bn_not_replaced=[p for undo in undos for p in undo.get("bn_not_replaced", [])],
    )


@recorded_op("freeze", replay=lambda model, step: freeze(
    model, step["patterns"], exclude=step["exclude"], bn=step["bn"], check=False))  # fmt: skip
def freeze(
    model: nn.Module,
    patterns: str | Sequence[str] = ("*",),
    *,
    exclude: Sequence[str] = (),
    bn: BnPolicy = "eval",
    check: bool = True,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Stop training the modules matched by glob ``patterns`` on module paths, minus ``exclude``; returns ``model``.

    A pattern matches a module and everything under it; ``"*"`` is the whole
    model; a module registered under two names is matched by either, and on a
    ``torch.compile``d model paths may carry the ``_orig_mod.`` prefix or not.
    BatchNorm layers among the frozen ones follow ``bn``:

    - ``"eval"``: kept in eval mode even after ``model.train()``: running statistics stay as they are;
    - ``"frozen"``: replaced by :class:`FrozenBatchNorm2d` (plain 2-D ones; other
      BatchNorms, and subclasses with their own forward or extra layers such as
      timm's ``BatchNormAct2d``, get ``"eval"`` and are listed in
      ``freeze_report(model).bn_not_replaced``); then the model is run once on
      ``example_inputs`` / ``input_size`` (else a guessed input that ran it
      before; ``check=False`` or no such input: not checked) and restored,
      with :class:`SurgeryError` naming the failing layer, if it no longer runs;
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
    inner = unwrapped(model)
    refuse_uninitialised(inner, error=SurgeryError, action="freeze it")
    patterns = [inner_path(p) for p in ([patterns] if isinstance(patterns, str) else list(patterns))]
    exclude = [inner_path(p) for p in exclude]
    chosen = _matching(inner, patterns, "freeze") - (_matching(inner, exclude, "exclude") if exclude else set())
    ordered = [p for p, _ in inner.named_modules(remove_duplicate=False) if p in chosen]
    call = None
    if check and bn == "frozen":
        call = checking_call(inner, input_size=input_size, example_inputs=example_inputs, action="freeze")
    undo = {"requires_grad": {}, "bn_eval": [], "bn_replaced": {}, "bn": bn, "bn_not_replaced": []}
    with restored_on_failure(inner):
        for path in ordered:
            module = inner.get_submodule(path)
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    param.requires_grad_(False)
                    undo["requires_grad"][f"{path}.{name}" if path else name] = True
        replaced: dict[int, nn.Module] = {}  # one FrozenBatchNorm2d for a BatchNorm registered under two names
        for path in ordered:
            module = inner.get_submodule(path)
            if not isinstance(module, _BatchNorm) or bn == "train":
                continue
            if bn == "frozen" and _plain_batchnorm2d(module):
                undo["bn_replaced"][path] = _bn_spec(module)
                put(inner, path, replaced.setdefault(id(module), FrozenBatchNorm2d.from_batchnorm(module)))
                continue
            if bn == "frozen" and isinstance(module, nn.BatchNorm2d):
                undo["bn_not_replaced"].append(path)
            undo["bn_eval"].append(path)
            _pin_eval(module)
        inner.__dict__.setdefault(_UNDO_ATTR, []).append(undo)  # plain attribute: no state_dict key
        record(inner, "freeze", patterns=patterns, exclude=list(exclude), bn=bn)
        if undo["bn_replaced"]:
            check_runs(inner, call, action="freeze(bn='frozen')")
    _warn_ties(inner, chosen)
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


@recorded_op("unfreeze", replay=lambda model, step: unfreeze(model))
def unfreeze(model: nn.Module) -> nn.Module:
    """Undo every :func:`freeze` on ``model``, last first: ``requires_grad``, BatchNorm modules and modes; returns ``model``.

    A BatchNorm replaced by ``FrozenBatchNorm2d`` comes back as a BatchNorm2d
    with the frozen layer's current values (those of a loaded checkpoint too).

    Example::

        >>> model = freeze(create_model("resnet18"), bn="frozen")
        >>> type(unfreeze(model).bn1).__name__, model.conv1.weight.requires_grad
        ('BatchNorm2d', True)
    """
    inner = unwrapped(model)
    undos = inner.__dict__.pop(_UNDO_ATTR, [])
    for undo in reversed(undos):
        restored: dict[int, nn.Module] = {}  # one BatchNorm2d for a layer registered under two names
        for path, spec in undo["bn_replaced"].items():
            frozen = inner.get_submodule(path)
            put(inner, path, restored.setdefault(id(frozen), _unfrozen_bn(frozen, spec)))
            inner.get_submodule(path).train(inner.get_submodule(path.rpartition(".")[0]).training)
        for path in undo["bn_eval"]:
            module = inner.get_submodule(path)
            _unpin(module)
            module.train(inner.get_submodule(path.rpartition(".")[0]).training)
        for name in undo["requires_grad"]:
            inner.get_parameter(name).requires_grad_(True)
    if undos:
        record(inner, "unfreeze")
    return model
