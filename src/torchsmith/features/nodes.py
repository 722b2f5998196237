"""Node names and graphs: the fx tracer that names each node by its module path (as torchvision's
``get_graph_node_names``), the checks on requested names, and cutting a traced graph after the last
requested node. Nothing here changes the model it traces (:func:`torchsmith.runner.untouched`).
"""

from __future__ import annotations

import inspect
import logging
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, fx, nn

from ..errors import FeatureExtractionError, closest
from ..paths import unwrapped
from ..runner import map_tensors, modes_kept, untouched

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

    def __init__(self, leaf: Any = None, wanted: Iterable[str] = ()) -> None:
        super().__init__()
        self._leaf = leaf or (lambda qualname: False)
        self._wanted = set(wanted)
        self._scope = ""
        self._seen: dict[str, int] = {}
        self.names: dict[fx.Node, str] = {}
        self.outputs: dict[str, list[fx.Node]] = {}  # a wanted module traced through: the node of each call's output

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or self._leaf(qualname)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        outer, self._scope = self._scope, path
        try:
            out = super().call_module(m, forward, args, kwargs)
        finally:
            self._scope = outer
        if path in self._wanted and not self.is_leaf_module(m, path):
            # what its forward returned; a list or tuple of values stays one for the code after it (kept whole, it
            # would be a proxy: timm's SelecSLS blocks ask isinstance(x, list)), and a node packs it for the output
            if isinstance(out, fx.Proxy):
                node = out.node
            else:
                node = super().create_proxy("call_function", _packed, (out,), {}).node
            self.outputs.setdefault(path, []).append(node)
        return out

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


def _none_defaults(model: nn.Module) -> dict[str, None]:
    """The forward's arguments that default to ``None`` (``mask=None``). Traced as inputs, ``mask is not None``
    is true and the graph takes the branch for a mask (timm's Hiera: ``None.view`` when run without one); traced
    as ``None``, the graph is the forward called without them, and it refuses them when passed."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: None for p in parameters if p.kind in keyword and p.default is None}


def _not_passed(value: Any, name: str, model: str) -> None:
    """In a traced graph: refuse an argument that the graph was traced without."""
    if value is not None:
        raise FeatureExtractionError(
            f"this extractor of {model} was traced with {name}=None (its default), and {name} was passed: the graph "
            f"has no branch for it. Build the extractor with mode='hooks' to pass {name}."
        )


def _packed(value: Any) -> Any:
    """In a traced graph: the value a module returned (a list or tuple of tensors), as one node."""
    return value


def _cloned(value: Any) -> Any:
    """In a traced graph: a copy of a requested value that a later in-place op may overwrite."""
    return value.clone() if isinstance(value, Tensor) else map_tensors(value, Tensor.clone)


def _trace(
    model: nn.Module, leaf: Any = None, *, none: bool = False, wanted: Iterable[str] = ()
) -> tuple[fx.Graph, dict[fx.Node, str], dict[str, list[fx.Node]]]:
    """The graph of ``model``'s forward, each node's name, and the output nodes of each call of the ``wanted``
    modules traced through; ``none``: the arguments that default to ``None`` traced as ``None``
    (:func:`_none_defaults`), else as inputs."""
    tracer = _NodePathTracer(leaf, wanted)
    none = _none_defaults(model) if none else {}
    with untouched(model, values=True):  # tracing runs python: a traced `num_batches_tracked.add_(1)` really adds
        graph = tracer.trace(model, concrete_args=none or None)
    for node in graph.nodes:  # fx's own check of those arguments (an AssertionError), with our message
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none":
            name = next((n for n in none if node.args[1].startswith(f"{n} has been specialized")), "an argument")
            node.target, node.args = _not_passed, (node.args[0], name, type(model).__name__)
            if isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder" and name in none:
                node.args[0].target = name  # fx calls it mask_1: callers pass mask=
            tracer.names.pop(node, None)  # not a node to ask for
    graph.owning_module = model  # lets dead-code elimination ask modules whether they are pure
    return graph, tracer.names, tracer.outputs


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


def _guards_input(node: fx.Node) -> bool:
    """The check that an argument traced as ``None`` is not passed (see :func:`_none_defaults`): it has no users,
    and without it a mask given to the extractor would be ignored without a word."""
    return node.op == "call_function" and node.target is _not_passed


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
            keep = n.op in ("placeholder", "output") or n.is_impure() or _guards_input(n) or any(u in live for u in n.users)
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


Traced = tuple[dict[bool, fx.Graph], dict[bool, dict[fx.Node, str]], dict[bool, dict[str, list[fx.Node]]]]


def _fx_graphs(model: nn.Module, requested: dict[str, str], *, whole: str = "unrequested", none: bool = False) -> Traced:
    """Trace in train and eval mode: graphs, node names, output nodes of the requested modules' calls.

    ``whole="unrequested"`` keeps whole every module that holds no requested node (quick, and a chain of
    top-level children shows); ``whole="none"`` traces through every module but torch's own layers, as
    torchvision does, and records what each requested module returns. A module kept whole gives a proxy, not the
    list or tuple it returns, so code after it that asks ``isinstance(x, list)`` (timm's SelecSLS) goes wrong."""
    kept = {call[0] for r in requested if (call := _module_and_call(model, r)) is not None}

    def leaf(qualname: str) -> bool:
        if whole == "none":
            return False
        return not any(qualname == "" or r.startswith(qualname + ".") for r in requested)

    graphs, names, outputs = {}, {}, {}
    for mode in (True, False):
        with modes_kept(model, training=mode):
            graphs[mode], names[mode], outputs[mode] = _trace(model, leaf, none=none, wanted=kept)
    return graphs, names, outputs


def _chosen(
    graph: fx.Graph, names: dict[fx.Node, str], requested: Mapping[str, str], outputs: Mapping[str, list[fx.Node]] | None = None
) -> dict[str, fx.Node]:
    """The node each request names in ``graph``: the output of a module's call where it was traced through
    (``outputs``), a node's own name, or for a module kept whole or one above a node asked for, the last node
    inside it."""
    chosen: dict[str, fx.Node] = {}
    for query in requested:
        match = _CALL_SUFFIX.match(query)
        path, index = (query, 0) if query in (outputs or {}) else (match["base"], int(match["index"])) if match else (query, 0)
        calls = (outputs or {}).get(path, [])
        if index < len(calls):
            chosen[query] = calls[index]
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
                clone = graph.call_function(_cloned, (node,)) if node.target is _packed else graph.call_method("clone", (node,))
            output.replace_input_with(node, clone)
    graph.lint()
    graph.owning_module = None  # the extractor keeps the graph, not the model
    return graph


def _optional_inputs_used(model: nn.Module, graph: fx.Graph) -> list[str]:
    """The arguments defaulting to ``None`` that ``graph`` reads: traced as inputs, so it holds only when they are
    passed (see :func:`_none_defaults`)."""
    optional = _none_defaults(model)
    return [n.target for n in graph.nodes if n.op == "placeholder" and n.target in optional and n.users]


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
            graph, names, _ = _trace(model)
    except Exception as err:  # noqa: BLE001
        logger.info("torch.fx cannot trace %s (%s); listing module paths", type(model).__name__, err)
        return [name for name, _ in model.named_modules() if name]
    return [names.get(n, n.name) for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr") and not _guards_input(n)]
