"""Which conv + BatchNorm pairs may be folded: only those proven, never guessed from container order.

A pair is proven when the BatchNorm's only input is the conv's output and nothing else reads that output,
the conv computes a plain convolution (its class does not override ``forward`` / ``_conv_forward``: not
timm's weight-standardised ``StdConv2d``), and the BatchNorm is a plain eval-mode one. The proof is a
torch.fx graph (:func:`traced_pairs`), or, for a model fx cannot trace, one run of the model under hooks
that sees which tensor each layer reads (:func:`observed_pairs`). Nothing here changes the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from ..errors import SurgeryError
from ..layers import FrozenBatchNorm2d
from ..runner import CONV_TYPES, Call, probe, tensor_leaves, untouched

__all__ = ["plain_conv", "foldable_bn", "norm_layer", "traced_pairs", "observed_pairs"]

Pairs = list[tuple[str, str]]


def plain_conv(module: nn.Module) -> bool:
    """A Conv1d/2d/3d (or a subclass, such as torchvision's ``Conv3DSimple``, a parametrized conv) whose
    forward is the plain convolution of its weight: its class overrides neither ``forward`` nor ``_conv_forward``."""
    base = next((t for t in CONV_TYPES if isinstance(module, t)), None)
    return base is not None and type(module).forward is base.forward and type(module)._conv_forward is base._conv_forward


def norm_layer(module: nn.Module) -> bool:
    """A BatchNorm a fold could stand for: FrozenBatchNorm2d, or a BatchNorm with BatchNorm's own forward and
    no extra layers (not timm's ``BatchNormAct2d``, whose activation would be lost)."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward and not module._modules


def foldable_bn(module: nn.Module) -> bool:
    """A :func:`norm_layer` that normalises with running statistics: FrozenBatchNorm2d, or one in eval mode."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return norm_layer(module) and module.running_mean is not None and not module.training


def _fits(model: nn.Module, conv_path: str, bn_path: str) -> bool:
    conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
    return plain_conv(conv) and norm_layer(bn) and bn.num_features == conv.out_channels


def _counted_once(model: nn.Module) -> set[int]:
    """Modules registered under one path only (one registered twice could run twice under another name)."""
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return {i for i, n in counts.items() if n == 1}


# a traced graph


class _PairTracer(fx.Tracer):
    """torch.fx's tracer keeping plain convs (subclasses too) and BatchNorms as one call each, so they can pair."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return plain_conv(m) or norm_layer(m) or super().is_leaf_module(m, module_qualified_name)


def traced_pairs(model: nn.Module) -> Pairs | None:
    """Pairs proven by a torch.fx graph: the BatchNorm called once, on the conv's output alone, and that output
    used by nothing else. None when fx cannot trace ``model``."""
    try:
        with untouched(model, values=True):  # tracing runs python: a traced `num_batches_tracked.add_(1)` really adds
            graph = _PairTracer().trace(model)
    except Exception:  # noqa: BLE001 - untraceable: the caller proves pairs another way
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    once = _counted_once(model)
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        if calls[node.target] == calls[source.target] == 1 and _fits(model, source.target, node.target):
            if id(model.get_submodule(source.target)) in once and id(model.get_submodule(node.target)) in once:
                pairs.append((source.target, node.target))
    return pairs


# one observed run


class _Reads(TorchFunctionMode):
    """Notes which module is running whenever a watched tensor is an argument of a torch function."""

    def __init__(self, watched: dict[int, Tensor], stack: list[str], reads: dict[int, set[str]]) -> None:
        super().__init__()
        self.watched, self.stack, self.reads = watched, stack, reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in _arguments(args, kwargs):
            if id(t) in self.watched and self.watched[id(t)] is t:
                self.reads.setdefault(id(t), set()).add(self.stack[-1] if self.stack else "")
        return func(*args, **kwargs)


def _arguments(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for value in [*args, *kwargs.values()]:
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):  # torch.cat([x, y]), torch.stack(...)
            yield from (v for v in value if isinstance(v, Tensor))


def observed_pairs(model: nn.Module, call: Call) -> Pairs:
    """Pairs proven by one shape-only run of ``model`` on ``call`` (meta, fake, then real): hooks see the
    BatchNorm get the conv's very output tensor as its only argument, and a torch-function mode sees that no
    other code reads it (nor returns it).

    Raises:
        SurgeryError: ``model`` does not run on ``call``.
    """
    modules = [(path, m) for path, m in model.named_modules() if path]
    watched: dict[int, Tensor] = {}  # conv outputs, by id (kept alive, so ids stay unique)
    producer: dict[int, str] = {}
    reads: dict[int, set[str]] = {}
    fed: dict[str, int] = {}  # BatchNorm path -> id of its only input
    calls: dict[str, int] = {}
    stack: list[str] = []

    def start(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            stack.append(path)
            calls[path] = calls.get(path, 0) + 1
            if norm_layer(module) and len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
                fed[path] = id(args[0])
        return hook

    def end(path: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if stack:
                stack.pop()
            if plain_conv(module) and isinstance(output, Tensor):
                watched[id(output)] = output
                producer[id(output)] = path
        return hook

    def restart(module: nn.Module, args: tuple, kwargs: dict) -> None:  # each backend the runner tries starts afresh
        for table in (watched, producer, reads, fed, calls):
            table.clear()
        stack.clear()

    with ExitStack() as es:
        es.callback(model.register_forward_pre_hook(restart, with_kwargs=True).remove)
        for path, m in modules:
            es.callback(m.register_forward_pre_hook(start(path), with_kwargs=True).remove)
            es.callback(m.register_forward_hook(end(path), always_call=True).remove)
        with _Reads(watched, stack, reads):
            out = probe(model, call, error=SurgeryError, purpose="see which conv feeds which BatchNorm")
    returned = {id(t) for _, t in tensor_leaves(out)}
    once = _counted_once(model)
    pairs = []
    for bn_path, tensor_id in fed.items():
        conv_path = producer.get(tensor_id)
        if conv_path is None or tensor_id in returned or reads.get(tensor_id, set()) - {bn_path}:
            continue
        if calls.get(conv_path) == calls.get(bn_path) == 1 and _fits(model, conv_path, bn_path):
            if id(model.get_submodule(conv_path)) in once and id(model.get_submodule(bn_path)) in once:
                pairs.append((conv_path, bn_path))
    return pairs
