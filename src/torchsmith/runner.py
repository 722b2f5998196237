"""Run a model on shapes only: the one owner of example inputs, stand-ins and the untouched guarantee.

Everything that runs a model to learn shapes goes through here: ``summary``, ``diagram`` (through
:mod:`torchsmith.inspect.collect`), ``feature_info`` and the surgery probes (finding heads, widths,
the first conv). Nothing here changes its argument: a run leaves every module's class, attributes
(caches such as torchvision's ``AnchorGenerator.cell_anchors``), parameter and buffer slots, buffer
values, hooks, devices, dtypes and ``training`` flags as they were, whether it succeeded or failed.

Example inputs (the ``example_inputs=`` keyword of every public function that runs a model) are a
tensor (one positional argument), a tuple or list (positional arguments: ``([image],)`` for a
detector), or a dict (keyword arguments); tensors of any dtype are kept as they are (token ids stay
integers). Or ``input_size``: one shape, or a list of shapes (with one dtype each); or, with
neither, one sample guessed from the first Conv / Linear / Embedding layer.

A run swaps parameters and buffers for stand-ins (``torch.func.functional_call``; tied tensors
share one stand-in): on ``"meta"`` meta tensors (no memory, no compute), on ``"fake"``
``FakeTensorMode`` tensors (ops without meta kernels, tensors kept as plain attributes), on
``"real"`` the parameters themselves and clones of the buffers (running statistics stay as they
were). The fallback order is meta -> fake -> real, real only where the caller allows it.

    >>> call = example_call(nn.Linear(4, 2))
    >>> describe(call)
    '(1, 4)'
    >>> probe(nn.Linear(4, 2), call).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import dataclasses
import logging
import reprlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from .errors import TorchsmithError
from .kept import modes_kept, restored_on_failure, untouched

__all__ = [
    "BACKENDS", "CONV_TYPES", "Call", "ExampleInputs", "StandIns",
    "as_call", "backend_order", "describe", "example_call", "example_input", "main_output", "map_tensors",
    "modes_kept", "on_stand_ins", "output_tensors", "probe", "refuse_uninitialised", "renamed", "restored_on_failure",
    "tensor_leaves", "untouched",
]  # fmt: skip

logger = logging.getLogger("torchsmith")

BACKENDS = ("meta", "fake", "real")
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

ExampleInputs = Any  # a tensor (one argument), a tuple / list of positional arguments, a dict of keyword arguments
Call = tuple[tuple, dict]  # (args, kwargs)

_TOKENS = 8  # sequence length of the guessed token-id input
_SPATIAL = 224  # side of the guessed image input


# nested values: one walker for inputs and outputs


def map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    """``obj`` with every tensor inside replaced by ``fn(tensor)``, containers rebuilt as their own type.

    Walks dicts and other mappings (transformers' ``ModelOutput``, an ``OrderedDict`` that is also a
    dataclass, is walked as a mapping: only the fields that are set), lists, tuples, namedtuples and
    dataclasses.

    >>> map_tensors({"a": [torch.zeros(2)], "b": 3}, lambda t: t.shape)
    {'a': [torch.Size([2])], 'b': 3}
    """
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = {k: map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        if dataclasses.is_dataclass(obj):  # ModelOutput: unset fields stay None
            return dataclasses.replace(obj, **items)
        try:
            return type(obj)(items)
        except TypeError:  # a mapping type that is not built from a mapping (defaultdict)
            return items
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        items = [map_tensors(v, fn) for v in obj]
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return items if isinstance(obj, list) else tuple(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [f.name for f in dataclasses.fields(obj) if f.init]
        return dataclasses.replace(obj, **{name: map_tensors(getattr(obj, name), fn) for name in fields})
    return obj


def tensor_leaves(obj: Any, key: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every tensor inside ``obj`` (walked as :func:`map_tensors` walks it) with its dotted key path.

    >>> out = {"logits": torch.zeros(2, 5), "hidden": (torch.zeros(2, 3),)}
    >>> [(k, tuple(t.shape)) for k, t in tensor_leaves(out)]
    [('logits', (2, 5)), ('hidden.0', (2, 3))]
    """
    join = (lambda k: f"{key}.{k}") if key else str
    if isinstance(obj, Tensor):
        yield key, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensor_leaves(v, join(k))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from tensor_leaves(v, join(i))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from tensor_leaves(getattr(obj, f.name), join(f.name))


def output_tensors(output: Any) -> list[Tensor]:
    """Every tensor in a model's output, at any depth: a tensor, a dict (``ModelOutput``), a tuple
    (namedtuple), a list, a dataclass."""
    return [t for _, t in tensor_leaves(output)]


def main_output(output: Any) -> Tensor | None:
    """The prediction in a model's output: the tensor itself; ``logits`` / ``out`` of a dict or a
    dataclass (transformers, torchvision segmentation); or the first element of a tuple (torchvision's
    aux outputs). ``None`` when none of these is a tensor.

    >>> @dataclasses.dataclass
    ... class Out:
    ...     logits: torch.Tensor
    >>> main_output(Out(torch.zeros(2, 3))).shape
    torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    fields = output if isinstance(output, Mapping) else (
        {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
        if dataclasses.is_dataclass(output) and not isinstance(output, type) else None)
    if fields is not None:
        return next((fields[k] for k in ("logits", "out") if isinstance(fields.get(k), Tensor)), None)
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


# descriptions for messages


def _describe_value(obj: Any) -> str:
    if isinstance(obj, Tensor):
        shape = str(tuple(obj.shape))
        return shape if obj.dtype == torch.float32 else f"{shape} {str(obj.dtype).removeprefix('torch.')}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(_describe_value(v) for v in obj) + "]"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{reprlib.repr(k)}: {_describe_value(v)}" for k, v in obj.items()) + "}"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return reprlib.repr(obj)
    return type(obj).__name__


def describe(call: Call) -> str:
    """``(1, 3, 224, 224), mask=(1, 8) int64`` for messages: shapes, the dtype where it is not float32,
    keyword arguments by name.

    >>> describe(((torch.zeros(1, 3, 8, 8),), {"ids": torch.zeros(1, 8, dtype=torch.long)}))
    '(1, 3, 8, 8), ids=(1, 8) int64'
    """
    args, kwargs = call
    return ", ".join([_describe_value(a) for a in args] + [f"{k}={_describe_value(v)}" for k, v in kwargs.items()])


# example inputs


def as_call(example_inputs: ExampleInputs, *, error: type[TorchsmithError] = TorchsmithError) -> Call:
    """``(args, kwargs)`` of ``example_inputs``: a tensor is one argument, a tuple or list positional
    arguments, a dict keyword arguments."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    raise error(
        f"example_inputs must be a tensor (one argument), a tuple or list of positional arguments or a dict of "
        f"keyword arguments; got {type(example_inputs).__name__}. Wrap a single non-tensor argument in a tuple: (x,)."
    )


def _sized(input_size: Any, dtype: Any, error: type[TorchsmithError]) -> tuple[Tensor, ...]:
    """Meta tensors of ``input_size`` (one shape or a list of shapes) and ``dtype`` (one, or one per shape)."""
    one = isinstance(input_size, (list, tuple, torch.Size)) and all(isinstance(d, int) for d in input_size)
    sizes = [input_size] if one else list(input_size) if isinstance(input_size, (list, tuple)) else None
    dtypes = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype or torch.float32] * len(sizes or [])
    if sizes is None or len(dtypes) != len(sizes) or not all(
            isinstance(s, (list, tuple, torch.Size)) and all(isinstance(d, int) and d >= 0 for d in s) for s in sizes):
        raise error(f"input_size must be a shape like (1, 3, 224, 224) or a list of shapes (one dtype each); got "
                    f"{reprlib.repr(input_size)} with dtype {dtype!r}")
    return tuple(torch.empty(*s, dtype=dt, device="meta") for s, dt in zip(sizes, dtypes))


def example_input(model: nn.Module, *, error: type[TorchsmithError] = TorchsmithError) -> Tensor:
    """One meta sample shaped (and typed) for the first input layer of ``model``.

    ``(1, C, 224, 224)`` for a Conv2d, ``(1, C, 224)`` for a Conv1d, ``(1, F)`` for a Linear,
    ``(1, 8)`` token ids (int64) for an Embedding.

    >>> example_input(nn.Sequential(nn.Conv2d(3, 8, 3))).shape
    torch.Size([1, 3, 224, 224])

    Raises:
        error: no Conv / Linear / Embedding layer to guess it from.
    """
    for module in model.modules():
        if isinstance(module, CONV_TYPES):
            dims = 1 + CONV_TYPES.index(next(t for t in CONV_TYPES if isinstance(module, t)))
            return torch.empty(1, module.in_channels, *([_SPATIAL] * dims), dtype=module.weight.dtype, device="meta")
        if isinstance(module, nn.Linear):
            return torch.empty(1, module.in_features, dtype=module.weight.dtype, device="meta")
        if isinstance(module, nn.Embedding):
            return torch.zeros(1, _TOKENS, dtype=torch.long, device="meta")
    raise error(
        f"{type(model).__name__} has no Conv, Linear or Embedding layer to guess its input from; "
        "pass example_inputs=... (or input_size=(B, C, ...))."
    )


def example_call(
    model: nn.Module,
    *,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    example_inputs: ExampleInputs = None,
    kwargs: Mapping[str, Any] | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    guess: bool = True,
    error: type[TorchsmithError] = TorchsmithError,
) -> Call:
    """``(args, kwargs)`` for one run: ``example_inputs`` (see :func:`as_call`), else meta tensors of
    ``input_size`` and ``dtype``, else (with ``guess``) one sample for the first layer (see
    :func:`example_input`); ``kwargs`` are added keyword arguments.

    >>> args, kw = example_call(nn.Linear(4, 2), input_size=[(2, 4)], dtype=[torch.float16])
    >>> args[0].shape, args[0].dtype, args[0].device.type
    (torch.Size([2, 4]), torch.float16, 'meta')
    """
    if input_size is not None and example_inputs is not None:
        raise error("pass input_size or example_inputs, not both.")
    if example_inputs is not None:
        args, kw = as_call(example_inputs, error=error)
    elif input_size is not None:
        args, kw = _sized(input_size, dtype, error), {}
    elif guess:
        args, kw = (example_input(model, error=error),), {}
    else:
        raise error("pass input_size=(1, 3, 224, 224) or example_inputs=<example tensors>.")
    return args, {**kw, **(kwargs or {})}


def renamed(new_value: Any, old_value: Any, *, new: str, old: str, error: type[TorchsmithError] = TorchsmithError,
            stacklevel: int = 3) -> Any:
    """The value of a keyword with a deprecated old name: ``new_value``, else ``old_value`` with a
    ``DeprecationWarning`` (at the caller of the public function); both given is an error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise error(f"pass {new}= only: {old}= is its deprecated old name, and both were given.")
    warnings.warn(f"{old}= is deprecated; pass {new}= instead (the old keyword goes in the next release).",
                  DeprecationWarning, stacklevel=stacklevel)
    return old_value


# the model as it was


def refuse_uninitialised(model: nn.Module, *, error: type[TorchsmithError] = TorchsmithError, action: str = "run it") -> None:
    """Raise ``error`` naming the lazy modules (``nn.LazyLinear`` ...) of ``model`` not initialised yet:
    running them would materialise them and change their class, so nothing here runs such a model."""
    lazy = [path or type(model).__name__ for path, m in model.named_modules()
            if any(is_lazy(t) for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])]
    if lazy:
        raise error(
            f"cannot {action}: {type(model).__name__} has lazy layers that are not initialised yet "
            f"({', '.join(map(repr, lazy))}); "
            "run one forward first (model(example_input)) to initialise its lazy layers."
        )


# stand-ins and the run


def _stand_ins(model: nn.Module, backend: str, fake_mode: Any = None) -> dict[str, Tensor]:
    """name -> stand-in for every parameter and buffer of ``model`` (tied names share one stand-in):
    meta tensors, ``fake_mode`` tensors, or (``"real"``) the parameters themselves and cloned buffers."""
    made: dict[int, Tensor] = {}

    def make(t: Tensor, is_param: bool) -> Tensor:
        if backend == "real":  # parameters as they are, buffers cloned so running statistics stay untouched
            return t if is_param else t.clone()
        new = torch.empty_like(t, device="meta") if backend == "meta" else fake_mode.from_tensor(t.detach())
        if is_param and (t.is_floating_point() or t.is_complex()):
            new.requires_grad_(t.requires_grad)
        return new

    def one(t: Tensor, is_param: bool) -> Tensor:
        if id(t) not in made:
            made[id(t)] = make(t, is_param)
        return made[id(t)]

    state = {name: one(p, True) for name, p in model.named_parameters(remove_duplicate=False)}
    state.update((name, one(b, False)) for name, b in model.named_buffers(remove_duplicate=False) if b is not None)
    return state


def _input_converter(model: nn.Module, backend: str, fake_mode: Any) -> Callable[[Tensor], Tensor]:
    """Inputs for ``backend``: meta tensors on meta; on fake and real, inputs given by shape (meta)
    become inputs on the model's device (zeros for a real run), others are kept (fake: wrapped)."""
    if backend == "meta":
        return lambda t: torch.empty_like(t, device="meta")
    ref = next(iter([*model.parameters(), *model.buffers()]), None)
    device = ref.device if ref is not None and not ref.is_meta else torch.device("cpu")
    if backend == "real":
        return lambda t: torch.zeros(t.shape, dtype=t.dtype, device=device) if t.is_meta else t

    def fake(t: Tensor) -> Tensor:
        if not t.is_meta:
            return fake_mode.from_tensor(t)
        with fake_mode:
            return torch.empty(t.shape, dtype=t.dtype, device=device)

    return fake


@dataclass
class StandIns:
    """A model made ready to run on ``backend``: its stand-ins and the converted inputs. ``forward()``
    runs it (inside ``fake_mode`` for ``"fake"``; callers that stack their own dispatch modes enter
    ``fake_mode`` themselves, first, and call :meth:`call`)."""

    model: nn.Module
    backend: str
    state: dict[str, Tensor]
    args: tuple
    kwargs: dict
    fake_mode: Any = None

    def call(self) -> Any:
        return torch.func.functional_call(self.model, self.state, self.args, self.kwargs, strict=False)

    def forward(self) -> Any:
        with self.fake_mode if self.fake_mode is not None else nullcontext():
            return self.call()


@contextmanager
def _fake_tensor_log_quiet(quiet: bool) -> Iterator[None]:
    """torch logs a traceback at ERROR for each op that fails on fake tensors; here that failure is an answer
    (a model that needs its own input size, say) and is raised to the caller, so the log is only noise."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    if quiet:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def on_stand_ins(model: nn.Module, call: Call, *, backend: str, training: bool | None = None) -> Iterator[StandIns]:
    """``model`` ready to run ``call`` on ``backend``, in ``training`` mode (``None``: its own flags);
    on exit it is exactly as it was (:func:`untouched`), even when the forward raised."""
    if backend not in BACKENDS:
        raise TorchsmithError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    with untouched(model), modes_kept(model, training=training), _fake_tensor_log_quiet(backend == "fake"):
        fake_mode = None
        if backend == "fake":
            from torch._subclasses.fake_tensor import FakeTensorMode

            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        convert = _input_converter(model, backend, fake_mode)
        args, kwargs = map_tensors(call[0], convert), map_tensors(call[1], convert)
        yield StandIns(model, backend, _stand_ins(model, backend, fake_mode), tuple(args), dict(kwargs), fake_mode)


def backend_order(start: str = "meta", *, allow_real: bool = False, error: type[TorchsmithError] = TorchsmithError) -> list[str]:
    """The backends to try, from ``start``: meta -> fake -> real; real only when allowed or asked for.

    >>> backend_order(), backend_order("fake", allow_real=True), backend_order("real")
    (['meta', 'fake'], ['fake', 'real'], ['real'])
    """
    if start not in BACKENDS:
        raise error(f"backend must be one of {', '.join(BACKENDS)}; got {start!r} (a real run uses the device the model is on)")
    return [b for b in BACKENDS[BACKENDS.index(start):] if b != "real" or allow_real or start == "real"]


def probe(
    model: nn.Module,
    call: Call,
    *,
    training: bool = False,
    allow_real: bool = True,
    error: type[TorchsmithError] = TorchsmithError,
    purpose: str = "",
) -> Any:
    """``model(*args, **kwargs)`` on shapes only, in ``training`` mode, under ``no_grad``, leaving
    ``model`` untouched; returns the output (meta or fake tensors, or real ones from a real run).

    Tries meta, then fake, then (with ``allow_real``) a real pass on the given inputs (zeros for
    inputs given by shape). When all fail, ``error`` says what was tried and to pass ``example_inputs=``.
    A model with uninitialised lazy layers is refused before anything runs.
    """
    refuse_uninitialised(model, error=error, action=purpose or "run it")
    failure: Exception | None = None
    for backend in backend_order(allow_real=allow_real):
        try:
            with torch.no_grad(), on_stand_ins(model, call, backend=backend, training=training) as run:
                return run.forward()
        except Exception as err:  # noqa: BLE001 - any failure means "try the next backend"
            logger.debug("%s probe of %s failed (%s)", backend, type(model).__name__, err)
            failure = err
    text = str(failure).strip()
    raise error(
        f"cannot run {type(model).__name__} on ({describe(call)}){' to ' + purpose if purpose else ''}: "
        f"{type(failure).__name__}: {text.splitlines()[0].rstrip('.!') if text else ''}. "
        "Pass example_inputs= with inputs its forward accepts (a tensor, a tuple of positional arguments "
        "or a dict of keyword arguments; token ids as integer tensors)."
    ) from failure
