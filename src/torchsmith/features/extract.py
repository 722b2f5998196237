"""``extract_features``: the three extractors (children, fx, hooks) and how one is chosen.

The extractor shares the model's parameters and buffers; building one changes nothing in the model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, fx, nn

from ..errors import FeatureExtractionError
from ..layers import ChildrenRunner
from ..paths import canonical_path, module_paths, unwrapped
from .nodes import (
    Mode, ReturnNodes, _chain, _chosen, _cut, _fx_graphs, _known_names, _module_and_call, _normalise, _optional_inputs_used, _sequential_chain,
    _unknown,
)  # fmt: skip

__all__ = ["FeatureExtractor", "extract_features"]

logger = logging.getLogger("torchsmith")


# classes


class FeatureExtractor(nn.Module):
    """A module returning ``{name: tensor}`` for the nodes it was built for.

    Attributes:
        strategy: ``"fx"``, ``"children"`` or ``"hooks"``.
        return_nodes: ``{node: output name}``, in output order.

    It shares parameters and buffers with the model it came from and starts in
    the model's mode (``training``). For ``"fx"`` and ``"children"`` its
    ``state_dict`` keys are the model's (those still used); for ``"hooks"``
    they carry a ``model.`` prefix.
    """

    strategy: str
    return_nodes: dict[str, str]

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, return_nodes={self.return_nodes}"


def _mode_missing(message: str) -> None:
    """Called by the forward of a mode whose graph lacks a requested node (an auxiliary head in eval)."""
    raise FeatureExtractionError(message)


def _raising_graph(message: str) -> fx.Graph:
    graph = fx.Graph()
    graph.placeholder("*args")
    graph.placeholder("**kwargs")
    graph.call_function(_mode_missing, (message,))
    graph.output(None)
    return graph


def _copy_attr(source: nn.Module, target: nn.Module, path: str) -> None:
    """Make ``target.<path>`` the very object ``source.<path>`` is (parents become plain containers)."""
    *parents, leaf = path.split(".")
    for name in parents:
        here, there = getattr(source, name), getattr(target, name, None)
        if there is here:
            return
        if there is None:
            there = nn.Module()
            setattr(target, name, there)
        source, target = here, there
    value = getattr(source, leaf)
    if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
        target.register_buffer(leaf, value, persistent=leaf not in source._non_persistent_buffers_set)
    else:
        setattr(target, leaf, value)


class _GraphExtractor(fx.GraphModule, FeatureExtractor):
    """The cut fx graphs of a model, one per mode (torchvision's ``DualGraphModule``): ``.train()`` / ``.eval()``
    switch graphs. Submodules are the model's own; a mode whose graph lacks a requested node raises on forward."""

    strategy = "fx"

    def __init__(
        self, root: nn.Module, graphs: Mapping[bool, fx.Graph], return_nodes: Mapping[str, str], *, training: bool | None = None
    ) -> None:
        training = root.training if training is None else training
        graphs = dict(graphs)
        for mode in (True, False):
            if mode not in graphs:
                other = "train" if mode is False else "eval"
                graphs[mode] = _raising_graph(
                    f"the nodes {list(return_nodes)} run only in {other} mode (auxiliary heads); "
                    f"call .{other}() on the extractor, or request nodes that run in both modes."
                )
        super().__init__(root, graphs[training], class_name=f"{type(root).__name__}Features")
        for graph in graphs.values():
            for node in graph.nodes:
                if node.op in ("call_module", "get_attr"):
                    _copy_attr(root, self, node.target)
        shared = {id(m) for m in root.modules()}
        for module in self.modules():
            if id(module) not in shared:
                module.training = training  # the plain containers made for nested paths
        self._graphs = graphs
        self.return_nodes = dict(return_nodes)

    def train(self, mode: bool = True) -> _GraphExtractor:
        graphs = self.__dict__.get("_graphs")
        if graphs is not None and self.graph is not graphs[mode]:
            self.graph = graphs[mode]  # recompiles the forward
        return super().train(mode)

    def __reduce__(self):
        holder = {"_modules": self._modules, "_parameters": self._parameters, "_buffers": self._buffers,
                  "_non_persistent_buffers_set": self._non_persistent_buffers_set}  # fmt: skip
        graphs = {mode: copy.deepcopy(g) for mode, g in self._graphs.items()}  # without their owning module
        return (_restore_graph_extractor, (holder, graphs, self.return_nodes, self.training))

    def __deepcopy__(self, memo: dict) -> _GraphExtractor:
        restore, args = self.__reduce__()
        copied = restore(*copy.deepcopy(args, memo))
        memo[id(self)] = copied
        return copied


def _restore_graph_extractor(holder: dict, graphs: dict, return_nodes: dict, training: bool) -> _GraphExtractor:
    root = nn.Module()
    root.__dict__.update(holder)
    root.training = training
    return _GraphExtractor(root, graphs, return_nodes, training=training)


class _ChildrenExtractor(ChildrenRunner, FeatureExtractor):
    """Runs the model's first top-level children in order (:class:`ChildrenRunner`), collecting the requested outputs."""

    strategy = "children"

    def __init__(self, model: nn.Module, chain: Sequence[str], return_nodes: Mapping[str, str]) -> None:
        super().__init__({name: model.get_submodule(name) for name in chain}, return_nodes)
        self.training = model.training

    @property
    def return_nodes(self) -> dict[str, str]:  # type: ignore[override]
        return self.return_layers

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(super().forward(x))


class _StopForward(Exception):
    """Raised by a hook once every requested output is captured: the rest of the forward is skipped."""


class _HookExtractor(FeatureExtractor):
    """Forward hooks, registered for the length of one forward, on the requested modules."""

    strategy = "hooks"

    def __init__(self, model: nn.Module, calls: Mapping[str, tuple[str, int]], return_nodes: Mapping[str, str]) -> None:
        super().__init__()
        self.return_nodes = dict(return_nodes)
        self.model = model
        self.training = model.training
        self._calls = dict(calls)  # node name -> (module path, call index)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        wanted: dict[tuple[str, int], str] = {call: self.return_nodes[node] for node, call in self._calls.items()}
        counts: dict[str, int] = {}
        found: dict[str, Tensor] = {}

        def hook(path: str):
            def record(module: nn.Module, inputs: Any, output: Any) -> None:
                index = counts.get(path, 0)
                counts[path] = index + 1
                if (path, index) in wanted:
                    # a later in-place op could overwrite it, and hooks cannot see what comes next
                    found[wanted[(path, index)]] = output.clone() if isinstance(output, Tensor) else output
                    if len(found) == len(wanted):
                        raise _StopForward

            return record

        handles = [self.model.get_submodule(p).register_forward_hook(hook(p)) for p in {p for p, _ in self._calls.values()}]
        try:
            self.model(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [node for node, call in self._calls.items() if self.return_nodes[node] not in found]
        if missing:
            raise FeatureExtractionError(
                f"{type(self.model).__name__}'s forward never produced {missing} "
                f"(modules called fewer times than asked: {counts}); check the call index suffixes."
            )
        return {out: found[out] for out in self.return_nodes.values()}


# building


def _build_fx(model: nn.Module, requested: dict[str, str], *, mode: Mode) -> FeatureExtractor:
    try:  # unrequested modules kept whole: shows a chain of top-level children
        quick: tuple | None = _cut_graphs(model, requested, whole="unrequested")
    except Exception:  # noqa: BLE001 - the graph below may still trace
        quick = None
    if quick is not None:
        cut, missing = quick
        same = len(cut) == 1 and not missing[True] and not missing[False]  # one forward for both modes
        chain = _chain(cut[True], requested) if mode != "fx" and same else None
        if chain is not None:
            return _ChildrenExtractor(model, chain, requested)
    try:  # the graph that runs: traced through every module (see _fx_graphs)
        cut, missing = _cut_graphs(model, requested, whole="none")
    except Exception as err:  # noqa: BLE001 - a module fx cannot trace into: keep it whole, as above
        if quick is None:
            raise
        logger.info("torch.fx cannot trace into every module of %s (%s); keeping unrequested ones whole", type(model).__name__, err)
    optional = sorted({name for graph in cut.values() for name in _optional_inputs_used(model, graph)})
    if optional:  # the graph holds only when they are passed; run without them it would take the wrong branch
        if mode == "auto" and all(_module_and_call(model, node) is not None for node in requested):
            logger.info("%s's graph reads %s, which default to None: using forward hooks", type(model).__name__, optional)
            return _build_hooks(model, requested)  # exact with and without them
        cut, missing = _cut_graphs(model, requested, whole="none", none=True)  # refuses them when passed
    if len(cut) == 1 and not missing[False]:
        cut[False] = cut[True]
    return _GraphExtractor(model, cut, requested)


def _cut_graphs(
    model: nn.Module, requested: dict[str, str], *, whole: str, none: bool = False
) -> tuple[dict[bool, fx.Graph], dict[bool, list[str]]]:
    """The graphs cut at the requested nodes, per mode that has them all (one when both modes' are the same),
    and the requested nodes each mode lacks."""
    graphs, names, outputs = _fx_graphs(model, requested, whole=whole, none=none)
    cut: dict[bool, fx.Graph] = {}
    missing: dict[bool, list[str]] = {}
    for mode in (True, False):
        chosen = _chosen(graphs[mode], names[mode], requested, outputs[mode])
        missing[mode] = [q for q in requested if q not in chosen]
        if not missing[mode]:
            cut[mode] = _cut(model, graphs[mode], chosen, requested)
    if not cut:
        unknown = [q for q in requested if q in missing[True] and q in missing[False]]
        if unknown:
            never = [q for q in unknown if q in dict(model.named_modules())]
            hint = (f" {never} are modules of the model that its forward never calls, in train or eval mode." if never else "")
            raise _unknown(unknown, _known_names([*names[False].values(), *names[True].values()]), model, hint)
        raise FeatureExtractionError(
            f"{missing[False]} run only in train mode and {missing[True]} only in eval mode: "
            "no single forward gives them all; extract them with two extractors."
        )
    if len(cut) == 2 and cut[True].python_code("self").src == cut[False].python_code("self").src:
        cut = {True: cut[True]}  # the forward does not branch on self.training
    return cut, missing


def _build_hooks(model: nn.Module, requested: dict[str, str]) -> FeatureExtractor:
    calls = {name: _module_and_call(model, name) for name in requested}
    unknown = [name for name, call in calls.items() if call is None]
    if unknown:
        hint = " The hooks strategy sees modules only; function nodes need a model torch.fx can trace."
        raise _unknown(unknown, module_paths(model), model, hint)
    return _HookExtractor(model, calls, requested)


def _by_first_name(model: nn.Module, requested: dict[str, str]) -> dict[str, str]:
    """``requested`` with each node named by its module's first name (torch.fx and ``named_modules`` know a
    module registered twice by that one only)."""
    out: dict[str, str] = {}
    for node, name in requested.items():
        first = canonical_path(model, node)
        if first in out:
            raise FeatureExtractionError(
                f"{node!r} is the same node as another one requested ({first!r}); request it once, under one name."
            )
        out[first] = name
    return out


def extract_features(model: nn.Module, return_nodes: ReturnNodes, *, mode: Mode = "auto") -> FeatureExtractor:
    """A module whose forward returns ``{name: tensor}`` for the requested nodes of ``model``.

    Args:
        model: any ``nn.Module``; the extractor shares its parameters.
        return_nodes: dotted names (``["layer2", "layer3.1.conv2"]``), or
            ``{node: output_name}``. Module paths, or graph nodes as listed by
            :func:`feature_nodes` (``"layer1.0.add"``, ``"layer1.0.relu_1"``).
        mode: ``"auto"`` (children fast path, else fx, else hooks), or force one.

    A module registered under two names may be asked for by either; on a
    ``torch.compile``d model, names are those of the model it compiles (with
    or without the ``_orig_mod.`` prefix), and the extractor runs that model.

    Raises:
        FeatureExtractionError: unknown names (with the closest valid ones), or a
            strategy that cannot serve the request.

    Example::

        >>> seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> ex = extract_features(seq, {"1": "act"})
        >>> ex.strategy, ex(torch.randn(1, 3, 16, 16))["act"].shape   # (B, 8, 14, 14)
        ('children', torch.Size([1, 8, 14, 14]))
    """
    model = unwrapped(model)
    requested = _by_first_name(model, _normalise(return_nodes))
    if mode not in ("auto", "fx", "hooks", "children"):
        raise FeatureExtractionError(f"mode must be 'auto', 'fx', 'hooks' or 'children', got {mode!r}.")
    if mode == "hooks":
        return _build_hooks(model, requested)
    chain = _sequential_chain(model, requested)
    if chain is not None and mode in ("auto", "children"):
        return _ChildrenExtractor(model, chain, requested)
    try:
        extractor = _build_fx(model, requested, mode=mode)
    except FeatureExtractionError:
        raise
    except Exception as err:  # noqa: BLE001 - any tracing failure
        if mode != "auto":
            raise FeatureExtractionError(f"torch.fx cannot trace {type(model).__name__}: {err}. Use mode='hooks' or 'auto'.") from err
        logger.info("torch.fx cannot trace %s (%s); using forward hooks", type(model).__name__, err)
        try:
            return _build_hooks(model, requested)
        except FeatureExtractionError as hooks_err:
            raise FeatureExtractionError(f"{hooks_err}\n(torch.fx failed with: {err})") from err
    if mode == "children" and extractor.strategy != "children":
        raise FeatureExtractionError(
            f"{sorted(requested)} of {type(model).__name__} are not reached by running its top-level children in order; "
            "use mode='auto' or 'fx'."
        )
    return extractor
