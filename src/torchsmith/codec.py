"""Config values as data: what a layer name means, the torch.nn allow-list, and the one JSON codec.

Everything that writes a model down as data, or reads it back, goes through here: ``save_model`` /
``load_model`` (``config.json``), ``to_spec`` and the spec parser and builder, ``create_layer``, and
``replace_module`` / ``replace_head`` when they record a module made only of torch.nn layers.

- **Names.** ``ACT_LAYERS`` / ``NORM_LAYERS`` give short names to layer classes (``"relu"``,
  ``"frozen_bn"``); ``NN_LAYERS`` is the allow-list of torch.nn leaf layers whose arguments are plain
  values. :func:`layer_class` reads either kind of name; nothing else resolves and nothing is imported.
- **Values.** :func:`encode` / :func:`decode` turn config values into JSON and back: torch dtypes as
  ``{"$dtype": "float16"}``, layer classes as ``{"$layer": "relu"}`` (a short name, else the torch.nn
  name).
- **Modules.** :func:`describe_module` writes a module built only from allow-listed layers inside
  ``Sequential`` / ``ModuleList`` / ``ModuleDict`` as a spec layer (``{"Linear": {"in_features": 4,
  ...}}``), checked by rebuilding it; :func:`build_module` builds such a description.
  :func:`module_arguments` reads a module's arguments back for people (the diagram's details panel).

To allow another torch.nn layer, add its name to ``_NN_NAMES`` below and a case with non-default
arguments to ``PLAIN`` in tests/test_codec.py (which proves each argument comes back).

Nothing here changes its arguments; every function returns a new object.

    >>> problems = []
    >>> encode({"norm_layer": FrozenBatchNorm2d, "dtype": torch.float16}, problems=problems)
    {'norm_layer': {'$layer': 'frozen_bn'}, 'dtype': {'$dtype': 'float16'}}
    >>> decode({"$layer": "relu"}, problems=problems), problems
    (<class 'torch.nn.modules.activation.ReLU'>, [])
    >>> head = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    >>> describe_module(head)
    ({'Sequential': [{'Linear': {'in_features': 8, 'out_features': 4}}, 'ReLU']}, [])
    >>> build_module(describe_module(head)[0])
    Sequential(
      (0): Linear(in_features=8, out_features=4, bias=True)
      (1): ReLU()
    )
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint.formats import TORCH_DTYPES, dtype_name
from .errors import ModelConfigError, UnknownModelError, did_you_mean
from .layers import FrozenBatchNorm2d

__all__ = [
    "ACT_LAYERS",
    "NORM_LAYERS",
    "NN_LAYERS",
    "CONTAINERS",
    "get_act_layer",
    "get_norm_layer",
    "layer_class",
    "layer_name",
    "layer_names",
    "nn_layer",
    "make_layer",
    "encode",
    "decode",
    "describe_module",
    "module_arguments",
    "build_module",
    "CHILD_NAME",
    "is_child_name",
]

# names


NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "instancenorm": nn.InstanceNorm2d,
    "identity": nn.Identity,
    "none": nn.Identity,
}

ACT_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
    "none": nn.Identity,
}

# torch.nn layers a spec, a config or create_layer may name: leaf layers whose arguments are plain values.
# No containers (Sequential / ModuleList / ModuleDict are spelled out, see CONTAINERS), nothing taking a
# module, no lazy layers. To allow another layer, add its name here (and a case to tests/test_codec.py).
_NN_NAMES = """
Identity Linear Bilinear
Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d Fold Unfold
ReLU ReLU6 LeakyReLU PReLU RReLU ELU SELU CELU GELU SiLU Mish Hardswish Hardsigmoid Hardtanh Hardshrink
Softshrink Tanhshrink Sigmoid LogSigmoid Tanh Softplus Softsign Softmax Softmin LogSoftmax Softmax2d Threshold GLU
BatchNorm1d BatchNorm2d BatchNorm3d GroupNorm LayerNorm RMSNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d
LocalResponseNorm
Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout
MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d LPPool1d LPPool2d
AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d
ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d
ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d
Flatten Unflatten Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle PixelUnshuffle ChannelShuffle
Embedding RNN LSTM GRU TransformerEncoderLayer TransformerDecoderLayer CosineSimilarity PairwiseDistance
""".split()

NN_LAYERS: dict[str, type[nn.Module]] = {n: getattr(nn, n) for n in _NN_NAMES if isinstance(getattr(nn, n, None), type)}

# the containers a description (and a spec) spells out; their values are layers, not arguments
CONTAINERS: dict[str, type[nn.Module]] = {
    "Sequential": nn.Sequential,
    "ModuleList": nn.ModuleList,
    "ModuleDict": nn.ModuleDict,
}

_SHORT: dict[Any, str] = {}  # class -> its first short name
for _table in (ACT_LAYERS, NORM_LAYERS):
    for _name, _cls in _table.items():
        _SHORT.setdefault(_cls, _name)
_NN_NAME = {cls: name for name, cls in NN_LAYERS.items()}
# the one rule for a child module's name in a spec, a module written as data or a head's layer names; the
# pattern without anchors, for JSON Schema (whose "$" is the end of input) and for re.fullmatch
CHILD_NAME = r"[A-Za-z0-9_]+"
_CHILD = re.compile(CHILD_NAME)


def is_child_name(name: object) -> bool:
    """Whether ``name`` may name a child module in a spec or a module written as data: letters, digits and _
    (fullmatch: a final newline does not pass, as it would with ``$``).

    >>> is_child_name("fc1"), is_child_name("a.b"), is_child_name("fc\\n"), is_child_name(0)
    (True, False, False, False)
    """
    return isinstance(name, str) and _CHILD.fullmatch(name) is not None


def layer_names() -> list[str]:
    """Every short layer name, sorted (torch.nn names on the allow-list are accepted as well)."""
    return sorted({*ACT_LAYERS, *NORM_LAYERS})


def layer_class(name: str) -> Callable[..., nn.Module] | None:
    """The class a layer name means: a short name (any case) or an allow-listed torch.nn name; else None.

    >>> layer_class("frozen_bn").__name__, layer_class("Mish").__name__, layer_class("os")
    ('FrozenBatchNorm2d', 'Mish', None)
    """
    key = name.lower()
    return ACT_LAYERS.get(key) or NORM_LAYERS.get(key) or NN_LAYERS.get(name)


def layer_name(cls: Any) -> str | None:
    """The name :func:`layer_class` reads back as ``cls``: its short name, else its torch.nn name; else None."""
    try:
        return _SHORT.get(cls) or _NN_NAME.get(cls)
    except TypeError:  # unhashable
        return None


def _lookup(kind: str, value: str | Callable[..., nn.Module] | None, default: Callable[..., nn.Module]):
    if value is None:
        return default
    if callable(value):
        return value
    found = layer_class(value) if isinstance(value, str) else None
    if found is not None:
        return found
    table = ACT_LAYERS if kind == "act_layer" else NORM_LAYERS
    raise ModelConfigError(
        f"Unknown {kind} {value!r}.{did_you_mean(str(value), [*table, *NN_LAYERS], n=1)} Known names: "
        f"{', '.join(sorted(table))}, or a torch.nn layer on the allow-list (torchsmith.codec.NN_LAYERS); "
        f"or pass an nn.Module class."
    )


def get_norm_layer(value: str | Callable[..., nn.Module] | None, default: Callable[..., nn.Module] = nn.BatchNorm2d):
    """A norm-layer class from a name, a class, or None (-> ``default``).

    >>> get_norm_layer("frozen_bn")
    <class 'torchsmith.layers.norm.FrozenBatchNorm2d'>
    """
    return _lookup("norm_layer", value, default)


def get_act_layer(value: str | Callable[..., nn.Module] | None, default: Callable[..., nn.Module] = nn.ReLU):
    """An activation class from a name, a class, or None (-> ``default``).

    >>> get_act_layer("leaky_relu")
    <class 'torch.nn.modules.activation.LeakyReLU'>
    """
    return _lookup("act_layer", value, default)


def nn_layer(name: str) -> type[nn.Module]:
    """The allow-listed ``torch.nn`` layer class ``name`` (``"GELU"``); never an import.

    Raises:
        UnknownModelError: naming the layer, whether torch.nn has it but the allow-list does not,
            the closest allowed names, and what to do instead.
    """
    if isinstance(name, str) and name in NN_LAYERS:
        return NN_LAYERS[name]
    hint = did_you_mean(str(name), NN_LAYERS)
    found = getattr(nn, name, None) if isinstance(name, str) else None
    if isinstance(found, type) and issubclass(found, nn.Module):
        what = f"torch.nn.{name} is not on torchsmith's allow-list of torch.nn layers"
    else:
        what = f"torch.nn has no layer {name!r} on torchsmith's allow-list"
    raise UnknownModelError(
        f"{what}.{hint} The allow-list (torchsmith.codec.NN_LAYERS: {len(NN_LAYERS)} leaf layers whose arguments "
        f"are plain values) is what a config or a spec can name. For another module, build it yourself and put it "
        f"in with replace_module (save_model then refuses the model: save its weights with save_weights), or "
        f"register a builder for it with @register_model and use create_model."
    )


def make_layer(name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Build the allow-listed torch.nn layer ``name``; list arguments become tuples (kernel sizes, shapes).

    >>> make_layer("Conv2d", 3, 8, [3, 3])
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
    """
    return nn_layer(name)(*_tuples(list(args)), **_tuples(kwargs))


def _tuples(value: Any) -> Any:
    """torch.nn takes tuples where JSON has lists (kernel sizes, shapes)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


# values


def encode(value: Any, *, where: str = "", problems: list[str], bare_layers: bool = False) -> Any:
    """The JSON form of a config value; what has none is added to ``problems`` (``where=value (type)``).

    Plain values stay; tuples become lists; torch dtypes become ``{"$dtype": name}`` and layer classes
    ``{"$layer": name}``, or the bare name with ``bare_layers`` (a spec's ``norm_layer: frozen_bn``: the
    zoo's ``*_layer`` arguments take names).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        problems.append(f"{where}={value!r} (not finite)")
        return None
    if isinstance(value, (list, tuple)):
        return [encode(v, where=f"{where}[{i}]", problems=problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            problems.append(f"{where} has non-string keys {bad[:3]}")
        return {str(k): encode(v, where=f"{where}[{k!r}]", problems=problems) for k, v in value.items()}
    if isinstance(value, torch.dtype) and dtype_name(value) in TORCH_DTYPES:
        return {"$dtype": dtype_name(value)}
    name = layer_name(value)
    if name is not None:
        return name if bare_layers else {"$layer": name}
    problems.append(f"{where}={value!r} ({type(value).__name__})")
    return None


def decode(value: Any, *, where: str = "", problems: list[str]) -> Any:
    """A config value from its JSON form (the inverse of :func:`encode`); unknown names go to ``problems``."""
    if isinstance(value, list):
        return [decode(v, where=f"{where}[{i}]", problems=problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if set(value) == {"$layer"}:
            name = value["$layer"]
            cls = layer_class(name) if isinstance(name, str) else None
            if cls is None:
                problems.append(f"{where}: unknown layer name {name!r}")
            return cls
        if set(value) == {"$dtype"}:
            name = value["$dtype"]
            dtype = TORCH_DTYPES.get(name) if isinstance(name, str) else None
            if dtype is None:
                problems.append(f"{where}: unknown dtype {name!r:.80}")
            return dtype
        return {k: decode(v, where=f"{where}[{k!r}]", problems=problems) for k, v in value.items()}
    return value


# modules as data


def describe_module(module: nn.Module, *, path: str = "") -> tuple[Any, list[str]]:
    """``(description, [])`` for a module built only from allow-listed layers and containers, else
    ``(None, problems)``, each problem naming its path.

    A leaf's arguments are read back from its attributes (those equal to the default are left out); the
    description is then built on the meta device and must give the same ``repr``, state-dict shapes and
    plain attributes, so an argument that cannot be read back refuses rather than drifts. The form is a spec layer:
    ``torchsmith.build({"model": description})`` reads it (its ModuleList / ModuleDict being the spec's
    runnable ones); :func:`build_module` builds exactly these classes.
    """
    problems: list[str] = []
    description = _describe(module, path, problems)
    if problems:
        return None, problems
    try:
        with torch.device("meta"):
            rebuilt = build_module(description)
    except (ModelConfigError, UnknownModelError) as e:
        return None, [f"{path or '<module>'}: its arguments do not rebuild it ({e})"]
    differs = _first_difference(_fingerprint(rebuilt), _fingerprint(module))
    if differs:
        return None, [f"{path or '<module>'}: rebuilt from the arguments read back, {differs}"]
    return description, []


def _first_difference(rebuilt: tuple, module: tuple) -> str:
    (r_repr, r_shapes, r_attrs), (m_repr, m_shapes, m_attrs) = rebuilt, module
    if r_repr != m_repr:
        return f"it is {r_repr}, not {m_repr}"
    if r_shapes != m_shapes:
        return f"its tensors are {r_shapes[:4]}, not {m_shapes[:4]}"
    for (name, got), (_, want) in zip(r_attrs, m_attrs):
        for key in dict.fromkeys([*want, *got]):
            if got.get(key, "(none)") != want.get(key, "(none)"):
                return f"{name + '.' if name else ''}{key} is {got.get(key, '(none)')!r}, not {want.get(key, '(none)')!r}"
    return ""


def _fingerprint(module: nn.Module) -> tuple[str, list[tuple[str, tuple[int, ...]]], list[tuple[str, dict[str, Any]]]]:
    """What a rebuild must reproduce: the ``repr``, the state-dict shapes, and every module's plain attributes
    (an argument kept under another name, ``PairwiseDistance(p=1)`` as ``norm``, shows in neither of the others)."""
    shapes = [(k, tuple(v.shape)) for k, v in module.state_dict().items()]
    plain = [
        (name, {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v) is not _UNPLAIN})
        for name, m in module.named_modules()
    ]  # fmt: skip
    return repr(module), shapes, plain


def _describe(module: nn.Module, path: str, problems: list[str]) -> Any:
    where = path or "<module>"
    cls = type(module)
    for kind, container in CONTAINERS.items():
        if cls is container:
            return _describe_children(kind, module, path, problems)
    if _NN_NAME.get(cls) is None:
        subclass = " (a subclass of an allowed one)" if issubclass(cls, tuple(NN_LAYERS.values())) else ""
        problems.append(f"{where}: {cls.__module__}.{cls.__qualname__} is not a torch.nn layer on the allow-list{subclass}")
        return None
    args = _arguments(module, where, problems)
    name = _NN_NAME[cls]
    return {name: args} if args else name


def _describe_children(kind: str, module: nn.Module, path: str, problems: list[str]) -> Any:
    where = path or "<module>"
    children = list(module.named_children())
    if not children:
        problems.append(f"{where}: an empty {kind} (use nn.Identity())")
        return None
    own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
    if own:
        problems.append(f"{where}: the {kind} holds tensors of its own {own[:3]}")
    for name, _ in children:
        if not is_child_name(name):
            problems.append(f"{where}: the child name {name!r} is not letters, digits and _")
    items = [(n, _describe(c, f"{path}.{n}" if path else n, problems)) for n, c in children]
    numbered = [n for n, _ in items] == [str(i) for i in range(len(items))]
    if kind == "ModuleList" or (kind == "Sequential" and numbered):
        return {kind: [d for _, d in items]}
    return {kind: {n: d for n, d in items}}


@functools.lru_cache(maxsize=1024)
def _constructor_parameters(cls: type) -> tuple[inspect.Parameter, ...]:
    """The parameters of ``cls.__init__`` an instance may keep as attributes (not ``*args``, ``device``, ``dtype``)."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):  # a constructor without a signature (a C extension)
        return ()
    return tuple(p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                 and p.name not in ("device", "dtype") and not p.name.startswith("_"))


def _read_back(module: nn.Module) -> Iterator[tuple[inspect.Parameter, Any]]:
    """Each constructor parameter of ``module``'s class with the attribute of the same name (``_MISSING`` where
    there is none); a boolean parameter held as a tensor or None (``bias=True``) as True / False."""
    for p in _constructor_parameters(type(module)):
        try:
            value = getattr(module, p.name, _MISSING)
        except Exception:  # a property that raises is not an argument we can read
            value = _MISSING
        if isinstance(p.default, bool) and (value is None or isinstance(value, Tensor)):
            value = value is not None  # bias=True: the attribute is the bias itself, or None
        yield p, value


def module_arguments(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments of ``module`` that read back from its attributes as plain values (defaults
    included); those it keeps under another name, or as objects, are left out. For people: the diagram's details.

    >>> module_arguments(nn.Conv2d(3, 8, 3, stride=2, bias=False))["stride"], module_arguments(nn.Linear(4, 2))
    ([2, 2], {'in_features': 4, 'out_features': 2, 'bias': True})
    """
    out: dict[str, Any] = {}
    for p, value in _read_back(module):
        plain = _plain(value) if value is not _MISSING else _UNPLAIN
        if plain is not _UNPLAIN:
            out[p.name] = plain
    return out


def _arguments(module: nn.Module, where: str, problems: list[str]) -> dict[str, Any]:
    """The constructor's keyword arguments read back from ``module``'s attributes, defaults left out."""
    out: dict[str, Any] = {}
    for p, value in _read_back(module):
        if value is _MISSING:
            if p.default is p.empty:
                problems.append(f"{where}: {type(module).__name__}'s argument {p.name!r} cannot be read back")
            continue
        plain = _plain(value)
        if plain is _UNPLAIN:
            problems.append(f"{where}: {type(module).__name__}'s argument {p.name}={value!r} is not a plain value")
        elif p.default is p.empty or plain != _plain(p.default) or type(plain) is not type(_plain(p.default)):
            out[p.name] = plain
    return out


_UNPLAIN = object()
_MISSING = object()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)) or isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (list, tuple)):  # tuples and torch.Size
        items = [_plain(v) for v in value]
        return _UNPLAIN if any(v is _UNPLAIN for v in items) else items
    return _UNPLAIN


def build_module(description: Any, *, path: str = "") -> nn.Module:
    """The module a :func:`describe_module` description holds, on the current default device.

    Raises:
        ModelConfigError: the description is malformed (naming the path), or a layer refuses its arguments.
        UnknownModelError: a layer that is not on the allow-list.
    """
    where = path or "<module>"
    if isinstance(description, str):
        name, args = description, {}
    elif isinstance(description, dict) and len(description) == 1:
        name, args = next(iter(description.items()))
    else:
        raise ModelConfigError(f"{where}: expected a layer name or {{Name: arguments}}, got {description!r:.200}")
    if name in CONTAINERS:
        return _build_container(name, args, path)
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args) or {"device", "dtype"} & set(args):
        raise ModelConfigError(f"{where}.{name}: expected {{argument: value}} (no device or dtype), got {args!r:.200}")
    cls = nn_layer(name)
    try:
        return cls(**_tuples(args))
    except Exception as e:
        raise ModelConfigError(f"{where}: {name}({args!r:.200}) failed: {type(e).__name__}: {e}") from e


def _build_container(kind: str, items: Any, path: str) -> nn.Module:
    where = f"{path or '<module>'}.{kind}"
    if isinstance(items, list) and kind != "ModuleDict":
        named = [(str(i), v) for i, v in enumerate(items)]
    elif isinstance(items, dict) and kind != "ModuleList":
        named = list(items.items())
    else:
        expected = "a list" if kind == "ModuleList" else "a mapping"
        raise ModelConfigError(f"{where}: expected {expected} of layers, got {items!r:.200}")
    bad = [n for n, _ in named if not is_child_name(n)]
    if not named:
        raise ModelConfigError(f"{where}: no layers")
    if bad:
        raise ModelConfigError(f"{where}: child names {bad[:3]} are not letters, digits and _")
    children = OrderedDict((n, build_module(v, path=f"{path}.{n}" if path else n)) for n, v in named)
    if kind == "ModuleList":
        return nn.ModuleList(children.values())
    if kind == "ModuleDict":
        return nn.ModuleDict(children)
    return nn.Sequential(children)
