"""Node names and graphs: the fx tracer that names each node by its module path (as torchvision's
``get_graph_node_names``), the checks on requested names, and cutting a traced graph after the last
requested node. Nothing here changes the model it traces (:func:`torchsmith.runner.untouched`).
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import fx, nn

from ..errors import FeatureExtractionError, closest
from ..paths import unwrapped
from ..runner import modes_kept, untouched

__all__ = ["feature_nodes"]

logger = logging.getLogger("torchsmith")

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
    modules = dict(model.named_modules(remove_duplicate=False))
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


_VIEWS = {
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "flatten", "unflatten", "squeeze", "unsqueeze",
    "narrow", "select", "expand", "expand_as", "unbind", "split", "chunk", "t", "movedim", "swapaxes", "diagonal",
    "unfold", "as_strided", "detach", "contiguous", "__getitem__", "getitem", "real", "imag",
}  # fmt: skip


def _is_view(node: fx.Node) -> bool:
    """Whether ``node`` may return a view of its first argument (over-approximated: a needless keep is harmless)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "") if node.op == "call_function" else ""
    return name in _VIEWS


def _opaque(node: fx.Node) -> bool:
    """A call of a Python function fx kept whole (``torch.fx.wrap``): it may write into any tensor it is given."""
    module = (getattr(node.target, "__module__", None) or "").split(".")[0]
    return node.op == "call_function" and module not in ("torch", "_operator", "operator", "builtins", "math", "")


def _eliminate_dead_code(graph: fx.Graph, root: nn.Module) -> None:
    """fx's dead-code elimination, but an in-place write stays when a live node reads the written tensor (or a view
    of it) later: fx would drop torchvision MViT's ``_add_shortcut(x, q)`` (its result unused, ``x`` written in
    place), and every value after it would be wrong."""
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    group = {n: n for n in nodes}  # tensors that may share memory: a node and the views taken of it

    def find(n: fx.Node) -> fx.Node:
        while group[n] is not n:
            group[n] = group[group[n]]
            n = group[n]
        return n

    for n in nodes:
        if _is_view(n) and n.args and isinstance(n.args[0], fx.Node):
            group[find(n)] = find(n.args[0])
    members: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        members.setdefault(find(n), []).append(n)
    live: set[fx.Node] = set()
    changed = True
    while changed:
        changed = False
        for n in reversed(nodes):
            if n in live:
                continue
            keep = n.op in ("placeholder", "output") or n.is_impure() or any(u in live for u in n.users)
            if not keep and (_writes_in_place(n, root) or _opaque(n)):
                written = n.all_input_nodes if _opaque(n) else [a for a in n.args[:1] if isinstance(a, fx.Node)]
                keep = any(
                    u in live and u.op != "output" and order[u] > order[n]
                    for a in written for alias in members[find(a)] for u in alias.users if u is not n
                )  # fmt: skip
            if keep:
                live.add(n)
                changed = True
    for n in reversed(nodes):
        if n not in live:
            graph.erase_node(n)


# graphs


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
    _eliminate_dead_code(graph, model)
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
    model = unwrapped(model)
    try:
        with modes_kept(model, training=training):
            graph, names = _trace(model)
    except Exception as err:  # noqa: BLE001
        logger.info("torch.fx cannot trace %s (%s); listing module paths", type(model).__name__, err)
        return [name for name, _ in model.named_modules() if name]
    return [names.get(n, n.name) for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
