"""The key and value upgrades modules declare for older checkpoints, run on the key plan.

``load_state_dict`` lets each module rewrite the state dict before it reads its own tensors: a class's
``_load_from_state_dict`` (torchvision's ``FeaturePyramidNetwork`` renames ``inner_blocks.0.weight`` to
``inner_blocks.0.0.weight``; BatchNorm adds ``num_batches_tracked`` to files older than it, by the ``version``
in the state dict's metadata) and load-state-dict pre-hooks (``register_load_state_dict_pre_hook``,
``weight_norm``'s ``weight_g`` / ``weight_v``). :func:`upgrade` walks the model as ``load_state_dict`` does,
handing each module a copy of the keys under it, but the values are stand-ins: meta tensors with the file's
shapes and dtypes, so no data is read. A module that computes new values from old ones (a meta tensor comes
back that is no stand-in, or a stand-in changed in place) is run again on the real tensors under it, read once.
Nothing here changes the model: each module runs as a twin holding its own tables of tensors, loaded with
``assign`` (the twin's entries are rebound, the module's are not), swap-tensors mode off. Every function
returns new objects.

    >>> class Renamed(nn.Module):  # called its weight 'kernel' before version 2
    ...     _version = 2
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.ones(2))
    ...     def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
    ...         if prefix + "kernel" in state_dict:
    ...             state_dict[prefix + "weight"] = state_dict.pop(prefix + "kernel")
    ...         super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)
    >>> model = Renamed()
    >>> plan = plan_keys(model, ["kernel"], model.state_dict(), prefix="auto", rename=None,
    ...                  spec=lambda key: ((2,), torch.float32), read=None)
    >>> plan.pairs, plan.upgraded[0].describe()
    ({'weight': 'kernel'}, 'kernel -> weight  (by Renamed)')
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError
from .keys import WRAPPER_SEGMENTS, Rename, apply_prefix, match_keys, rename_keys

__all__ = ["Upgrade", "KeyPlan", "plan_keys", "declaring_modules", "upgrade"]

Value = str | torch.Tensor  # a file key (read later) or a tensor to write


@dataclass(frozen=True)
class Upgrade:
    """One change a module made to the checkpoint's keys while loading (``LoadReport.upgraded``).

    ``change``: ``"renamed"`` (``key`` -> ``new_key``), ``"added"`` (``new_key`` given a value the file lacks,
    e.g. BatchNorm's ``num_batches_tracked``), ``"removed"`` (``key`` dropped), ``"computed"`` (``new_key``
    computed from the file's tensors: read, then run through the module's own code) or ``"assumed"`` (the file
    names no version and the module refuses to load without one, as torchvision's MNASNet does: it is read as the
    model's own version, ``key``).
    """

    module: str
    cls: str
    change: str
    key: str | None
    new_key: str | None

    def describe(self) -> str:
        where = f"{self.cls} at {self.module!r}" if self.module else self.cls
        what = {"renamed": f"{self.key} -> {self.new_key}", "added": f"{self.new_key} added",
                "removed": f"{self.key} dropped", "computed": f"{self.new_key} computed from the file",
                "assumed": f"no version in the file: read as the model's {self.key}"}[self.change]  # fmt: skip
        return f"{what}  (by {where})"


@dataclass
class Upgraded:
    """What the walk found for the keys under the modules that declare upgrades."""

    pairs: dict[str, Value] = field(default_factory=dict)  # model key -> file key or tensor
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # file keys (or a module's own new names)
    scope: list[str] = field(default_factory=list)  # module paths walked (keys under them are decided here)
    changes: list[Upgrade] = field(default_factory=list)


@dataclass
class KeyPlan:
    """Which file key (or tensor) fills each model key, after ``rename=``, prefixes and the modules' upgrades."""

    pairs: dict[str, Value] = field(default_factory=dict)  # model key -> file key or tensor, in model order
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)  # prefix -> keys it was removed from
    added: dict[str, int] = field(default_factory=dict)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # by rename=: (file key, new name)
    dropped: list[str] = field(default_factory=list)  # file keys rename= dropped (a callable returned None)
    upgraded: list[Upgrade] = field(default_factory=list)


def plan_keys(
    model: nn.Module,
    file_keys: list[str],
    targets: Mapping[str, torch.Tensor],
    *,
    prefix: str | None,
    rename: Rename | None,
    spec: Callable[[str], tuple[tuple[int, ...], torch.dtype]],
    read: Callable[[str], torch.Tensor],
    metadata: Mapping[str, Mapping] | None = None,
) -> KeyPlan:
    """Pair ``targets`` (the model's state dict) with ``file_keys``: ``rename``, then prefixes, then the upgrades
    the model's modules declare (:func:`upgrade`); nothing is read unless a module computes values."""
    lazy = [k for k, t in targets.items() if torch.nn.parameter.is_lazy(t)]
    if lazy:  # their shapes are unknown until the first forward
        raise CheckpointError(f"load_weights: {lazy[:10]} belong to lazy layers that are not initialised yet; "
                              "run one forward first (model(example_input)) to initialise them, then load.")
    names = rename_keys(file_keys, rename)  # file key -> name
    file_of = {n: k for k, n in names.items()}
    match = match_keys(list(names.values()), targets, prefix=prefix)
    plan = KeyPlan(
        pairs={mk: file_of[n] for mk, n in match.pairs.items()}, missing=list(match.missing),
        unexpected=[file_of[n] for n in match.unexpected], removed=dict(match.removed), added=dict(match.added),
        renamed=[(k, n) for k, n in names.items() if k != n], dropped=[k for k in file_keys if k not in names],
    )  # fmt: skip
    declaring = declaring_modules(model)
    if not declaring:
        return plan
    place = placer(model) if prefix is not None else (lambda k: k)
    prefixed = apply_prefix(list(names.values()), list(targets), prefix)[0]
    entries = dict(plan.pairs)  # model key -> file key, then the unmatched keys where they would belong
    for fk in plan.unexpected:
        entries.setdefault(place(prefixed[names[fk]]), fk)
    up = upgrade(model, declaring=declaring, entries=entries, spec=spec, read=read, metadata=metadata, own=targets.values())
    if not up.changes:
        return plan
    tops = set(up.scope)

    def in_scope(key: str) -> bool:
        return top_of(key.rpartition(".")[0], tops) is not None

    placed_at = {fk: k for k, fk in entries.items()}
    pairs, missing = {}, []
    for mk in targets:
        if mk in up.pairs:
            pairs[mk] = up.pairs[mk]
        elif not in_scope(mk) and mk in plan.pairs:
            pairs[mk] = plan.pairs[mk]
        else:
            missing.append(mk)
    plan.pairs, plan.missing, plan.upgraded = pairs, missing, up.changes
    plan.unexpected = [fk for fk in plan.unexpected if not in_scope(placed_at.get(fk, fk))] + up.unexpected
    return plan


# finding


def _declares(module: nn.Module) -> bool:
    return type(module)._load_from_state_dict is not nn.Module._load_from_state_dict or bool(module._load_state_dict_pre_hooks)


def declaring_modules(model: nn.Module) -> list[str]:
    """Paths of the modules that change a state dict before loading it (top-most first); empty for most models."""
    return [path for path, m in model.named_modules(remove_duplicate=False) if _declares(m)]


def _canonical_path(path: str) -> str:
    return ".".join(p for p in path.split(".") if p and p not in WRAPPER_SEGMENTS)


def placer(model: nn.Module) -> Callable[[str], str]:
    """A key the model does not have, put under the model's deepest module whose path (wrappers aside) it starts with."""
    by_canon: dict[str, str] = {}
    for path, _ in model.named_modules(remove_duplicate=False):
        by_canon[_canonical_path(path)] = path  # deeper paths win: DDP's 'module' over the root

    def place(key: str) -> str:
        parts = _canonical_path(key).split(".")
        for i in range(len(parts) - 1, -1, -1):
            path = by_canon.get(".".join(parts[:i]))
            if path is not None:
                return ".".join(([path] if path else []) + parts[i:])
        return key

    return place


def top_of(path: str, paths: set[str]) -> str | None:
    """The shortest of ``paths`` that is ``path`` or one of its ancestors ("" is the root), or None."""
    if "" in paths:
        return ""
    parts = path.split(".") if path else []
    for i in range(1, len(parts) + 1):
        candidate = ".".join(parts[:i])
        if candidate in paths:
            return candidate
    return None


# running


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No swap-tensors (it would swap a stand-in into the model), no warnings about copies into meta tensors."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def _shadow(module: nn.Module) -> nn.Module:
    """The module with its own tables of tensors: loaded with ``assign``, it rebinds its entries, not the module's."""
    twin = object.__new__(type(module))
    twin.__dict__.update(module.__dict__)
    twin.__dict__["_parameters"] = dict(module._parameters)
    twin.__dict__["_buffers"] = dict(module._buffers)
    return twin


def _own_keys(module: nn.Module, prefix: str) -> list[str]:
    persistent = [k for k, v in module._buffers.items() if v is not None and k not in module._non_persistent_buffers_set]
    return [prefix + k for k, v in module._parameters.items() if v is not None] + [prefix + k for k in persistent]


def upgrade(
    model: nn.Module,
    *,
    declaring: list[str],
    entries: dict[str, str],
    spec: Callable[[str], tuple[tuple[int, ...], torch.dtype]],
    read: Callable[[str], torch.Tensor],
    metadata: Mapping[str, Mapping] | None,
    own: Iterable[torch.Tensor] = (),
) -> Upgraded:
    """Walk the subtrees of the ``declaring`` modules as ``load_state_dict`` would, on stand-ins.

    ``entries``: model-namespace key -> file key, for every file key (placed under the model's modules);
    ``spec(file_key)``: its shape and dtype; ``read(file_key)``: its tensor (only for modules that compute values);
    ``metadata``: the file's per-module metadata (``state_dict._metadata``: ``{"version": 2}``), or None;
    ``own``: the model's state-dict tensors (a module may hand one back: BatchNorm keeps its count).
    """
    result = Upgraded()
    declared = set(declaring)
    tops = [p for p in declaring if top_of(p, declared) == p]
    result.scope = tops
    canon_meta = {_canonical_path(k): dict(v) for k, v in (metadata or {}).items() if isinstance(v, Mapping)}
    origin: dict[int, str] = {}  # stand-in (or tensor read for a module) -> its file key
    stand_ins: set[int] = set()
    own = {id(t) for t in own}
    reported: set[tuple] = set()

    def stand_in(fk: str) -> torch.Tensor:
        shape, dtype = spec(fk)
        t = torch.empty(shape, dtype=dtype, device="meta")
        origin[id(t)] = fk
        stand_ins.add(id(t))
        return t

    def note(path: str, module: nn.Module, change: str, key: str | None, new_key: str | None) -> None:
        if (change, key, new_key) not in reported:
            reported.add((change, key, new_key))
            result.changes.append(Upgrade(path, type(module).__name__, change, key, new_key))

    def call(path: str, module: nn.Module, local: dict[str, torch.Tensor], prefix: str, meta: dict) -> dict:
        """The module's hook on ``local`` (in place); the metadata it ran with. A file that names no version for a
        module that will not load without one is read as the model's own version (the layout it was saved in)."""
        trial = dict(local)
        try:
            _shadow(module)._load_from_state_dict(trial, prefix, dict(meta), True, [], [], [])
        except Exception as error:
            where = f"{type(module).__name__} at {path!r}" if path else type(module).__name__
            if "version" in meta:
                raise CheckpointError(f"load_weights: {where} refused the file's keys under {prefix!r} (version "
                                      f"{meta['version']}): {error}. Load the file with the model's own load_state_dict "
                                      "to see the module's own error, or pass rename= to give the keys the layout it "
                                      "expects.") from error  # fmt: skip
            meta = {**meta, "version": module._version}
            trial = dict(local)
            try:
                _shadow(module)._load_from_state_dict(trial, prefix, dict(meta), True, [], [], [])
            except Exception as again:
                raise CheckpointError(f"load_weights: {where} refused the file's keys under {prefix!r}, with no version "
                                      f"and with the model's ({module._version}): {again}. Load the file with the "
                                      "model's own load_state_dict to see the module's own error, or pass rename= to give "
                                      "the keys the layout it expects.") from again  # fmt: skip
            note(path, module, "assumed", f"version {module._version}", None)
        local.clear()
        local.update(trial)
        return meta

    def run(path: str, module: nn.Module, local: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        before = dict(local)
        meta = {**canon_meta.get(_canonical_path(path), {}), "assign_to_params_buffers": True}
        meta = call(path, module, local, prefix, meta)
        computed = any(
            isinstance(v, torch.Tensor) and v.is_meta and id(v) not in origin and id(v) not in own for v in local.values()
        ) or any(v._version for v in before.values() if id(v) in stand_ins)  # a new meta value, or a stand-in changed in place
        if computed:  # run it again on the real tensors, read once
            local = {}
            for k, v in before.items():
                local[k] = read(origin[id(v)]) if id(v) in stand_ins else v
                if id(v) in stand_ins:
                    origin[id(local[k])] = origin[id(v)]
            reals = dict(local)
            _shadow(module)._load_from_state_dict(local, prefix, dict(meta), True, [], [], [])
            before = reals
        changes(path, module, before, local, computed)
        return local

    def changes(path: str, module: nn.Module, before: dict, after: dict, computed: bool) -> None:
        """Name each key the module renamed, added, dropped or recomputed (file keys where the data is the file's)."""
        was = {origin[id(v)]: k for k, v in before.items() if id(v) in origin}
        now = set()
        for k, v in after.items():
            fk = origin.get(id(v))
            if fk is not None:
                now.add(fk)
                if was.get(fk, k) != k:
                    note(path, module, "renamed", fk, k)
            elif before.get(k) is not v and isinstance(v, torch.Tensor):
                note(path, module, "computed" if computed or k in before else "added", None, k)
        for fk in was.keys() - now:
            note(path, module, "removed", fk, None)

    def walk(path: str, module: nn.Module, local: dict[str, torch.Tensor]) -> None:
        prefix = f"{path}." if path else ""
        if _declares(module):
            local = run(path, module, local, prefix)
        own_keys = _own_keys(module, prefix)
        for key in own_keys:
            v = local.get(key)
            if isinstance(v, torch.Tensor):
                result.pairs[key] = origin[id(v)] if id(v) in stand_ins else v
            else:
                result.missing.append(key)
        own_names = {k[len(prefix):] for k in own_keys}
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in local.items():  # one pass: each child's keys, and what no one here takes (as torch's strict check)
            rest = key[len(prefix):]
            first, dot, _ = rest.partition(".")
            if dot and first in module._modules:
                groups.setdefault(first, {})[key] = v
            elif (dot or first not in own_names) and rest != "_extra_state":
                result.unexpected.append(origin.get(id(v), key))
        for name, child in module._modules.items():
            if child is not None:
                walk(f"{prefix}{name}", child, groups.get(name, {}))

    with _quiet_loading():
        modules = dict(model.named_modules(remove_duplicate=False))
        under: dict[str, dict[str, torch.Tensor]] = {top: {} for top in tops}
        for k, fk in entries.items():
            top = top_of(k.rpartition(".")[0], declared) if "." in k else ("" if "" in declared else None)
            if top is not None:
                under[top][k] = stand_in(fk)
        for top in tops:
            walk(top, modules[top], under[top])
    return result
