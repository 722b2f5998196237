"""Intermediate outputs of any ``nn.Module``, by (nested) dotted name.

``extract_features`` returns a module whose forward gives ``{name: tensor}``.
Three strategies, chosen in this order by ``mode="auto"``:

- ``"children"``: the requested nodes are top-level children run one after the
  other (an ``nn.Sequential``, or a model whose traced graph is that chain up
  to the last requested child). The extractor runs those children in a loop.
- ``"fx"``: ``torch.fx`` traces the model (node names as torchvision's
  ``get_graph_node_names``); modules that hold no requested node are kept
  whole as leaves. Any node can be requested, function nodes too
  (``"layer1.0.add"``). A forward that branches on ``self.training`` is traced
  in both modes and the extractor follows ``.train()`` / ``.eval()``.
- ``"hooks"``: forward hooks on the requested modules, for models that do not
  trace (data-dependent control flow, ``.item()``). Module names only.

Every strategy stops computing after the last requested node: the graph or the
loop is cut there, hooks stop the forward once everything is captured.

A module called more than once (``resnet``'s shared ``relu``): its name gives
the output of its **first** call; ``name_1``, ``name_2`` ... give later calls
(torchvision's naming). A requested tensor that a later in-place operation
would overwrite (``bn3`` before ``out += identity``) is cloned, so every
returned tensor holds the value the node produced.

Example::

    >>> model = create_model("resnet50").eval()
    >>> body = extract_features(model, {"layer2": "c3", "layer3.1.conv2": "mid"})
    >>> body.strategy
    'fx'
    >>> {k: tuple(v.shape) for k, v in body(torch.randn(1, 3, 224, 224)).items()}
    {'c3': (1, 512, 28, 28), 'mid': (1, 256, 14, 14)}
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn

from ._probe import logger, modes_kept, probe
from .errors import FeatureExtractionError, closest
from .layers import FeatureInfo

__all__ = ["FeatureExtractor", "extract_features", "feature_nodes", "feature_info"]

Mode = Literal["auto", "fx", "hooks", "children"]
ReturnNodes = Sequence[str] | Mapping[str, str]

_CALL_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<index>[0-9]+)$")


# helpers: naming


class _NodePathTracer(fx.Tracer):
    """An fx tracer that names each node by the module path it runs in.

    ``leaf(qualname)`` says which modules to keep whole; torch's own layers are
    always leaves. Names: a module call is its path (``layer1.0.relu``); a
    function is its scope plus the function (``layer1.0.add``); a repeat within
    one scope gets ``_1``, ``_2`` ...
    """

    def __init__(self, leaf: Any = None) -> None:
        super().__init__()
        self._leaf = leaf or (lambda qualname: False)
        self._scope = ""
        self._seen: dict[str, int] = {}
        self.names: dict[fx.Node, str] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or self._leaf(qualname)

    def call_module(self, m, forward, args, kwargs):
        outer, self._scope = self._scope, self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope = outer

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        node = proxy.node
        if node.op == "call_module":
            base = self._scope
        else:  # fx numbers repeats globally (add_3); we number them per scope
            match = _CALL_SUFFIX.match(node.name)
            own = match["base"] if match else node.name
            base = f"{self._scope}.{own}" if self._scope else own
        count = self._seen.get(base, 0)
        self._seen[base] = count + 1
        self.names[node] = base if count == 0 else f"{base}_{count}"
        return proxy


def _trace(model: nn.Module, leaf: Any = None) -> tuple[fx.Graph, dict[fx.Node, str]]:
    tracer = _NodePathTracer(leaf)
    graph = tracer.trace(model)
    graph.owning_module = model  # lets dead-code elimination ask modules whether they are pure
    return graph, tracer.names


def _normalise(return_nodes: ReturnNodes) -> dict[str, str]:
    if isinstance(return_nodes, str):
        return_nodes = [return_nodes]
    if isinstance(return_nodes, Mapping):
        out = {str(k): str(v) for k, v in return_nodes.items()}
    else:
        out = {str(n): str(n) for n in return_nodes}
    if not out:
        raise FeatureExtractionError("return_nodes is empty: name at least one module or node (see feature_nodes(model)).")
    if len(set(out.values())) != len(out):
        raise FeatureExtractionError(f"return_nodes maps two nodes to one output name: {out}.")
    return out


def _module_and_call(model: nn.Module, name: str) -> tuple[str, int] | None:
    """``"layer1.0.relu_2"`` -> ``("layer1.0.relu", 2)`` when that names a module; else None."""
    modules = dict(model.named_modules())
    if name in modules:
        return name, 0
    match = _CALL_SUFFIX.match(name)
    if match and match["base"] in modules:
        return match["base"], int(match["index"])
    return None


def _unknown(names: Iterable[str], valid: Iterable[str], model: nn.Module, hint: str = "") -> FeatureExtractionError:
    valid = list(dict.fromkeys(valid))
    lines = []
    for name in names:
        near = closest(name, valid)
        lines.append(f"  {name!r}" + (f": did you mean {', '.join(map(repr, near))}?" if near else ""))
    return FeatureExtractionError(
        f"{type(model).__name__} has no node named:\n" + "\n".join(lines) + f"\nList the valid names with feature_nodes(model).{hint}"
    )


def _writes_in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` overwrites its first argument."""
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_OPERATORS or name.endswith("_") and not name.endswith("__") or bool(node.kwargs.get("inplace"))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(node.target), "inplace", False))
    return False


_INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.setitem,
}  # fmt: skip


def _overwritten_later(node: fx.Node, root: nn.Module) -> bool:
    """Whether an in-place op later in the graph writes into ``node``'s tensor."""
    return any(user.args and user.args[0] is node and _writes_in_place(user, root) for user in node.users)


# classes


class FeatureExtractor(nn.Module):
    """A module returning ``{name: tensor}`` for the nodes it was built for.

    Attributes:
        strategy: ``"fx"``, ``"children"`` or ``"hooks"``.
        return_nodes: ``{node: output name}``, in output order.

    It shares parameters with the model it came from. For ``"fx"`` and
    ``"children"`` its ``state_dict`` keys are the model's (those still used);
    for ``"hooks"`` they carry a ``model.`` prefix.
    """

    strategy: str

    def __init__(self, return_nodes: Mapping[str, str]) -> None:
        super().__init__()
        self.return_nodes = dict(return_nodes)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, return_nodes={self.return_nodes}"


class _GraphExtractor(FeatureExtractor):
    """Runs the python code fx generated for the cut graph (one per training mode)."""

    strategy = "fx"

    def __init__(self, model: nn.Module, graphs: dict[bool, fx.Graph], return_nodes: Mapping[str, str]) -> None:
        super().__init__(return_nodes)
        used = {n.target.split(".")[0] for g in graphs.values() for n in g.nodes if n.op in ("call_module", "get_attr")}
        order = [*model._parameters, *model._buffers, *model._modules]
        for name in [n for n in order if n in used] + sorted(used - set(order)):
            value = getattr(model, name)
            if isinstance(value, nn.Module):
                self.add_module(name, value)
            elif isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            elif isinstance(value, Tensor) and name in model._buffers:
                self.register_buffer(name, value, persistent=name not in model._non_persistent_buffers_set)
            else:
                setattr(self, name, value)
        self._graphs = graphs
        self._compile()

    def _compile(self) -> None:
        self._forwards = {}
        for mode, graph in self._graphs.items():
            code = graph.python_code(root_module="self")
            scope = dict(code.globals)
            exec(compile(code.src, f"<torchsmith.features {self.strategy}>", "exec"), scope)  # noqa: S102 - fx-generated code
            self._forwards[mode] = scope["forward"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_forwards", None)  # functions made by exec do not pickle; rebuilt from the graphs
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._compile()

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        forward = self._forwards[self.training] if len(self._forwards) > 1 else next(iter(self._forwards.values()))
        return forward(self, *args, **kwargs)


class _ChildrenExtractor(FeatureExtractor):
    """Runs the model's first top-level children in order, collecting the requested outputs."""

    strategy = "children"

    def __init__(self, model: nn.Module, chain: Sequence[str], return_nodes: Mapping[str, str]) -> None:
        super().__init__(return_nodes)
        for name in chain:
            self.add_module(name, model.get_submodule(name))
        # an in-place child right after a requested one would overwrite its output
        self._clone = {a for a, b in zip(chain, chain[1:]) if a in return_nodes and getattr(self._modules[b], "inplace", False)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        found: dict[str, Tensor] = {}
        for name, module in self._modules.items():
            x = module(x)
            if name in self.return_nodes:
                found[self.return_nodes[name]] = x.clone() if name in self._clone else x
        return {out: found[out] for out in self.return_nodes.values()}


class _StopForward(Exception):
    """Raised by a hook once every requested output is captured: the rest of the forward is skipped."""


class _HookExtractor(FeatureExtractor):
    """Forward hooks, registered for the length of one forward, on the requested modules."""

    strategy = "hooks"

    def __init__(self, model: nn.Module, calls: Mapping[str, tuple[str, int]], return_nodes: Mapping[str, str]) -> None:
        super().__init__(return_nodes)
        self.model = model
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


def _fx_graphs(model: nn.Module, requested: dict[str, str]) -> tuple[dict[bool, fx.Graph], dict[bool, dict[fx.Node, str]]]:
    """Trace in train and eval mode, keeping whole every module that holds no requested node."""

    def leaf(qualname: str) -> bool:
        return not any(qualname == "" or r.startswith(qualname + ".") for r in requested)

    graphs, names = {}, {}
    for mode in (True, False):
        with modes_kept(model, training=mode):
            graphs[mode], names[mode] = _trace(model, leaf)
    return graphs, names


def _cut(model: nn.Module, graph: fx.Graph, names: dict[fx.Node, str], requested: dict[str, str]) -> fx.Graph:
    """Make ``graph`` return ``{name: node}`` and drop everything after the last requested node."""
    chosen: dict[str, fx.Node] = {}
    for node in reversed(graph.nodes):  # a module name means the last node inside it
        qualname = names.get(node)
        if qualname is None or node.op in ("placeholder", "output"):
            continue
        for query in requested:
            if query not in chosen and ".".join(qualname.split(".")[: query.count(".") + 1]) == query:
                chosen[query] = node
    missing = [q for q in requested if q not in chosen]
    if missing:
        raise _unknown(missing, [*names.values(), *(n for n, _ in model.named_modules() if n)], model)
    for node in graph.nodes:
        if node.op == "output":
            graph.erase_node(node)
    output = graph.output({requested[query]: chosen[query] for query in requested})
    graph.eliminate_dead_code()
    for query, node in chosen.items():
        if _overwritten_later(node, model):
            with graph.inserting_after(node):
                copy = graph.call_method("clone", (node,))
            output.replace_input_with(node, copy)
    graph.lint()
    graph.owning_module = None  # the extractor keeps the graph, not the model
    return graph


def _chain(graph: fx.Graph, requested: Mapping[str, str]) -> list[str] | None:
    """The top-level children the cut graph runs one after another, when it is only that."""
    nodes = [n for n in graph.nodes if n.op != "output"]
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        return None
    chain, previous = [], nodes[0]
    for node in nodes[1:]:
        if node.op != "call_module" or "." in node.target or node.args != (previous,) or node.kwargs:
            return None
        chain.append(node.target)
        previous = node
    if len(set(chain)) != len(chain) or set(requested) - set(chain):
        return None
    return chain


def _sequential_chain(model: nn.Module, requested: Mapping[str, str]) -> list[str] | None:
    if not isinstance(model, nn.Sequential):
        return None
    names = list(model._modules)
    if set(requested) - set(names):
        return None
    return names[: max(names.index(r) for r in requested) + 1]


def _build_fx(model: nn.Module, requested: dict[str, str], *, children: bool) -> FeatureExtractor:
    graphs, names = _fx_graphs(model, requested)
    graphs = {mode: _cut(model, graphs[mode], names[mode], requested) for mode in graphs}
    if graphs[True].python_code("self").src == graphs[False].python_code("self").src:
        graphs = {True: graphs[True]}  # the forward does not branch on self.training
    chain = _chain(graphs[True], requested) if children and len(graphs) == 1 else None
    if chain is not None:
        return _ChildrenExtractor(model, chain, requested)
    return _GraphExtractor(model, graphs, requested)


def _build_hooks(model: nn.Module, requested: dict[str, str]) -> FeatureExtractor:
    calls = {name: _module_and_call(model, name) for name in requested}
    unknown = [name for name, call in calls.items() if call is None]
    if unknown:
        hint = " The hooks strategy sees modules only; function nodes need a model torch.fx can trace."
        raise _unknown(unknown, (n for n, _ in model.named_modules() if n), model, hint)
    return _HookExtractor(model, calls, requested)


def extract_features(model: nn.Module, return_nodes: ReturnNodes, *, mode: Mode = "auto") -> FeatureExtractor:
    """A module whose forward returns ``{name: tensor}`` for the requested nodes of ``model``.

    Args:
        model: any ``nn.Module``; the extractor shares its parameters.
        return_nodes: dotted names (``["layer2", "layer3.1.conv2"]``), or
            ``{node: output_name}``. Module paths, or graph nodes as listed by
            :func:`feature_nodes` (``"layer1.0.add"``, ``"layer1.0.relu_1"``).
        mode: ``"auto"`` (children fast path, else fx, else hooks), or force one.

    Raises:
        FeatureExtractionError: unknown names (with the closest valid ones), or a
            strategy that cannot serve the request.

    Example::

        >>> seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> ex = extract_features(seq, {"1": "act"})
        >>> ex.strategy, ex(torch.randn(1, 3, 16, 16))["act"].shape   # (B, 8, 14, 14)
        ('children', torch.Size([1, 8, 14, 14]))
    """
    requested = _normalise(return_nodes)
    if mode not in ("auto", "fx", "hooks", "children"):
        raise FeatureExtractionError(f"mode must be 'auto', 'fx', 'hooks' or 'children', got {mode!r}.")
    if mode == "hooks":
        return _build_hooks(model, requested)
    chain = _sequential_chain(model, requested)
    if chain is not None and mode in ("auto", "children"):
        return _ChildrenExtractor(model, chain, requested)
    try:
        extractor = _build_fx(model, requested, children=mode != "fx")
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


def feature_nodes(model: nn.Module) -> list[str]:
    """Every node name :func:`extract_features` accepts for ``model``, in forward order.

    With torch.fx: one name per module call and per function call, traced
    through every non-torch module (torchvision's ``get_graph_node_names``
    naming, in eval mode). A model fx cannot trace lists its module paths.

    Example::

        >>> [n for n in feature_nodes(create_model("resnet18")) if n.startswith("layer1.0.")]
        ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.relu', 'layer1.0.conv2', 'layer1.0.bn2', 'layer1.0.add', 'layer1.0.relu_1']
    """
    try:
        with modes_kept(model, training=False):
            graph, names = _trace(model)
    except Exception as err:  # noqa: BLE001
        logger.info("torch.fx cannot trace %s (%s); listing module paths", type(model).__name__, err)
        return [name for name, _ in model.named_modules() if name]
    return [names[n] for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]


def feature_info(
    model: nn.Module, input_size: Sequence[int], return_nodes: ReturnNodes | None = None
) -> list[FeatureInfo]:
    """Channels and stride of each requested node, found on the meta device (no compute, no memory).

    ``return_nodes`` defaults to the model's own ``feature_info`` modules, else
    its top-level children. Stride is input width / map width (rounded);
    ``0`` for outputs with no spatial dimension.

    Example::

        >>> feature_info(create_model("resnet50"), (1, 3, 224, 224), ["layer1", "layer4"])
        [FeatureInfo(channels=256, stride=4, module='layer1'), FeatureInfo(channels=2048, stride=32, module='layer4')]
    """
    if return_nodes is None:
        own = getattr(model, "feature_info", None)
        return_nodes = [f.module for f in own] if own else [name for name, _ in model.named_children()]
    requested = _normalise(return_nodes)
    extractor = extract_features(model, requested)
    x = torch.empty(*input_size, device="meta")
    outputs = probe(extractor, x)
    info = []
    for node, name in requested.items():
        y = outputs[name]
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise FeatureExtractionError(f"node {node!r} gives {type(y).__name__} {getattr(y, 'shape', '')}, not a (B, C, ...) tensor.")
        stride = round(x.shape[-1] / y.shape[-1]) if y.dim() >= 3 and x.dim() >= 3 else 0
        info.append(FeatureInfo(channels=int(y.shape[1]), stride=stride, module=node))
    return info
