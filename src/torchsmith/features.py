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

import copy
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, fx, nn

from .runner import example_call, logger, modes_kept, probe, untouched
from .errors import FeatureExtractionError, closest
from .layers import ChildrenRunner, FeatureInfo, FeatureInfoList

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
    with untouched(model, values=True):  # tracing runs python: a traced `num_batches_tracked.add_(1)` really adds
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
    """Whether an in-place op later in the graph may write into ``node``'s tensor. Any later in-place op
    counts: aliases are common (``nn.Identity``, eval ``Dropout``, views, timm's ``drop_block``) and a
    needless clone costs less than a wrong value."""
    later = node.next
    while later.op != "output":
        if _writes_in_place(later, root):
            return True
        later = later.next
    return False


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


def _fx_graphs(model: nn.Module, requested: dict[str, str]) -> tuple[dict[bool, fx.Graph], dict[bool, dict[fx.Node, str]]]:
    """Trace in train and eval mode, keeping whole every module that holds no requested node."""

    def leaf(qualname: str) -> bool:
        return not any(qualname == "" or r.startswith(qualname + ".") for r in requested)

    graphs, names = {}, {}
    for mode in (True, False):
        with modes_kept(model, training=mode):
            graphs[mode], names[mode] = _trace(model, leaf)
    return graphs, names


def _chosen(graph: fx.Graph, names: dict[fx.Node, str], requested: Mapping[str, str]) -> dict[str, fx.Node]:
    """The node each request names in ``graph`` (a module name means the last node inside it)."""
    chosen: dict[str, fx.Node] = {}
    for node in reversed(graph.nodes):
        qualname = names.get(node)
        if qualname is None or node.op in ("placeholder", "output"):
            continue
        for query in requested:
            if query not in chosen and ".".join(qualname.split(".")[: query.count(".") + 1]) == query:
                chosen[query] = node
    return chosen


def _cut(model: nn.Module, graph: fx.Graph, chosen: dict[str, fx.Node], requested: dict[str, str]) -> fx.Graph:
    """Make ``graph`` return ``{name: node}`` and drop everything after the last requested node."""
    for node in graph.nodes:
        if node.op == "output":
            graph.erase_node(node)
    output = graph.output({requested[query]: chosen[query] for query in requested})
    graph.eliminate_dead_code()
    for node in chosen.values():
        if _overwritten_later(node, model):
            with graph.inserting_after(node):
                clone = graph.call_method("clone", (node,))
            output.replace_input_with(node, clone)
    graph.lint()
    graph.owning_module = None  # the extractor keeps the graph, not the model
    return graph


def _known_names(names: Iterable[str]) -> list[str]:
    """Node names and every module path above them (``layer1.0.add`` gives ``layer1`` and ``layer1.0`` too)."""
    out: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.setdefault(".".join(parts[:i]))
        out.setdefault(name)
    return list(out)


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
    cut: dict[bool, fx.Graph] = {}
    missing: dict[bool, list[str]] = {}
    for mode in (True, False):
        chosen = _chosen(graphs[mode], names[mode], requested)
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
    same = len(cut) == 1 and not missing[True] and not missing[False]  # one forward for both modes
    chain = _chain(cut[True], requested) if children and same else None
    if chain is not None:
        return _ChildrenExtractor(model, chain, requested)
    if len(cut) == 1 and not missing[False]:
        cut[False] = cut[True]
    return _GraphExtractor(model, cut, requested)


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


def feature_nodes(model: nn.Module, *, training: bool = False) -> list[str]:
    """Every node name :func:`extract_features` accepts for ``model``, in forward order.

    With torch.fx: one name per module call and per function call, traced
    through every non-torch module, named as torchvision's
    ``get_graph_node_names`` names them; unlike it, inputs (placeholders) and
    constant reads (``get_attr``) are not listed. ``training=False`` lists the
    eval-mode forward; ``training=True`` the train-mode one (auxiliary heads
    such as googlenet's ``aux1``). A model fx cannot trace lists its module paths.

    Example::

        >>> [n for n in feature_nodes(create_model("resnet18")) if n.startswith("layer1.0.")]
        ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.relu', 'layer1.0.conv2', 'layer1.0.bn2', 'layer1.0.add', 'layer1.0.relu_1']
    """
    try:
        with modes_kept(model, training=training):
            graph, names = _trace(model)
    except Exception as err:  # noqa: BLE001
        logger.info("torch.fx cannot trace %s (%s); listing module paths", type(model).__name__, err)
        return [name for name, _ in model.named_modules() if name]
    return [names.get(n, n.name) for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]


def _declared(model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """``{module: (channels, stride)}`` the model declares: ours (:class:`FeatureInfo`), timm's
    (a list of dicts, or ``features_only`` models' ``FeatureInfo`` with ``get_dicts()``)."""
    own = getattr(model, "feature_info", None)
    if own is None or isinstance(own, nn.Module):
        return {}
    if callable(getattr(own, "get_dicts", None)):
        own = own.get_dicts()
    out: dict[str, tuple[int | None, int | None]] = {}
    try:
        for item in own:
            if isinstance(item, FeatureInfo):
                out[item.module] = (item.channels, item.stride)
            elif isinstance(item, Mapping) and isinstance(item.get("module"), str):
                out[item["module"]] = (item.get("num_chs"), item.get("reduction"))
    except TypeError:
        return {}
    return out


def _bigger(call: tuple[tuple, dict]) -> tuple[tuple, dict] | None:
    """The same call with every input's spatial (image) or sequence (token ids) dims doubled; None when
    no input has such dims."""

    def grow(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        first = 2 if x.is_floating_point() or x.is_complex() else 1  # (B, C, *spatial) or (B, L) token ids
        if x.dim() <= first:
            return x
        return x.new_zeros(*x.shape[:first], *(2 * n for n in x.shape[first:]))

    args, kwargs = call
    grown = tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}
    changed = any(g is not a for g, a in zip(grown[0], args)) or any(grown[1][k] is not v for k, v in kwargs.items())
    return grown if changed else None


def _grid_of(x: Tensor | None, y: Tensor, channel: int) -> bool:
    """Whether ``y``'s dims other than batch and ``channel`` are ``x``'s image grid divided by one stride."""
    if x is None or not x.is_floating_point() or x.dim() != y.dim():
        return False
    grid = [n for d, n in enumerate(y.shape) if d not in (0, channel)]
    strides = {size // n if n and size % n == 0 else -1 for size, n in zip(x.shape[2:], grid)}
    return len(strides) == 1 and -1 not in strides


def _layout(y: Tensor, y2: Tensor | None, declared: int | None, x: Tensor | None = None) -> tuple[str, int] | None:
    """``(layout, channel dim)`` of ``y``: the one dim that does not grow with the input (``y2``); else the one
    dim equal to the declared channel count; else, for an image-shaped output, the one reading whose other
    dims are the input grid divided by one stride. None when none of these tells."""
    if y.dim() == 2:
        return "channels_first", 1
    dims = range(1, y.dim())
    fixed = [d for d in dims if y2 is not None and y2.dim() == y.dim() and y.shape[d] == y2.shape[d]]
    if len(fixed) != 1 and declared is not None:
        fixed = [d for d in dims if y.shape[d] == declared]
    if len(fixed) != 1 and y2 is None:
        fixed = [d for d in (1, y.dim() - 1) if _grid_of(x, y, d)]
    if len(fixed) != 1:
        return None
    dim = fixed[0]
    if dim == 1:
        return "channels_first", 1
    if dim == y.dim() - 1:
        return ("tokens" if y.dim() == 3 else "channels_last"), dim
    return None


def feature_info(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    return_nodes: ReturnNodes | None = None,
    *,
    example_inputs: Any = None,
) -> FeatureInfoList:
    """Channels, stride and layout of each requested node, found on the meta device (no compute, no memory).

    ``return_nodes`` defaults to the modules the model declares in its
    ``feature_info`` (ours, or timm's list of dicts), else its top-level
    children. The input is ``input_size`` (a float tensor), ``example_inputs``
    (a tensor, a tuple of positional arguments or a dict of keyword arguments,
    any dtypes: token ids for BERT), or guessed from the first layer.

    Which dimension holds the channels is measured, not assumed: the model is
    probed a second time with the spatial (or sequence) dims doubled, and the
    one output dim that does not grow is the channel dim (layout
    ``"channels_first"``, ``"channels_last"`` for swin's ``(B, H, W, C)``,
    ``"tokens"`` for ``(B, L, C)``). A model that runs at one input size only
    is read with the channel count it declares; with neither, the node is
    refused with :class:`FeatureExtractionError`. Stride is the model's declared
    stride (timm's ``reduction``) when it has one, else input width / map width;
    ``0`` for ``(B, C)`` and token outputs.

    Example::

        >>> feature_info(create_model("resnet50"), (1, 3, 224, 224), ["layer1", "layer4"])
        [FeatureInfo(channels=256, stride=4, module='layer1'), FeatureInfo(channels=2048, stride=32, module='layer4')]
    """
    declared = _declared(model)
    if return_nodes is None:
        return_nodes = list(declared) or [name for name, _ in model.named_children()]
    requested = _normalise(return_nodes)
    call = example_call(model, input_size, example_inputs, error=FeatureExtractionError)
    extractor = extract_features(model, requested)
    purpose = "measure its feature maps"
    outputs = probe(extractor, call, error=FeatureExtractionError, purpose=purpose)
    bigger = _bigger(call)
    try:
        outputs2 = probe(extractor, bigger, error=FeatureExtractionError) if bigger is not None else None
    except FeatureExtractionError as err:  # a model with one input size: the declared channels decide
        logger.info("%s does not run at a second input size (%s)", type(model).__name__, err)
        outputs2 = None
    x = next((v for v in [*call[0], *call[1].values()] if isinstance(v, Tensor)), None)
    info = FeatureInfoList()
    for node, name in requested.items():
        y = outputs[name]
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise FeatureExtractionError(f"node {node!r} gives {type(y).__name__} {getattr(y, 'shape', '')}, not a (B, C, ...) tensor.")
        channels, stride = declared.get(node, (None, None))
        y2 = outputs2[name] if outputs2 is not None else None
        found = _layout(y, y2 if isinstance(y2, Tensor) else None, channels, x)
        if found is None:
            raise FeatureExtractionError(
                f"cannot tell which dimension of {node!r}'s output {tuple(y.shape)} holds channels: "
                f"{type(model).__name__} {'gives ' + str(tuple(y2.shape)) + ' at twice the input size' if isinstance(y2, Tensor) else 'does not run at a second input size'} "
                "and declares no channel count for it. Request a node with a (B, C, ...) output."
            )
        layout, dim = found
        if stride is None:
            spatial = x is not None and x.is_floating_point() and x.dim() >= 3
            if layout == "channels_first" and y.dim() >= 3 and spatial:
                stride = round(x.shape[-1] / y.shape[-1])
            elif layout == "channels_last" and spatial:
                stride = round(x.shape[-1] / y.shape[-2])
            else:
                stride = 0
        info.append(FeatureInfo(channels=int(y.shape[dim]), stride=int(stride), module=node, layout=layout))
    return info
