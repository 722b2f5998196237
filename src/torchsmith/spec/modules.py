"""The modules a spec builds besides torch.nn's own: runnable list and dict containers, and graphs.

``LayerList`` / ``LayerDict`` are ``nn.ModuleList`` / ``nn.ModuleDict`` (same indexing, same
state-dict keys) whose forward runs their layers in order. ``GraphModel`` runs named nodes, each
reading earlier nodes: a module (held at the node's dotted name, so ``downs.0`` is ``model.downs[0]``
and its weights are ``downs.0.*``) or a parameter-free op.

    >>> import torch
    >>> from torch import nn
    >>> m = LayerDict({"fc": nn.Linear(4, 3), "act": nn.ReLU()})
    >>> m["out"] = nn.Linear(3, 2)                     # added by key after construction
    >>> m(torch.rand(5, 4)).shape                      # (B, 4) -> (B, 2)
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

__all__ = ["LayerList", "LayerDict", "GraphModel", "GraphNode", "RESERVED_NAMES"]

# attributes a GraphModel sets besides its modules: no node may take these names
RESERVED_NAMES = frozenset({"graph_inputs", "graph_nodes", "graph_outputs", "_release"})


class LayerList(nn.ModuleList):
    """An ``nn.ModuleList`` whose forward runs its layers in order (index them and call them one by one too)."""

    def forward(self, x: Any) -> Any:
        for layer in self:
            x = layer(x)
        return x


class LayerDict(nn.ModuleDict):
    """An ``nn.ModuleDict`` whose forward runs its layers in insertion order."""

    def forward(self, x: Any) -> Any:
        for layer in self.values():
            x = layer(x)
        return x


@dataclass(frozen=True)
class GraphNode:
    """One node: ``name`` computes ``op(*sources, **kwargs)``, or calls the submodule at ``name`` when ``op`` is None."""

    name: str
    sources: tuple[str, ...]
    op: Callable[..., Any] | None = None
    op_name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


class GraphModel(nn.Module):
    """Named nodes evaluated in order; each reads earlier nodes or the inputs.

    Args:
        inputs: names of the forward's arguments, in order.
        nodes: the nodes, each after the nodes it reads.
        modules: ``{node name: module}`` for module nodes; a dotted name is placed in nested ``ModuleDict`` s.
        outputs: a node name (forward returns that tensor), a list of names (a dict by name), or
            ``{key: node name}`` (a dict by key).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from torchsmith.spec.ops import add
        >>> g = GraphModel(inputs=["x"], modules={"fc": nn.Linear(4, 4)},
        ...                nodes=[GraphNode("fc", ("x",)), GraphNode("sum", ("fc", "x"), op=add, op_name="add")],
        ...                outputs="sum")
        >>> g(torch.rand(2, 4)).shape                  # residual: (B, 4) -> (B, 4)
        torch.Size([2, 4])
    """

    def __init__(
        self,
        *,
        inputs: Sequence[str],
        nodes: Sequence[GraphNode],
        modules: dict[str, nn.Module],
        outputs: str | Sequence[str] | dict[str, str],
    ) -> None:
        super().__init__()
        for name, module in modules.items():
            self._place(name, module)
        self.graph_inputs = tuple(inputs)
        self.graph_nodes = tuple(nodes)
        self.graph_outputs = outputs if isinstance(outputs, (str, dict)) else tuple(outputs)
        kept = set(self._output_names())
        last: dict[str, int] = {}
        for i, node in enumerate(self.graph_nodes):
            for s in node.sources:
                last[s] = i
        # names whose value can be dropped once node i has run (saves memory on deep graphs)
        self._release = tuple(
            tuple(s for s in dict.fromkeys(node.sources) if last[s] == i and s not in kept) for i, node in enumerate(self.graph_nodes)
        )

    def _place(self, path: str, module: nn.Module) -> None:
        parent: nn.Module = self
        *heads, leaf = path.split(".")
        for head in heads:
            if head not in parent._modules:
                parent.add_module(head, nn.ModuleDict())
            parent = parent._modules[head]  # type: ignore[assignment]
        parent.add_module(leaf, module)

    def _output_names(self) -> list[str]:
        out = self.graph_outputs
        if isinstance(out, str):
            return [out]
        return list(out.values()) if isinstance(out, dict) else list(out)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names = self.graph_inputs
        if isinstance(args, fx.Proxy):  # torch.fx symbolic tracing passes *args as one proxy: index it
            values: dict[str, Any] = {name: args[i] for i, name in enumerate(names)}
        elif len(args) > len(names) or set(kwargs) - set(names[len(args):]) or len(args) + len(kwargs) != len(names):
            raise TypeError(f"GraphModel takes the inputs {list(names)}; got {len(args)} positional and {sorted(kwargs)} by name.")
        else:
            values = dict(zip(names, args), **kwargs)
        for node, release in zip(self.graph_nodes, self._release):
            xs = [values[s] for s in node.sources]
            if node.op is None:
                values[node.name] = self.get_submodule(node.name)(*xs)
            else:
                values[node.name] = node.op(*xs, **node.kwargs)
            for s in release:
                del values[s]
        out = self.graph_outputs
        if isinstance(out, str):
            return values[out]
        if isinstance(out, dict):
            return {k: values[v] for k, v in out.items()}
        return {k: values[k] for k in out}

    def extra_repr(self) -> str:
        def show(node: GraphNode) -> str:
            what = node.op_name if node.op is not None else "module"
            return f"{node.name} = {what}({', '.join(node.sources)})"

        return "\n".join(show(n) for n in self.graph_nodes) + f"\noutputs: {self.graph_outputs}"
