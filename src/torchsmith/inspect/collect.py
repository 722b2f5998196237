"""Collecting: run a model once under hooks and count what happens, leaving the model as it was.

The run itself (stand-ins for parameters and buffers on ``"meta"``, ``"fake"`` or ``"real"``, inputs
converted, the model put back afterwards even when the forward raises) is :mod:`torchsmith.runner`'s;
what is here is specific to counting: hooks that record each module call, the dispatch modes that
count FLOPs (and make common ops cheap on meta), and the bytes autograd saves for backward.

Per module call: output shapes of every output leaf, FLOPs (``flops.FORMULAS``, attributed to every
module open at the time); per run: ops without a FLOP formula, and the bytes autograd saves for
backward (``saved_tensors_hooks``; distinct storages, parameters and buffers excluded).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..runner import Call, describe, on_stand_ins
from .flops import count_flops, counts_nothing
from .records import LayerRecord, output_leaves

__all__ = ["Run", "collect", "module_params", "describe_failure"]

logger = logging.getLogger("torchsmith")


# helpers


_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def misfit(module: nn.Module, call: Call) -> str:
    """What ``module`` expects that its input lacks, read off its weights (``", expects 3 input channels"``:
    a 3-D input to a Conv2d, a channels-last image, a wrong last dimension for a Linear), or ``""`` when the
    input fits (the failure lies elsewhere, or is one a backend cannot run)."""
    first = next(iter(output_leaves(call)), None)
    if first is None:
        return ""
    shape = first.shape
    if isinstance(module, nn.modules.conv._ConvNd):
        k, c = len(module.kernel_size), module.in_channels
        full = f"(N, {c}, {_SPATIAL.get(k, '...')})"
        if len(shape) not in (k + 1, k + 2):
            return f": a {len(shape)}-D input (the rank is wrong: {type(module).__name__} takes {k + 2}-D {full}, or {k + 1}-D unbatched)"
        if shape[-(k + 1)] == c:
            return ""
        if len(shape) == k + 1:
            n = shape[0]
            return (f": a {len(shape)}-D input (the rank is wrong: it expects {k + 2}-D {full}; {k + 1}-D is read as one "
                    f"unbatched input of {n} channel{'s' if n != 1 else ''}, not {c}): is the batch dimension missing?")
        if shape[-1] == c:
            order = ", ".join(map(str, (0, k + 1, *range(1, k + 1))))
            return (f", expects {c} input channels in dimension 1 {full}: this input is channels-last; "
                    f"permute it first: x.permute({order})")
        return f", expects {c} input channels"
    if isinstance(module, nn.Linear) and shape and shape[-1] != module.in_features:
        return f", expects a last dimension of {module.in_features}"
    return ""


def describe_failure(path: str, module: nn.Module, call: Call, err: BaseException) -> str:
    """``'layer3.0.conv1 (Conv2d) got (1, 128, 28, 28), expects 256 input channels'`` (plus torch's message)."""
    got = describe(call) or "nothing"
    where = path or "the model"
    return f"{where} ({type(module).__name__}) got {got}{misfit(module, call)}: {type(err).__name__}: {err}"


@dataclass
class ParamInfo:
    count: int
    trainable: str
    tied: tuple[str, ...]


def module_params(model: nn.Module) -> dict[str, ParamInfo]:
    """Per module path: distinct parameters (a tied weight once), yes/no/partial trainable, tied partners."""
    owners: dict[int, set[str]] = {}
    held: dict[str, dict[int, nn.Parameter]] = {path: {} for path, _ in model.named_modules()}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = name.rpartition(".")[0]
        owners.setdefault(id(p), set()).add(owner)
        parts = owner.split(".") if owner else []
        for i in range(len(parts) + 1):  # the owner and every ancestor hold it
            path = ".".join(parts[:i])
            if path in held:
                held[path][id(p)] = p
    out = {}
    for path, params in held.items():
        count = sum(p.numel() for p in params.values())
        flags = {p.requires_grad for p in params.values()}
        trainable = "--" if not params else "yes" if flags == {True} else "no" if flags == {False} else "partial"
        tied = ()
        shared = [owners[i] for i in params if len(owners[i]) > 1]
        if shared:
            inside = (lambda o: o == path or o.startswith(path + ".")) if path else (lambda o: True)
            tied = tuple(sorted({o for group in shared for o in group if not inside(o)}))
        out[path] = ParamInfo(count, trainable, tied)
    return out


# the run


@dataclass
class Run:
    """What one forward produced: records in call order, totals, and the error if it raised."""

    backend: str
    records: list[LayerRecord] = field(default_factory=list)
    flops: int = 0
    uncounted: Counter = field(default_factory=Counter)
    saved_bytes: int = 0
    outputs: list = field(default_factory=list)
    error: str | None = None
    misfit: bool = False  # the failing layer's input does not fit its weights: no backend can run it
    graph: Any = None  # dataflow graph (diagram), when asked for

    @property
    def finished(self) -> int:
        return sum(r.status == "ok" for r in self.records)


def _batch_norm_meta(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """``native_batch_norm`` on meta tensors as the CPU kernel shapes it (save_mean / save_invstd of C
    values when training, empty otherwise), without torch's Python decomposition (most of a ResNet's
    meta time). Running statistics are left alone: on meta they hold no values."""
    stats = input.new_empty((input.shape[1],) if training else (0,))
    return torch.empty_like(input), stats, stats.new_empty(stats.shape)


def _addmm_meta(bias, m1, m2, *, beta=1, alpha=1):
    """``addmm`` (every ``nn.Linear`` on 2-d input) on meta: (n, k) @ (k, m) -> (n, m)."""
    if m1.dim() != 2 or m2.dim() != 2 or m1.shape[1] != m2.shape[0]:
        return torch.ops.aten.addmm.default(bias, m1, m2, beta=beta, alpha=alpha)  # torch's own error
    return torch.empty((m1.shape[0], m2.shape[1]), dtype=m1.dtype, device="meta")


_FAST_META = {torch.ops.aten.native_batch_norm.default: _batch_norm_meta, torch.ops.aten.addmm.default: _addmm_meta}
_POINTWISE_DTYPE: dict[tuple, torch.dtype] = {}


def _pointwise_meta(func: Any, args: tuple, kwargs: dict) -> Any:
    """A pointwise op on meta tensors without torch's Python meta function (0.5 ms a call): the output
    is the broadcast shape, contiguous, its dtype found once per
    combination of argument types by running the op on one-element tensors. ``None``: not handled."""
    if kwargs.get("out") is not None or len(func._schema.returns) != 1:
        return None
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors or not all(t.is_meta for t in tensors):
        return None
    if func._schema.is_mutable:  # in place: the first argument, unchanged in shape
        return args[0] if torch.broadcast_shapes(*(t.shape for t in tensors)) == args[0].shape else None
    key = (func, tuple((a.dtype, a.dim() == 0) if isinstance(a, Tensor) else type(a) for a in args),
           tuple((k, type(v)) for k, v in kwargs.items()))
    dtype = _POINTWISE_DTYPE.get(key)
    if dtype is None:
        small = [a.new_empty(() if a.dim() == 0 else (1,)) if isinstance(a, Tensor) else a for a in args]
        dtype = _POINTWISE_DTYPE[key] = func(*small, **kwargs).dtype
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    # contiguous: any view the real (possibly strided) output allows, a contiguous one allows too
    return torch.empty(shape, dtype=dtype, device="meta")
_SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


class _MetaAttention(torch.autograd.Function):
    """Attention on meta tensors, shapes only: keeps for backward what the CPU flash kernel keeps
    (q, k, v, output, log-sum-exp), where torch's meta path would decompose to the math form (the full
    attention matrix saved, and seconds of Python per call on a long sequence)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, H, T, Dv)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, T)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - summaries never run backward
        raise NotImplementedError("shape-only attention has no backward")


class _Functions(TorchFunctionMode):
    """On meta: ``scaled_dot_product_attention`` by :class:`_MetaAttention` where the CPU would use its
    flash kernel (everything but dropout during training), its FLOPs counted by formula."""

    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) >= 3 and all(
                isinstance(t, Tensor) and t.is_meta and t.dim() == 4 for t in args[:3]) and not self._math(args, kwargs):
            q, k, v = args[:3]
            out = _MetaAttention.apply(q, k, v)
            self.counter.record(_SDPA_CPU, (q, k, v), {}, out)
            return out
        return func(*args, **kwargs)

    @staticmethod
    def _math(args: tuple, kwargs: dict) -> bool:
        """True where CPU picks the math kernel rather than flash: dropout while building a graph."""
        dropout = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        return bool(dropout) and torch.is_grad_enabled() and any(t.requires_grad for t in args[:3])


class _Counter(TorchDispatchMode):
    """Counts FLOPs per op into every open module record; optionally tracks data flow for the diagram."""

    def __init__(self, run: Run, stack: list[LayerRecord], flow: Any = None):
        super().__init__()
        self.run, self.stack, self.flow = run, stack, flow
        self.meta = run.backend == "meta"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = None
        if self.meta:
            fast = _FAST_META.get(func)
            if fast is not None and args[0].is_meta:
                out = fast(*args, **kwargs)
            elif torch.Tag.pointwise in func.tags:
                out = _pointwise_meta(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        return self.record(func, args, kwargs, out)

    def record(self, func, args: tuple, kwargs: dict, out: Any) -> Any:
        n = count_flops(func, args, kwargs, out)
        if n is None:
            if not counts_nothing(func):
                self.run.uncounted[func.overloadpacket.__name__] += 1
        elif n:
            self.run.flops += n
            for rec in self.stack:
                rec.flops += n
        if self.flow is not None:
            self.flow.op(func, args, kwargs, out, n or 0)
        return out


def collect(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    backend: str,
    training: bool | None,
    params: dict[str, ParamInfo],
    flow_factory: Callable[[dict], Any] | None = None,
) -> Run:
    """One forward of ``model(*args, **kwargs)`` on ``backend``; never raises for errors of the forward."""
    run = Run(backend)
    paths = {m: name for name, m in model.named_modules()}
    calls: Counter = Counter()
    stack: list[LayerRecord] = []
    modules_of: dict[int, nn.Module] = {}
    inputs_of: dict[int, Any] = {}
    flow = flow_factory(paths) if flow_factory else None

    def pre_hook(module: nn.Module, margs: tuple, mkwargs: dict) -> None:
        path = paths[module]
        calls[path] += 1
        info = params[path]
        rec = LayerRecord(path, type(module).__name__, path.count(".") + 1 if path else 0, calls[path],
                          info.count, info.trainable, info.tied, status="unfinished")
        run.records.append(rec)
        stack.append(rec)
        modules_of[id(rec)] = module
        inputs_of[id(rec)] = (margs, mkwargs)
        if flow is not None:
            flow.enter(rec, margs, mkwargs)

    def post_hook(module: nn.Module, margs: tuple, mkwargs: dict, output: Any) -> None:
        path = paths[module]
        while stack and stack[-1].path != path:  # a child raised and the parent caught it
            stack.pop().status = "failed"
        if stack:
            rec = stack.pop()
            rec.outputs = list(output_leaves(output))
            rec.status = "ok"
            inputs_of.pop(id(rec), None)
            if flow is not None:
                flow.exit(rec, output)

    with ExitStack() as es:
        ready = es.enter_context(on_stand_ins(model, (args, kwargs), backend=backend, training=training))
        excluded = {t.untyped_storage()._cdata for t in ready.state.values()}
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            st = t.untyped_storage()
            if st._cdata not in excluded:
                saved[st._cdata] = st.nbytes()
            return t

        for module in paths:
            es.callback(module.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
            es.callback(module.register_forward_hook(post_hook, with_kwargs=True, always_call=False).remove)
        if ready.fake_mode is not None:  # before the counter: dispatch modes entered later see ops first
            es.enter_context(ready.fake_mode)
        es.enter_context(torch.enable_grad())
        es.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        counter = es.enter_context(_Counter(run, stack, flow))
        if backend == "meta":
            es.enter_context(_Functions(counter))
        try:
            out = ready.call()
            run.outputs = list(output_leaves(out))
            del out
        except Exception as err:  # noqa: BLE001 - recorded; the caller tries the next backend or marks rows
            failing = next((r for r in reversed(stack)), None)
            if failing is not None:
                margs, mkwargs = inputs_of.get(id(failing), ((), {}))
                run.error = describe_failure(failing.path, modules_of[id(failing)], (margs, mkwargs), err)
                run.misfit = bool(misfit(modules_of[id(failing)], (margs, mkwargs)))
                failing.status = "failed"
            else:
                run.error = f"{type(err).__name__}: {err}"
            logger.debug("summary on %s failed: %s", backend, run.error)
        run.saved_bytes = sum(saved.values())
    if flow is not None:
        run.graph = flow
    return run
