"""The data-flow graph of one forward, for the diagram: leaf-module and op nodes inside module groups.

Built during a :func:`.collect.collect` run: every tensor remembers the node that produced it
(views pass their producer through), so an edge joins the producer of each input to its consumer,
skip connections included (a U-Net's ``cat``, a ResNet's ``add``). A module without children is one
node; a module with children is a group holding its children's nodes and the ops of its own forward.
Runs of three or more identical sibling blocks are folded into one collapsible group.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .flops import counts_nothing
from .records import LayerRecord, output_leaves

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


class FlowGraph:
    """Nodes, groups and edges of one forward (ids are ints; ``parent`` is a group id or ``None``)."""

    def __init__(self, paths: dict[nn.Module, str]):
        self.leaves = {m for m in paths if next(m.children(), None) is None}
        self.items: list[dict[str, Any]] = []  # nodes and groups, by id
        self.edges: set[tuple[int, int]] = set()
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
                self.edges.add((src, target))

    # hooks from the collector

    def enter(self, rec: LayerRecord, args: tuple, kwargs: dict) -> None:
        if self.inside_leaf:
            self.inside_leaf += 1
            self.open.append((rec, -1, True))
            return
        if rec.path == "":
            for i, t in enumerate(_tensors((args, kwargs))):
                self.producer[t] = self._add(kind="input", label=f"input {i}", path="", type="input",
                                             shapes=[str(tuple(t.shape))])
        leaf = self.by_path[rec.path] in self.leaves
        label = rec.name + (f" ({rec.call})" if rec.call > 1 else "")
        if leaf:
            node = self._add(kind="module", label=label, path=rec.path, type=rec.type)
            self._link((args, kwargs), node)
            self.inside_leaf = 1
        else:
            node = self._add(kind="group", label=label, path=rec.path, type=rec.type)
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
            for i, t in enumerate(_tensors(output)):
                out = self._add(kind="output", label=f"output {i}", path="", type="output", shapes=[str(tuple(t.shape))])
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
                         type="op", shapes=[str(tuple(t.shape)) for t in _tensors(out)], params=0, flops=flops)
        self._link(ins, node)
        for t in _tensors(out):
            self.producer[t] = node

    # after the run

    def to_dict(self) -> dict[str, Any]:
        """``{"items": [...], "edges": [[src, dst], ...]}`` with repeated sibling blocks folded."""
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
                            "shapes": first.get("shapes", []), "params": sum(items[r].get("params", 0) for r in run[1:]),
                            "flops": sum(items[r].get("flops", 0) for r in run[1:])}
                    fold["label"] = f"{len(run) - 1} x {first['type']} (folded)"
                    items.append(fold)
                    for r in run[1:]:
                        items[r]["parent"] = fold["id"]
                run = [k] if k is not None and items[k]["kind"] == "group" else []
        return {"items": items, "edges": sorted(self.edges)}
