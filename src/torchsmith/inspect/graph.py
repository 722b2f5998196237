"""The data-flow graph of one forward, for the diagram: leaf-module and op nodes inside module groups.

Built during a :func:`.collect.collect` run: every tensor remembers the node that produced it
(views pass their producer through), so an edge joins the producer of each input to its consumer,
skip connections included (a U-Net's ``cat``, a ResNet's ``add``). A module without children is one
node; a module with children is a group holding its children's nodes and the ops of its own forward.
Runs of three or more identical sibling blocks are folded into one collapsible group.

Each node carries what the page's details panel shows: its input and output shapes and, for a module,
its constructor arguments read back from its attributes (``kernel_size``, ``stride``, ``bias`` ...,
:func:`torchsmith.codec.module_arguments`); each edge carries the shapes of the tensors it carries.
Names and values here come from the model: the page renders them as text only.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..codec import module_arguments
from ..runner import tensor_leaves
from .flops import counts_nothing
from .records import LayerRecord, format_shape, output_leaves

__all__ = ["FlowGraph"]


def _tensors(obj: Any) -> list[Tensor]:
    out: list[Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            out.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return out


def _shape(t: Tensor) -> str:
    return format_shape(t.shape)


def _inputs(args: tuple, kwargs: dict) -> list[str]:
    """``["(1, 3, 64, 64)", "mask: (1, 8)"]``: positional inputs by shape, keyword ones named."""
    return [_shape(t) for t in _tensors(args)] + [f"{k}: {_shape(t)}" for k, t in tensor_leaves(kwargs)]


def _details(module: nn.Module) -> dict[str, Any]:
    """``{"args": [[name, value], ...]}`` read back from the attributes, else ``{"repr": extra_repr}``, else ``{}``."""
    args = [[k, str(tuple(v)) if isinstance(v, list) else repr(v)] for k, v in module_arguments(module).items()]
    if args:
        return {"args": args}
    try:
        extra = module.extra_repr()
    except Exception:  # a module's own printing code is not ours to debug here
        extra = ""
    return {"repr": extra[:500]} if isinstance(extra, str) and extra else {}


class FlowGraph:
    """Nodes, groups and edges of one forward (ids are ints; ``parent`` is a group id or ``None``)."""

    def __init__(self, paths: dict[nn.Module, str]):
        self.leaves = {m for m in paths if next(m.children(), None) is None}
        self.items: list[dict[str, Any]] = []  # nodes and groups, by id
        self.edges: dict[tuple[int, int], list[tuple[int, ...]]] = {}  # (src, dst) -> distinct shapes carried
        self.producer: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.groups: list[int] = []  # open groups
        self.open: list[tuple[LayerRecord, int, bool]] = []  # (record, item id, is leaf)
        self.inside_leaf = 0
        self.by_path: dict[str, nn.Module] = {v: k for k, v in paths.items()}

    def _add(self, **item: Any) -> int:
        item["id"] = len(self.items)
        item["parent"] = self.groups[-1] if self.groups else None
        self.items.append(item)
        return item["id"]

    def _link(self, inputs: Any, target: int) -> None:
        for t in _tensors(inputs):
            src = self.producer.get(t)
            if src is not None and src != target:
                shapes = self.edges.setdefault((src, target), [])
                if tuple(t.shape) not in shapes:
                    shapes.append(tuple(t.shape))

    # hooks from the collector

    def enter(self, rec: LayerRecord, args: tuple, kwargs: dict) -> None:
        if self.inside_leaf:
            self.inside_leaf += 1
            self.open.append((rec, -1, True))
            return
        if rec.path == "":
            for key, t in [*tensor_leaves(args), *tensor_leaves(kwargs)]:  # "input 0", "input mask"
                self.producer[t] = self._add(kind="input", label=f"input {key}", path="", type="input", shapes=[_shape(t)])
        module = self.by_path[rec.path]
        leaf = module in self.leaves
        label = rec.name + (f" ({rec.call})" if rec.call > 1 else "")
        info = {"inputs": _inputs(args, kwargs), **_details(module)}
        if leaf:
            node = self._add(kind="module", label=label, path=rec.path, type=rec.type, **info)
            self._link((args, kwargs), node)
            self.inside_leaf = 1
        else:
            node = self._add(kind="group", label=label, path=rec.path, type=rec.type, **info)
            self.groups.append(node)
        self.open.append((rec, node, leaf))

    def exit(self, rec: LayerRecord, output: Any) -> None:
        while self.open and self.open[-1][0] is not rec:  # children that raised
            self.open.pop()
        if not self.open:
            return
        _, node, leaf = self.open.pop()
        if leaf and node == -1:  # a module inside a leaf module
            self.inside_leaf -= 1
            return
        if leaf:
            self.inside_leaf = 0
        else:
            self.groups.pop()
        item = self.items[node]
        item.update(shapes=[(f"{x.key}: " if x.key else "") + str(x.shape) for x in output_leaves(output)],
                    params=rec.params if rec.call == 1 else 0, flops=rec.flops)
        for t in _tensors(output):
            self.producer[t] = node
        if rec.path == "":
            for key, t in tensor_leaves(output):  # "output", "output logits", "output 0"
                out = self._add(kind="output", label=f"output {key}".strip(), path="", type="output", shapes=[_shape(t)])
                self._link(t, out)

    def op(self, func: Any, args: tuple, kwargs: dict, out: Any, flops: int) -> None:
        if self.inside_leaf:
            return
        ins = _tensors((args, kwargs))
        if counts_nothing(func) and func.overloadpacket.__name__ not in ("cat", "stack"):
            src = next((self.producer[t] for t in ins if t in self.producer), None)
            if src is not None:
                for t in _tensors(out):
                    self.producer[t] = src
            return
        if not any(t in self.producer for t in ins):  # ops on constants / parameters only
            return
        name = func.overloadpacket.__name__
        node = self._add(kind="op", label=name, path=(self.items[self.groups[-1]]["path"] if self.groups else ""),
                         type="op", inputs=[_shape(t) for t in ins], shapes=[_shape(t) for t in _tensors(out)], params=0,
                         flops=flops)
        self._link(ins, node)
        for t in _tensors(out):
            self.producer[t] = node

    # after the run

    def to_dict(self) -> dict[str, Any]:
        """``{"items": [...], "edges": [[src, dst], ...], "edge_shapes": [[shape, ...], ...]}`` (one list of
        the distinct shapes an edge carries per edge) with repeated sibling blocks folded."""
        items = [dict(i) for i in self.items]
        for it in items:  # a label relative to the enclosing group: "encoder.1" inside the U-Net, not "1"
            if it["kind"] in ("module", "group") and it["path"]:
                parent = items[it["parent"]]["path"] if it["parent"] is not None else ""
                rel = it["path"][len(parent) + 1:] if parent and it["path"].startswith(parent + ".") else it["path"]
                it["label"] = rel + it["label"][len(it["path"].rsplit(".", 1)[-1]):]
        children: dict[Any, list[int]] = {}
        for it in items:
            children.setdefault(it["parent"], []).append(it["id"])
        signature: dict[int, Any] = {}

        def sig(i: int) -> Any:
            if i not in signature:
                it = items[i]
                signature[i] = (it["type"], it["kind"], tuple(it.get("shapes", ())),
                                tuple(sig(c) for c in children.get(i, ())))
            return signature[i]

        for parent, kids in list(children.items()):
            run: list[int] = []
            for k in [*kids, None]:
                if k is not None and items[k]["kind"] == "group" and run and sig(k) == sig(run[0]):
                    run.append(k)
                    continue
                if len(run) >= 3:
                    first = items[run[0]]
                    fold = {"id": len(items), "kind": "fold", "parent": parent, "type": first["type"],
                            "label": "", "path": first["path"] + " ...",
                            "inputs": first.get("inputs", []), "shapes": first.get("shapes", []), "params": sum(items[r].get("params", 0) for r in run[1:]),
                            "flops": sum(items[r].get("flops", 0) for r in run[1:])}
                    fold["label"] = f"{len(run) - 1} x {first['type']} (folded)"
                    items.append(fold)
                    for r in run[1:]:
                        items[r]["parent"] = fold["id"]
                run = [k] if k is not None and items[k]["kind"] == "group" else []
        edges = sorted(self.edges)
        return {"items": items, "edges": [list(e) for e in edges], "edge_shapes": [[list(s) for s in self.edges[e]] for e in edges]}
