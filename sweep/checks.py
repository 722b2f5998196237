"""Each torchsmith operation on one model, checked against an independent reference.

Outcomes: ``ok``; ``refused`` (a ``TorchsmithError`` whose message names a module of the model and a next step);
``wrong`` (it returned, the reference disagrees); ``crash`` (any other exception, or a refusal that does not say
where and what to do); ``n/a`` (the operation does not apply to this kind of model). References, as tests/interop:
parameters by deduplicated ``numel``, FLOPs by ``FlopCounterMode``, features by forward hooks, a new head by the
output's width with the rest of the state unchanged, freezing by what one SGD step moves, edits and
optimisations by the original model's outputs (1e-4 relative), the untouched model by ``probe_snapshot``.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import torchsmith as ts
from helpers import flop_reference, probe_differences, probe_snapshot

from .cases import Case, example

OPS = ["summary", "untouched", "feature_info", "extract_features", "replace_head", "freeze", "adapt_input_channels",
       "fold_batchnorm", "optimize_for_inference", "weights", "save_model"]  # fmt: skip
NEW_CLASSES = 7
TOLERANCE = 1e-4


class Wrong(Exception):
    """The operation returned, and its reference disagrees."""


class NotApplicable(Exception):
    """The operation does not apply to this kind of model."""


@dataclass
class Subject:
    """One model under test: the model (eval, BatchNorm statistics set), its example call, its output."""

    case: Case
    attempt: dict
    model: nn.Module
    args: tuple
    kwargs: dict
    output: object
    traces: list | None = None  # what summary() left on the model, when the summary check ran it
    _noise: float | None = None  # see noise
    _wide: nn.Module | None = None  # see wide

    @property
    def inputs(self):
        """The example as ``example_inputs=`` takes it."""
        if self.kwargs:
            return {"input_ids": self.args[0], **self.kwargs}
        return self.args[0] if len(self.args) == 1 and isinstance(self.args[0], torch.Tensor) else self.args

    def run(self, model: nn.Module | None = None, args: tuple | None = None):
        with torch.no_grad():
            return (model or self.model)(*(self.args if args is None else args), **self.kwargs)

    @property
    def wide(self) -> nn.Module:
        """One float64 copy of the model, made on first use and never changed (run it; deep-copy it to edit):
        the second opinion where float32 rounding may hide or fake a difference."""
        if self._wide is None:
            self._wide = copy.deepcopy(self.model).double()
        return self._wide

    @property
    def noise(self) -> float:
        """The model's own float32 rounding on this input: the largest difference between its float32 output
        and the same model run in float64 (0 where float64 does not run). An ill-conditioned model (timm's
        fbnetv3_b at random BatchNorm statistics: 1.2 at scale 1,930) moves that far under any rewrite that
        reorders float32 sums, so a difference within it is rounding, not a wrong answer."""
        if self._noise is None:
            double = lambda v: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
            try:
                with torch.no_grad():
                    out = self.wide(*[double(a) for a in self.args], **{k: double(v) for k, v in self.kwargs.items()})
                a, b = leaves(self.output), leaves(out)
                self._noise = max((float((a[k].double() - b[k]).abs().max()) for k in a
                                   if k in b and a[k].is_floating_point() and a[k].shape == b[k].shape and a[k].numel()),
                                  default=0.0)
            except Exception:  # noqa: BLE001 - a model float64 cannot run: no floor
                self._noise = 0.0
        return self._noise

    def result(self, model: nn.Module, what: str, args: tuple | None = None):
        """The output of a model an operation returned; one that no longer runs is a wrong result."""
        try:
            return self.run(model, args)
        except Exception as e:  # noqa: BLE001
            raise Wrong(f"the model {what} returned no longer runs: {type(e).__name__}: {str(e)[:300]}") from e


# outcomes


NEXT_STEP = re.compile(
    r"\b(pass|use|call|run|set|build|load|save|give|register|import|remove|replace|untie|exclude|try|fix|install|"
    r"convert|request|wrap|instead|first|initiali[sz]e|choose|rename|name|list|turn|did you mean)\b", re.IGNORECASE
)  # fmt: skip


def names_a_module(message: str, model: nn.Module) -> bool:
    """The message names a module of the model: a path (quoted, or dotted) or a class the model holds."""
    for path, module in model.named_modules():
        if path and (f"'{path}'" in message or f'"{path}"' in message or f"`{path}`" in message):
            return True
        if path and "." in path and re.search(rf"(?<![\w.]){re.escape(path)}(?![\w])", message):
            return True
    classes = {type(m).__name__ for m in model.modules()}
    return any(re.search(rf"\b{re.escape(c)}\b", message) for c in classes)


def outcome(error: BaseException, model: nn.Module) -> tuple[str, str]:
    """``("refused", message)`` for a well-formed refusal, else ``("crash", what happened)``."""
    message = str(error)
    if isinstance(error, ts.TorchsmithError):
        missing = [what for what, ok in (("a module path", names_a_module(message, model)), ("a next step", NEXT_STEP.search(message))) if not ok]
        if not missing:
            return "refused", f"{type(error).__name__}: {message}"
        return "crash", f"refusal without {' and '.join(missing)}: {type(error).__name__}: {message}"
    frames = traceback.extract_tb(error.__traceback__)
    where = next((f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(frames) if "torchsmith" in f.filename), "")
    return "crash", f"{type(error).__name__}: {message} {f'(at {where})' if where else ''}".strip()


# comparing outputs


def leaves(out, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in an output (tensors, dicts, ModelOutputs, lists, tuples), by path."""
    if isinstance(out, torch.Tensor):
        return {prefix or "output": out}
    found: dict[str, torch.Tensor] = {}
    if isinstance(out, dict) or hasattr(out, "items"):
        items = list(out.items())
    elif isinstance(out, (list, tuple)):
        items = list(enumerate(out))
    else:
        return found
    for k, v in items:
        found.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return found


def prediction(out) -> torch.Tensor | None:
    """The output a head writes: a tensor, ``logits``, ``out`` (segmentation), the first tensor of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "items"):
        for key in ("logits", "out"):
            if key in out and isinstance(out[key], torch.Tensor):
                return out[key]
        return None
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[-1] if all(isinstance(o, torch.Tensor) and o.shape == out[0].shape for o in out) else out[0]
    return None


def differences(got, expected, *, tolerance: float = TOLERANCE, floor: float = 0.0) -> list[str]:
    """How two outputs differ beyond ``tolerance`` relative to the largest expected value, plus ``floor`` (twice
    the model's own float32 rounding, ``Subject.noise``), empty when they agree."""
    a, b = leaves(got), leaves(expected)
    if a.keys() != b.keys():
        return [f"outputs differ in structure: {sorted(a)[:5]} vs {sorted(b)[:5]}"]
    problems = []
    for k in b:
        x, y = a[k], b[k]
        if x.shape != y.shape:
            problems.append(f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif tolerance == 0:
            if not torch.equal(x, y):
                problems.append(f"{k}: not bitwise equal")
        elif y.is_floating_point() or y.is_complex():
            scale = float(y.abs().max()) if y.numel() else 0.0
            err = float((x.to(y.dtype) - y).abs().max()) if y.numel() else 0.0
            if not err <= tolerance * scale + 1e-6 + 2 * floor:
                problems.append(f"{k}: max error {err:.3g} at scale {scale:.3g}" + (f", float32 rounding {floor:.3g}" if floor else ""))
        elif not torch.equal(x, y):
            problems.append(f"{k}: values differ")
    return problems


def kept(out):
    """A copy of an output's tensors as they are now (a later in-place op, ReLU(inplace=True), must not change it)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if type(out) in (dict, OrderedDict):
        return type(out)((k, kept(v)) for k, v in out.items())
    if type(out) in (list, tuple):
        return type(out)(kept(v) for v in out)
    return out


def hooked(model: nn.Module, paths: list[str], run: Callable[[], object]) -> dict[str, list]:
    """Each module's outputs in one run, by forward hooks (the reference for feature extraction)."""
    seen: dict[str, list] = {p: [] for p in paths}
    handles = [model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: seen[p].append(kept(o))) for p in paths]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def compare_models(subject: Subject, changed: nn.Module, what: str) -> None:
    """``changed`` gives the original's outputs; detectors (whose box selection is discrete) by their backbone's."""
    got, expected = subject.result(changed, what), subject.output
    problems = differences(got, expected) and differences(got, expected, floor=subject.noise)
    if problems and subject.case.kind == "detection" and hasattr(subject.model, "backbone"):
        run = lambda m: hooked(m, ["backbone"], lambda: subject.run(m))["backbone"][0]  # noqa: E731
        problems = differences(run(changed), run(subject.model))
    if problems:
        raise Wrong(f"{what} changed the outputs: {'; '.join(problems[:3])}")


# the operations


def _summary(s: Subject, allow_real: bool):
    """summary(), and what it changed on the model (``probe_snapshot`` before and after)."""
    before = probe_snapshot(s.model)
    try:
        return ts.summary(s.model, example_inputs=s.args, kwargs=s.kwargs, allow_real=allow_real)
    finally:
        s.traces = (s.traces or []) + [f"allow_real={allow_real}: {p}" for p in probe_differences(before, probe_snapshot(s.model))]


def op_summary(s: Subject) -> str:
    s.traces = []
    s_ = _summary(s, allow_real=False)
    if not s_.complete:
        s_ = _summary(s, allow_real=True)
    params = sum(p.numel() for p in {id(p): p for p in s.model.parameters()}.values())
    with flop_reference() as fc:
        s.model(*s.args, **s.kwargs)
    problems = []
    if s_.total_params != params:
        problems.append(f"parameters {s_.total_params:,} vs numel {params:,}")
    if s_.total_flops != fc.get_total_flops():
        problems.append(f"FLOPs {s_.total_flops:,} vs FlopCounterMode {fc.get_total_flops():,}")
    if problems:
        raise Wrong("; ".join(problems))
    return f"{params:,} parameters, {s_.total_flops:,} FLOPs ({s_.backend})"


def op_untouched(s: Subject) -> str:
    if s.traces is None:  # the summary check did not run: run the summary here
        for allow_real in (False, True):
            try:
                _summary(s, allow_real)
            except ts.TorchsmithError:
                pass  # the summary's own outcome is the summary check's; here only the trace it leaves counts
    if s.traces:
        raise Wrong(f"summary changed the model: {'; '.join(s.traces[:3])}")
    return "no trace"


def _spatial(s: Subject) -> bool:
    return s.case.kind in ("image", "segmentation", "video", "pixels")


def op_feature_info(s: Subject) -> str:
    if s.case.kind in ("tokens", "seq2seq"):
        raise NotApplicable("token models: feature maps have no channels to measure without return_nodes")
    info = ts.feature_info(s.model, example_inputs=s.inputs)
    paths = [i.module for i in info]
    bigger = None
    if _spatial(s):
        bigger = dict(s.attempt, size=s.attempt.get("size", 64) * 2)
    first = hooked(s.model, paths, lambda: s.run())
    second = None
    if bigger is not None:
        try:
            args2, _ = example(s.case, bigger)
            second = hooked(s.model, paths, lambda: s.run(args=args2))
        except Exception:  # noqa: BLE001 - a model that runs at one size only: strides are not measured
            second = None
    problems = []
    for item in info:
        outs = [o for o in first[item.module] if isinstance(o, torch.Tensor)]
        if not outs:
            continue
        y = outs[-1]
        dim = {"channels_first": 1, "channels_last": -1, "tokens": -1}[item.layout]
        if y.dim() < 2 or y.shape[dim] != item.channels:
            problems.append(f"{item.module}: channels {item.channels}, the hooked output is {tuple(y.shape)} ({item.layout})")
            continue
        if second is not None and item.layout != "tokens" and y.dim() >= 3 and item.stride:
            y2 = [o for o in second[item.module] if isinstance(o, torch.Tensor)][-1]
            w = -1 if item.layout == "channels_first" else -2
            grown = y2.shape[w] - y.shape[w]
            if grown > 0:
                measured = s.attempt.get("size", 64) / grown
                if abs(measured - item.stride) > 1e-6 * measured and measured == int(measured):
                    problems.append(f"{item.module}: stride {item.stride}, the maps grow by {grown} at twice the input (stride {measured:g})")
    if problems:
        raise Wrong("; ".join(problems[:4]))
    return ", ".join(f"{i.module}:{i.channels}/{i.stride}" for i in info)[:300]


def op_extract_features(s: Subject) -> str:
    calls: dict[str, list] = {}
    names = [p for p, _ in s.model.named_modules() if p]
    order: list[str] = []

    def note(path):
        def hook(m, i, o):
            calls.setdefault(path, []).append(kept(o))
            order.append(path)
        return hook

    handles = [s.model.get_submodule(p).register_forward_hook(note(p)) for p in names]
    try:
        s.run()
    finally:
        for h in handles:
            h.remove()
    once = [p for p in dict.fromkeys(order) if len(calls[p]) == 1 and isinstance(calls[p][0], torch.Tensor)]
    if not once:
        raise NotApplicable("no module is called once with a tensor output")
    picks = list(dict.fromkeys(once[min(len(once) - 1, round(i * (len(once) - 1) / 3))] for i in range(4)))
    extractor = ts.extract_features(s.model, picks)
    got = s.result(extractor, "extract_features")
    problems = []
    for p in picks:
        value = got.get(p) if hasattr(got, "get") else None
        if not isinstance(value, torch.Tensor):
            problems.append(f"{p}: extractor gave {type(value).__name__}")
            continue
        problems += [f"{p}: {d}" for d in differences(value, calls[p][0], tolerance=1e-6)]
    if problems:
        raise Wrong("; ".join(problems[:4]))
    return f"{extractor.strategy}: {', '.join(picks)}"[:300]


def op_replace_head(s: Subject) -> str:
    model = copy.deepcopy(s.model)
    before_ids = {p: id(m) for p, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = prediction(s.output)
    ts.replace_head(model, NEW_CLASSES, example_inputs=s.inputs)
    replaced = [p for p, m in model.named_modules() if before_ids.get(p) != id(m)]
    out = prediction(s.result(model, "replace_head"))
    dim = 1 if s.case.kind == "segmentation" else -1
    if out is None or out.shape[dim] != NEW_CLASSES:
        raise Wrong(f"the prediction is {None if out is None else tuple(out.shape)}, expected {NEW_CLASSES} classes on dim {dim}")
    after = model.state_dict()
    width = old.shape[dim] if old is not None else None
    problems = []
    for k, v in before.items():
        if any(k.startswith(p + ".") for p in replaced if p):
            continue
        w = after.get(k)
        if w is None:
            problems.append(f"{k} removed")
        elif w.shape != v.shape:
            if not (width is not None and [a for a, b in zip(w.shape, v.shape) if a != b] == [NEW_CLASSES]):
                problems.append(f"{k} reshaped {tuple(v.shape)} -> {tuple(w.shape)}")
        elif not torch.equal(w, v):
            problems.append(f"{k} changed")
    if problems:
        raise Wrong(f"outside the new head ({', '.join(replaced)[:80]}): {'; '.join(problems[:4])}")
    return f"replaced {', '.join(replaced)[:200]}"


def _batch_of_two(s: Subject) -> tuple:
    args, _ = example(s.case, s.attempt, batch=2)
    return args


def op_freeze(s: Subject) -> str:
    model = copy.deepcopy(s.model)
    children = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
    head = children[-1]
    head_ids = {id(p) for p in model.get_submodule(head).parameters()}
    other_ids = {id(p) for n, c in model.named_children() if n != head for p in c.parameters()}
    other_ids |= {id(p) for p in model._parameters.values() if p is not None}
    ts.freeze(model, exclude=[head])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    expected = head_ids - other_ids  # a tensor the head shares with a frozen module is frozen too (and warned about)
    if trainable != expected:
        raise Wrong(f"{len(trainable)} trainable parameters, expected the {len(expected)} of {head!r} alone")
    problems = differences(s.result(model, "freeze"), s.output, tolerance=1e-6)
    if problems:
        raise Wrong(f"freezing changed the eval outputs: {'; '.join(problems[:3])}")
    if s.case.kind == "detection":
        return f"{head!r} trainable (detectors need targets in train mode: no SGD step)"
    if not trainable:
        return f"nothing trainable: {head!r} shares its tensors with frozen modules (warned)"
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n and not n.startswith(head + ".")}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    try:
        out = model(*_batch_of_two(s), **{k: torch.cat([v, v]) for k, v in s.kwargs.items()})
    except Exception as e:  # noqa: BLE001 - the model's own train mode: the flags were checked above
        return f"{head!r} trainable; no SGD step ({type(e).__name__} in the model's train mode)"
    # the prediction, else any output the trainable head feeds (googlenet's train mode ends with an auxiliary head)
    pred = next((t for t in (prediction(out), *leaves(out).values()) if t is not None and t.requires_grad), None)
    if pred is None:
        return f"{head!r} trainable; no output of the model's train mode depends on it (no SGD step)"
    pred.float().square().mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {id(p) for n, p in model.named_parameters() if not torch.equal(p.detach(), params[n])}
    if not moved <= trainable:
        raise Wrong(f"an SGD step moved {len(moved - trainable)} frozen parameters")
    drifted = [n for n, b in model.named_buffers() if n in stats and not torch.equal(b, stats[n])]
    if drifted:
        raise Wrong(f"frozen BatchNorm statistics moved in train mode: {drifted[:3]}")
    return f"{head!r} trainable; SGD moved {len(moved)} of {len(trainable)} trainable tensors"


def op_adapt_input_channels(s: Subject) -> str:
    if not _spatial(s) and s.case.kind not in ("detection", "flow"):
        raise NotApplicable("no image input")
    model = ts.adapt_input_channels(copy.deepcopy(s.model), 1, example_inputs=s.inputs)
    if s.case.kind == "detection":
        gray = [img[:1] for img in s.args[0]]
        got, expected = s.result(model, "adapt_input_channels", args=(gray,)), s.run(args=([g.expand(3, -1, -1) for g in gray],))
    else:
        gray = tuple(a[:, :1] for a in s.args)
        got = s.result(model, "adapt_input_channels", args=gray)
        expected = s.run(args=tuple(g.expand(-1, 3, *g.shape[2:]) for g in gray))
        if differences(got, expected) and _wide_adapt_agrees(s, gray):
            return "1 channel (float32 rounding only: exact in float64)"
    problems = differences(got, expected) and differences(got, expected, floor=s.noise)
    if problems:
        raise Wrong(f"model(x) != original(x repeated to 3 channels): {'; '.join(problems[:3])}")
    return "1 channel"


def _wide_adapt_agrees(s: Subject, gray: tuple) -> bool:
    """The equivalence adapt_input_channels promises, checked in float64, where rounding cannot hide a wrong
    weight (an ill-conditioned model, fbnetv3_b, moves 0.3 at scale 1,900 from float32 rounding alone)."""
    try:
        wide, wide_gray = s.wide, tuple(g.double() for g in gray)
        adapted = ts.adapt_input_channels(copy.deepcopy(wide), 1, example_inputs=tuple(g.expand(-1, 3, *g.shape[2:]) for g in wide_gray)
                                          if len(wide_gray) > 1 else wide_gray[0].expand(-1, 3, *wide_gray[0].shape[2:]))
        with torch.no_grad():
            got = adapted(*wide_gray, **s.kwargs)
            expected = wide(*(g.expand(-1, 3, *g.shape[2:]) for g in wide_gray), **s.kwargs)
    except Exception:  # noqa: BLE001 - float64 does not run: no second opinion
        return False
    return not differences(got, expected, tolerance=1e-9)


def op_fold_batchnorm(s: Subject) -> str:
    model = ts.fold_batchnorm(copy.deepcopy(s.model))
    compare_models(s, model, "fold_batchnorm")
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    total = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in s.model.modules())
    return f"folded {total - left} of {total} BatchNorms"


def op_optimize_for_inference(s: Subject) -> str:
    model = ts.optimize_for_inference(copy.deepcopy(s.model))
    compare_models(s, model, "optimize_for_inference")
    return "outputs kept"


OPERATIONS: dict[str, Callable[[Subject], str]] = {
    "summary": op_summary,
    "untouched": op_untouched,
    "feature_info": op_feature_info,
    "extract_features": op_extract_features,
    "replace_head": op_replace_head,
    "freeze": op_freeze,
    "adapt_input_channels": op_adapt_input_channels,
    "fold_batchnorm": op_fold_batchnorm,
    "optimize_for_inference": op_optimize_for_inference,
}


def check(op: str, subject: Subject) -> tuple[str, str]:
    """Run one operation; ``(outcome, detail)``."""
    try:
        return "ok", OPERATIONS[op](subject)
    except NotApplicable as e:
        return "n/a", str(e)
    except Wrong as e:
        return "wrong", str(e)
    except Exception as e:  # noqa: BLE001 - every other exception is an outcome to report
        return outcome(e, subject.model)
