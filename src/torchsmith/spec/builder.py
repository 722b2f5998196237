"""Building a validated spec tree into modules, inferring "auto" widths on the meta device.

With an input shape, a first pass builds on the meta device and runs meta tensors through each layer
as it is built: "auto" arguments are read from the tensor that reaches the layer, and every layer is
checked against the shape it receives. A second pass builds the real modules with the widths found
(skipped when the caller is itself building on the meta device, as ``load_model`` does). Without an
input shape the first pass on meta runs all the same before a real build.

Every pass counts the modules and parameter values it builds, as it builds them, against
``Limits.max_modules`` and ``Limits.max_parameters``: a ``repeat`` is sized from its first copy
before the others are built, so nested repeats are refused after one copy of the inner ones, and
the first pass (on meta) refuses before a real build allocates anything.

    >>> from torchsmith.spec.parse import parse_spec
    >>> root, shapes, _ = parse_spec({"input": [1, 3, 32, 32], "layers": [{"Conv2d": ["auto", 8, 3]}, "Flatten", {"Linear": ["auto", 10]}]})
    >>> model, out = construct(root, shapes)
    >>> model[2], tuple(out.shape)                    # 8 * 30 * 30 inferred
    (Linear(in_features=7200, out_features=10, bias=True), (1, 10))
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint.limits import enforce_model_size, model_size
from ..codec import make_layer
from ..errors import SpecError, TorchsmithError
from ..registry import create_model
from . import names as N
from .modules import GraphModel, GraphNode, LayerDict, LayerList
from .parse import Call, Container, Graph, Node, Repeat

__all__ = ["construct", "shapes_of"]

def shapes_of(value: Any) -> Any:
    """Shapes of a (nested) output: a tuple for a tensor, a dict / list of them otherwise."""
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: shapes_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shapes_of(v) for v in value]
    return type(value).__name__


def _show(xs: tuple[Any, ...]) -> str:
    return ", ".join(str(shapes_of(x)) for x in xs)


class _Builder:
    def __init__(self, *, infer: bool, resolved: dict[str, tuple[list[Any], dict[str, Any]]]) -> None:
        self.infer = infer
        self.resolved = resolved
        self.problems: list[str] = []
        self.modules = self.parameters = 0  # built so far, against Limits.max_modules / max_parameters

    def grow(self, modules: int, parameters: int, path: str) -> None:
        """Count what was just built (or is about to be, for a repeat); refuse past the bounds at once."""
        self.modules += modules
        self.parameters += parameters
        enforce_model_size(self.modules, self.parameters, f"the spec (at {path or 'its top'})", error=SpecError)

    def fail(self, path: str, message: str) -> tuple[None, None]:
        self.problems.append(f"{path}: {message}")
        return None, None

    def build(self, node: Node, xs: tuple[Any, ...] | None, suffix: str) -> tuple[nn.Module | None, Any]:
        if isinstance(node, Call):
            return self.call(node, xs, suffix)
        if isinstance(node, Repeat):
            copies = []
            for i in range(node.times):
                before = (self.modules, self.parameters)
                module, out = self.build(node.node, xs, f"{suffix}#{i}")
                if module is None:
                    return None, None
                if i == 0:  # the other copies cost as much: refuse now rather than after building them
                    once = (self.modules - before[0], self.parameters - before[1])
                    self.grow(once[0] * (node.times - 1), once[1] * (node.times - 1), node.path)
                    self.modules -= once[0] * (node.times - 1)
                    self.parameters -= once[1] * (node.times - 1)
                copies.append(module)
                xs = (out,) if self.infer else None
            self.grow(1, 0, node.path)  # the Sequential holding the copies
            return nn.Sequential(*copies), (xs[0] if xs else None)
        if isinstance(node, Container):
            return self.container(node, xs, suffix)
        return self.graph(node, xs, suffix)

    def container(self, node: Container, xs: tuple[Any, ...] | None, suffix: str) -> tuple[nn.Module | None, Any]:
        built: list[tuple[str | None, nn.Module]] = []
        ok = True
        for name, child in node.items:
            module, out = self.build(child, xs, suffix)
            if module is None:
                ok = False
                if self.infer:
                    return None, None  # later layers have no input shape to check against
                continue
            built.append((name, module))
            xs = (out,) if self.infer else None
        if not ok:
            return None, None
        self.grow(1, 0, node.path)
        out = xs[0] if xs else None
        if node.kind == "ModuleList":
            return LayerList(m for _, m in built), out
        named = [(n if n is not None else str(i), m) for i, (n, m) in enumerate(built)]
        if node.kind == "ModuleDict":
            return LayerDict(OrderedDict(named)), out
        return nn.Sequential(OrderedDict(named)), out

    def graph(self, node: Graph, xs: tuple[Any, ...] | None, suffix: str) -> tuple[nn.Module | None, Any]:
        values: dict[str, Any] = {}
        if self.infer:
            if xs is None or len(xs) != len(node.inputs):
                return self.fail(node.path, f"the graph takes {len(node.inputs)} input(s) {node.inputs}, got {len(xs or ())}")
            values = dict(zip(node.inputs, xs))
        modules: dict[str, nn.Module] = {}
        nodes: list[GraphNode] = []
        ok = True
        for entry in node.entries:
            ins = tuple(values[s] for s in entry.sources) if self.infer else None
            child = entry.node
            if isinstance(child, Call) and child.kind == "op":
                op = N.ops()[child.name]
                nodes.append(GraphNode(entry.name, tuple(entry.sources), op=op.fn, op_name=op.name, kwargs=dict(child.kwargs)))
                if self.infer:
                    try:
                        values[entry.name] = op.fn(*ins, **child.kwargs)  # type: ignore[misc]
                    except Exception as e:
                        self.fail(child.path, f"{op.name} cannot take inputs of shapes {_show(ins)}: {type(e).__name__}: {e}")  # type: ignore[arg-type]
                        return None, None
                continue
            module, out = self.build(child, ins, suffix)
            if module is None:
                ok = False
                if self.infer:
                    return None, None
                continue
            modules[entry.name] = module
            nodes.append(GraphNode(entry.name, tuple(entry.sources)))
            values[entry.name] = out
        if not ok:
            return None, None
        try:
            model = GraphModel(inputs=node.inputs, nodes=nodes, modules=modules, outputs=node.outputs)
        except (KeyError, TypeError, ValueError) as e:  # a name nn.Module refuses
            return self.fail(node.path, f"the graph cannot hold its modules: {e}")
        self.grow(sum(1 for _ in model.modules()) - sum(sum(1 for _ in m.modules()) for m in modules.values()), 0, node.path)
        if not self.infer:
            return model, None
        out = node.outputs
        if isinstance(out, str):
            return model, values[out]
        if isinstance(out, dict):
            return model, {k: values[v] for k, v in out.items()}
        return model, {k: values[k] for k in out}

    def call(self, node: Call, xs: tuple[Any, ...] | None, suffix: str) -> tuple[nn.Module | None, Any]:
        key = node.path + suffix
        args, kwargs = list(node.args), dict(node.kwargs)
        if node.auto:
            if self.infer:
                x = xs[0] if xs else None
                if not isinstance(x, Tensor):
                    return self.fail(node.path, f"'auto' needs a tensor input; this layer gets {shapes_of(x)}")
                for slot, pname in node.auto:
                    dim = N.AUTO_PARAMS[pname]
                    if x.dim() < 2:
                        return self.fail(node.path, f"'auto' {pname} needs an input with a batch dim, got shape {tuple(x.shape)}")
                    width = int(x.shape[dim])
                    if isinstance(slot, int):
                        args[slot] = width
                    else:
                        kwargs[slot] = width
                self.resolved[key] = (args, kwargs)
            else:
                args, kwargs = self.resolved[key]
        try:
            if node.kind == "nn":
                module = make_layer(node.name, *args, **kwargs)
            elif node.kind == "block":
                module = N.blocks()[node.name](*args, **kwargs)
            else:
                module = create_model(node.name, **kwargs)
        except TorchsmithError as e:
            return self.fail(node.path, str(e))
        except Exception as e:
            return self.fail(node.path, f"{node.name}{_call_text(args, kwargs)} failed: {type(e).__name__}: {e}")
        if not isinstance(module, nn.Module):
            return self.fail(node.path, f"the block {node.name!r} returned a {type(module).__name__}, not an nn.Module")
        self.grow(*model_size(module), node.path)
        if not self.infer or xs is None:
            return module, None
        try:
            with torch.no_grad():
                out = module(*xs)
        except Exception as e:
            return self.fail(node.path, f"{node.name}{_call_text(args, kwargs)} cannot take input of shape {_show(xs)}: {type(e).__name__}: {e}")
        return module, out


def _call_text(args: list[Any], kwargs: dict[str, Any]) -> str:
    return "(" + ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())]) + ")"


def _raise(problems: list[str]) -> None:
    if problems:
        n = len(problems)
        raise SpecError(f"The spec cannot be built ({n} problem{'s' * (n > 1)}):\n" + "\n".join(f"  {p}" for p in problems), problems)


def construct(root: Node, shapes: dict[str, tuple[int, ...]] | None) -> tuple[nn.Module, Any]:
    """``(model, output)`` for a parsed spec; see :func:`_construct`."""
    try:
        return _construct(root, shapes)
    except TorchsmithError:
        raise
    except Exception as e:  # a layer's own check that validation did not foresee: still a spec error
        raise SpecError(f"The spec cannot be built: {type(e).__name__}: {e}") from e


def _construct(root: Node, shapes: dict[str, tuple[int, ...]] | None) -> tuple[nn.Module, Any]:
    """``(model, output)`` for a parsed spec; ``output`` is a meta tensor (or dict of them) when ``shapes`` is given.

    The model is built on the current default device.

    Raises:
        SpecError: every layer that could not be built, or could not take the shape reaching it.
    """
    if shapes is None:
        if torch.get_default_device().type != "meta":  # counted on meta first: a refusal allocates nothing
            with torch.device("meta"):
                counting = _Builder(infer=False, resolved={})
                counting.build(root, None, "")
            _raise(counting.problems)
        builder = _Builder(infer=False, resolved={})
        model, _ = builder.build(root, None, "")
        _raise(builder.problems)
        return model, None  # type: ignore[return-value]
    with torch.device("meta"):
        probe = _Builder(infer=True, resolved={})
        xs = tuple(torch.zeros(s) for s in shapes.values())
        meta_model, out = probe.build(root, xs, "")
    _raise(probe.problems)
    if torch.get_default_device().type == "meta":
        return meta_model, out  # type: ignore[return-value]
    builder = _Builder(infer=False, resolved=probe.resolved)
    model, _ = builder.build(root, None, "")
    _raise(builder.problems)
    return model, out  # type: ignore[return-value]
