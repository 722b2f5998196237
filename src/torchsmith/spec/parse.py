"""Validating a plain spec into a tree of nodes, collecting every problem with its path.

The top level is a mapping with exactly one of

- ``layers``: a sequential, a list (children 0, 1, ...) or a mapping (named children);
- ``graph``: ``{inputs: [...], nodes: {name: layer + from}, outputs: ...}``;
- ``model``: any one layer;

plus optional ``name``, ``description`` and ``input`` (a shape, or ``{input name: shape}`` for graphs);
keys starting with ``x-`` are ignored (a place for YAML anchors).

A layer is a name (``ReLU``) or a one-name mapping ``{Conv2d: ARGS}``, ``ARGS`` being null, a list
(positional), a mapping (keywords, positional under ``args``) or one value (``{Dropout: 0.5}``);
``repeat: N`` beside the name stacks N copies; ``Sequential`` / ``ModuleList`` / ``ModuleDict`` / ``Graph``
hold layers.

    >>> root, shapes, name = parse_spec({"input": [1, 784], "layers": {"fc": {"Linear": ["auto", 10]}}})
    >>> root.kind, [n for n, _ in root.items], shapes
    ('Sequential', ['fc'], {'input': (1, 784)})
    >>> parse_spec({"layers": [{"Conv2d": ["x", 20, 5]}, "Relu"]})
    Traceback (most recent call last):
    ...
    torchsmith.errors.SpecError: The spec has 2 problems:
      layers[0].Conv2d.args[0]: expected int, got 'x'
      layers[1]: unknown layer 'Relu'. Did you mean 'ReLU', 'RReLU', 'ReLU6'?
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Union

from torch import nn

from ..codec import decode, is_child_name
from ..errors import SpecError, closest, did_you_mean
from ..registry import get_model_builder, list_models
from . import names as N

from .modules import RESERVED_NAMES, GraphModel, LayerDict, LayerList

__all__ = ["parse_spec", "Call", "Container", "Graph", "GraphEntry", "Repeat", "Node"]

TOP_KEYS = ("name", "description", "input", "layers", "graph", "model")
BODY_KEYS = ("layers", "graph", "model")
GRAPH_KEYS = ("inputs", "nodes", "outputs")
MAX_REPEAT = 1024
_MODULE_ATTRS = frozenset(vars(nn.Module()))  # training, _parameters, ...: set on every instance


def _is_attribute(cls: type, name: str) -> bool:
    """Whether ``name`` is taken on instances of ``cls`` (so no child module can have it)."""
    return hasattr(cls, name) or name in _MODULE_ATTRS


@dataclass
class Call:
    """A torch.nn layer, registered block, registered model or graph op with its arguments."""

    path: str
    kind: str  # "nn" | "block" | "model" | "op"
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    auto: list[tuple[int | str, str]] = field(default_factory=list)  # (position or keyword, parameter name)


@dataclass
class Container:
    path: str
    kind: str  # "Sequential" | "ModuleList" | "ModuleDict"
    items: list[tuple[str | None, "Node"]]


@dataclass
class GraphEntry:
    name: str
    sources: list[str]
    node: "Node"


@dataclass
class Graph:
    path: str
    inputs: list[str]
    entries: list[GraphEntry]
    outputs: Any  # str | list[str] | dict[str, str]


@dataclass
class Repeat:
    path: str
    times: int
    node: "Node"


Node = Union[Call, Container, Graph, Repeat]


def _fmt(value: Any) -> str:
    return repr(value)


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), f"a {type(value).__name__}")


class _Parser:
    def __init__(self, has_input: bool) -> None:
        self.problems: list[str] = []
        self.has_input = has_input
        self.models = set(list_models())
        self.blocks = N.blocks()
        self.ops = N.ops()

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def known(self, in_graph: bool) -> list[str]:
        return [*N.CONTAINERS, *N.NN_LAYERS, *self.blocks, *(self.ops if in_graph else ()), *self.models]

    def unknown(self, path: str, name: str, in_graph: bool) -> None:
        if not in_graph and name in self.ops:
            self.add(path, f"{name!r} is a graph op: use it in a graph node, e.g. graph: {{nodes: {{x: {{{name}: null, from: [a, b]}}}}}}")
            return
        hint = closest(name, self.known(in_graph))
        where = "torch.nn layers, registered blocks" + (", graph ops" if in_graph else "") + " and registered models"
        typo = bool(hint) and difflib.SequenceMatcher(None, name.lower(), hint[0].lower()).ratio() >= 0.75
        self.add(
            path,
            f"unknown layer {name!r}."
            + (f" Did you mean {', '.join(map(repr, hint))}?" if hint else f" Names are {where}.")
            + ("" if typo else " A block or model registered in code needs its module imported before building or loading."),
        )

    # layers

    def layer(self, value: Any, path: str, *, in_graph: bool = False, extra_keys: tuple[str, ...] = ()) -> Node | None:
        if isinstance(value, str):
            return self.named(value, None, path, in_graph=in_graph, bare=True)
        if not isinstance(value, dict):
            self.add(path, f"expected a layer name or {{Name: arguments}}, got {_kind_of(value)} {_fmt(value)}")
            return None
        reserved = ("repeat", *extra_keys)
        keys = [k for k in value if k not in reserved]
        if len(keys) != 1:
            if not keys:
                self.add(path, f"no layer named; only {sorted(set(value) & set(reserved))}")
            elif "from" in keys and not in_graph:
                self.add(f"{path}.from", "from is for graph nodes; in a sequential each layer reads the previous one")
            else:
                layerish = [k for k in keys if k in self.known(in_graph)]
                hint = ""
                if len(layerish) == 1:
                    rest = [k for k in keys if k != layerish[0]]
                    hint = f" To pass {rest} as keyword arguments, write {{{layerish[0]}: {{args: [...], {rest[0]}: ...}}}}."
                self.add(path, f"one layer per entry, found keys {keys}.{hint}")
            return None
        name = keys[0]
        node = self.named(name, value[name], f"{path}.{name}" if path else name, in_graph=in_graph)
        if "repeat" in value:
            times = value["repeat"]
            if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_REPEAT:
                self.add(f"{path}.repeat", f"expected an int from 1 to {MAX_REPEAT}, got {_fmt(times)}")
            elif node is not None:
                return Repeat(path, times, node)
        return node

    def named(self, name: str, args: Any, path: str, *, in_graph: bool, bare: bool = False) -> Node | None:
        if name in N.CONTAINERS:
            if bare:
                self.add(path, f"{name} needs its layers: {{{name}: ...}}")
                return None
            return self.container(name, args, path, in_graph=in_graph)
        if name in N.NN_LAYERS:
            return self.call("nn", name, N.NN_LAYERS[name], args, path)
        if name in self.blocks:
            return self.call("block", name, self.blocks[name], args, path)
        if name in self.ops:
            if not in_graph:
                self.unknown(path, name, in_graph)
                return None
            return self.call("op", name, self.ops[name].fn, args, path)
        if name in self.models:
            return self.call("model", name, get_model_builder(name), args, path)
        self.unknown(path, name, in_graph)
        return None

    def container(self, kind: str, value: Any, path: str, *, in_graph: bool) -> Node | None:
        if kind == "Graph":
            return self.graph(value, path)
        if kind == "ModuleList" and not isinstance(value, list):
            self.add(path, f"ModuleList takes a list of layers, got {_kind_of(value)}")
            return None
        if kind == "ModuleDict" and not isinstance(value, dict):
            self.add(path, f"ModuleDict takes a mapping of named layers, got {_kind_of(value)}")
            return None
        if not isinstance(value, (list, dict)):
            self.add(path, f"{kind} takes a list or a mapping of layers, got {_kind_of(value)}")
            return None
        return Container(path, kind, self.items(value, path, {"Sequential": nn.Sequential, "ModuleList": LayerList, "ModuleDict": LayerDict}[kind]))

    def items(self, value: list | dict, path: str, cls: type) -> list[tuple[str | None, Node]]:
        out: list[tuple[str | None, Node]] = []
        if isinstance(value, list):
            for i, v in enumerate(value):
                node = self.layer(v, f"{path}[{i}]")
                if node is not None:
                    out.append((None, node))
            if not value:
                self.add(path, "no layers")
            return out
        if not value:
            self.add(path, "no layers")
        for k, v in value.items():
            where = f"{path}.{k}"
            if not is_child_name(k) or _is_attribute(cls, k):
                self.add(where, f"{k!r} cannot name a child module: use letters, digits and _ (and not a {cls.__name__} attribute)")
                continue
            node = self.layer(v, where)
            if node is not None:
                out.append((k, node))
        return out

    # arguments

    def call(self, kind: str, name: str, target: Any, value: Any, path: str) -> Call | None:
        if value is None:
            args, kwargs = [], {}
        elif isinstance(value, list):
            args, kwargs = list(value), {}
        elif isinstance(value, dict):
            kwargs = dict(value)
            args = kwargs.pop("args", [])
            if not isinstance(args, list):
                self.add(f"{path}.args", f"expected a list of positional arguments, got {_kind_of(args)}")
                return None
        else:
            args, kwargs = [value], {}
        if kind in ("model", "op") and args:
            self.add(f"{path}.args" if isinstance(value, (list, dict)) else path,
                     f"{'registered models' if kind == 'model' else 'graph ops'} take keyword arguments ({{{name}: {{key: value}}}}), got positional {args}")
            return None
        if kind == "nn":
            for k in ("device", "dtype"):
                if k in kwargs:
                    self.add(f"{path}.{k}", f"{k} is not set in a spec; move the built model with .to()")
                    return None
        if kind in ("block", "model"):  # their arguments as the config codec writes them: {$dtype: ...}, {$layer: ...}
            found: list[str] = []
            args = decode(args, where=f"{path}.args", problems=found)
            kwargs = {k: decode(v, where=f"{path}.{k}", problems=found) for k, v in kwargs.items()}
            self.problems.extend(found)
            if found:
                return None
        sig = N.signature(target)
        call = Call(path, kind, name, args, kwargs)
        if sig is None:
            return call
        params = list(sig.parameters.values())
        if kind == "op":
            params = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
            sig = sig.replace(parameters=params)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            msg = str(e)
            bad = [k for k in kwargs if k not in sig.parameters]
            if bad and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                accepted = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
                for k in bad:
                    hint = closest(k, accepted)
                    self.add(f"{path}.{k}", f"{name} has no argument {k!r}." + (f" Did you mean {hint[0]!r}?" if hint else f" It takes {accepted}."))
                return None
            self.add(path, f"{name}{_show_sig(sig)}: {msg}")
            return None
        for pname, value_ in bound.arguments.items():
            param = sig.parameters[pname]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            position = list(bound.arguments).index(pname)  # positional arguments fill the parameters in order
            where = f"{path}.{pname}" if pname in kwargs else f"{path}.args[{position}]"
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if value_ == "auto" and kind != "op":
                if pname not in N.AUTO_PARAMS:
                    self.add(where, f"'auto' is only for {sorted(N.AUTO_PARAMS)}, not {pname!r}")
                elif not self.has_input:
                    self.add(where, "'auto' needs the input shape: add input: [batch, channels, ...] at the top of the spec")
                else:
                    call.auto.append((pname if pname in kwargs else position, pname))
                continue
            expected = N.check_type(value_, param.annotation)
            if expected:
                self.add(where, f"expected {expected}, got {_fmt(value_)}")
        return call

    # graphs

    def graph(self, value: Any, path: str) -> Graph | None:
        if not isinstance(value, dict):
            self.add(path, f"a graph is a mapping with inputs, nodes and outputs, got {_kind_of(value)}")
            return None
        for k in value:
            if k not in GRAPH_KEYS:
                hint = closest(k, GRAPH_KEYS)
                self.add(f"{path}.{k}", "unknown graph key." + (f" Did you mean {hint[0]!r}?" if hint else f" Keys are {list(GRAPH_KEYS)}."))
        inputs = value.get("inputs", ["input"])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(is_child_name(i) for i in inputs):
            self.add(f"{path}.inputs", f"expected a list of input names (letters, digits, _), got {_fmt(inputs)}")
            inputs = ["input"]
        nodes = value.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            self.add(f"{path}.nodes", f"expected a mapping of named nodes, got {_kind_of(nodes)}")
            return None
        seen: list[str] = list(inputs)
        entries: list[GraphEntry] = []
        modules: list[str] = []
        for name, spec in nodes.items():
            where = f"{path}.nodes.{name}"
            segments = name.split(".")
            if (
                not all(is_child_name(s) for s in segments)
                or _is_attribute(GraphModel, segments[0])
                or segments[0] in RESERVED_NAMES
                or any(_is_attribute(LayerDict, s) for s in segments[1:])
            ):
                self.add(where, f"{name!r} cannot name a node: use letters, digits, _ and dots between parts, and no module attribute name")
                seen.append(name)  # reported once, here; later references to it are not errors of their own
                continue
            if name in seen:
                self.add(where, f"{name!r} is already {'an input' if name in inputs else 'a node'}")
                continue
            sources = self.sources(spec, where, name, seen, list(nodes), inputs)
            node = self.layer(spec, where, in_graph=True, extra_keys=("from",))
            seen.append(name)
            if node is None or sources is None:
                continue
            if isinstance(node, Call) and node.kind == "op":
                op = self.ops[node.name]
                if len(sources) < op.min_inputs or (op.max_inputs is not None and len(sources) > op.max_inputs):
                    self.add(f"{where}.from", f"{node.name} takes {op.arity()}, got {len(sources)}: {sources}")
            else:
                clash = [m for m in modules if m.startswith(name + ".") or name.startswith(m + ".")]
                if clash:
                    self.add(where, f"{name!r} and {clash[0]!r} would both hold the module at {min(name, clash[0], key=len)!r}")
                    continue
                modules.append(name)
            entries.append(GraphEntry(name, sources, node))
        outputs = value.get("outputs", list(nodes)[-1])
        for k in outputs if isinstance(outputs, dict) else ():  # output keys name things too (in pages, messages)
            if not is_child_name(k):
                self.add(f"{path}.outputs[{k!r}]", f"{k!r} cannot name an output: use letters, digits and _")
        out_names = [outputs] if isinstance(outputs, str) else list(outputs.values()) if isinstance(outputs, dict) else outputs
        if not isinstance(out_names, list) or not out_names or not all(isinstance(o, str) for o in out_names):
            self.add(f"{path}.outputs", f"expected a node name, a list of names or {{key: name}}, got {_fmt(outputs)}")
        else:
            for o in out_names:
                if o not in seen:
                    hint = closest(o, seen)
                    self.add(f"{path}.outputs", f"no node {o!r}." + (f" Did you mean {hint[0]!r}?" if hint else f" Nodes: {seen}"))
        return Graph(path, inputs, entries, outputs)

    def sources(self, spec: Any, where: str, name: str, seen: list[str], all_names: list[str], inputs: list[str]) -> list[str] | None:
        src = spec.get("from") if isinstance(spec, dict) else None
        if src is None:
            if len(seen) == len(inputs) and len(inputs) > 1:
                self.add(where, f"the first node needs from: one of the inputs {inputs}")
                return None
            return [seen[-1]]
        if isinstance(src, str):
            src = [src]
        if not isinstance(src, list) or not src or not all(isinstance(s, str) for s in src):
            self.add(f"{where}.from", f"expected a node name or a list of names, got {_fmt(src)}")
            return None
        ok = True
        for s in src:
            if s in seen:
                continue
            ok = False
            if s == name:
                self.add(f"{where}.from", f"{name!r} cannot read itself")
            elif s in all_names:
                self.add(f"{where}.from", f"{s!r} comes after this node; a node reads only inputs and earlier nodes")
            else:
                self.add(f"{where}.from", f"no node or input {s!r}." + (did_you_mean(s, seen) or f" Earlier names: {seen}"))
        return list(src) if ok else None


def _show_sig(sig: inspect.Signature) -> str:
    return "(" + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in sig.parameters.values()) + ")"


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and 1 <= len(value) <= 8 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**31 for v in value):
        return tuple(value)
    return None


def parse_spec(doc: dict[str, Any]) -> tuple[Node, dict[str, tuple[int, ...]] | None, str | None]:
    """``(root node, {input name: shape} or None, name)`` for a plain spec.

    Raises:
        SpecError: listing every problem found, each as ``path: message``.
    """
    problems: list[str] = []
    for k in doc:
        if k not in TOP_KEYS and not k.startswith("x-"):  # x-...: free keys, e.g. for YAML anchors
            hint = closest(k, TOP_KEYS)
            problems.append(f"{k}: unknown top-level key." + (f" Did you mean {hint[0]!r}?" if hint else f" Keys are {list(TOP_KEYS)}."))
    bodies = [k for k in BODY_KEYS if k in doc]
    if len(bodies) != 1:
        problems.append(f"(top): a spec has exactly one of {list(BODY_KEYS)}, found {bodies or 'none'}")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(f"name: expected a string, got {_fmt(name)}")
    for k in ("description",):
        if k in doc and not isinstance(doc[k], str):
            problems.append(f"{k}: expected a string, got {_fmt(doc[k])}")
    shapes: dict[str, tuple[int, ...]] | None = None
    if "input" in doc:
        raw = doc["input"]
        if isinstance(raw, dict) and raw:
            shapes = {}
            for k, v in raw.items():
                if _shape(v) is None:
                    problems.append(f"input.{k}: expected a shape (a list of 1 to 8 positive ints), got {_fmt(v)}")
                else:
                    shapes[k] = _shape(v)  # type: ignore[assignment]
        elif _shape(raw) is not None:
            shapes = {"input": _shape(raw)}  # type: ignore[dict-item]
        else:
            problems.append(f"input: expected a shape such as [1, 3, 224, 224], or {{input name: shape}}, got {_fmt(raw)}")
    parser = _Parser(has_input="input" in doc)
    parser.problems = problems
    root: Node | None = None
    if len(bodies) == 1:
        body = bodies[0]
        value = doc[body]
        if body == "layers":
            root = parser.container("Sequential", value, "layers", in_graph=False)
        elif body == "graph":
            root = parser.graph(value, "graph")
        else:
            root = parser.layer(value, "model")
        if shapes is not None and len(bodies) == 1:
            wanted = root.inputs if isinstance(root, Graph) else ["input"]
            if list(shapes) != list(wanted) and not (len(wanted) == 1 and len(shapes) == 1):
                problems.append(f"input: shapes for {list(shapes)}, but the model takes {wanted}")
            elif len(wanted) == 1:
                shapes = {wanted[0]: next(iter(shapes.values()))}
    if problems:
        n = len(problems)
        raise SpecError(f"The spec has {n} problem{'s' * (n > 1)}:\n" + "\n".join(f"  {p}" for p in problems), problems)
    return root, shapes, name  # type: ignore[return-value]
