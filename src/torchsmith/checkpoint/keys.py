"""Matching a checkpoint's keys to a model's: renames, wrapper prefixes, user prefixes, training-loop dicts.

``module.`` (DataParallel / DistributedDataParallel) and ``_orig_mod.``
(``torch.compile``) are path segments a wrapper adds; they are recognised in
any nesting and repetition, on either side (file or model).

    >>> strip_wrappers("module._orig_mod.layer1.0.conv1.weight")
    ('layer1.0.conv1.weight', ('module.', '_orig_mod.'))
    >>> find_state_dict({"epoch": 3, "model_state_dict": {"w": torch.ones(1)}})[1]
    'model_state_dict'
    >>> rename_keys(["stem.conv.weight", "fc.bias"], {"^stem[.]": "conv1.", "^fc[.]": "head."})
    {'stem.conv.weight': 'conv1.conv.weight', 'fc.bias': 'head.bias'}
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..errors import CheckpointError

__all__ = [
    "WRAPPER_SEGMENTS", "STATE_DICT_KEYS", "Rename", "strip_wrappers", "find_state_dict", "rename_keys", "apply_prefix",
    "match_keys", "KeyMatch", "explaining_prefix", "LayoutGuess", "register_layout_guesser", "guess_layout",
]

Rename = Mapping[str, str] | Callable[[str], "str | None"]

WRAPPER_SEGMENTS = ("module", "_orig_mod")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def strip_wrappers(key: str) -> tuple[str, tuple[str, ...]]:
    """``key`` without wrapper segments, and the segments removed (with their dots)."""
    parts = key.split(".")
    kept = [p for p in parts[:-1] if p not in WRAPPER_SEGMENTS] + parts[-1:]
    removed = tuple(f"{p}." for p in parts[:-1] if p in WRAPPER_SEGMENTS)
    return ".".join(kept), removed


def rename_keys(keys: Iterable[str], rename: Rename | None) -> dict[str, str]:
    """``file key -> new name`` for the keys ``rename`` keeps (a callable returning None drops a key).

    ``rename`` is a mapping of regular expressions to replacements, applied in order with ``re.sub``
    (``{"^encoder[.]": "backbone.", "[.]gamma$": ".weight"}``), or a callable ``key -> key``: timm's
    ``checkpoint_filter_fn`` and Hugging Face's key renames, before matching.

    Raises:
        CheckpointError: a pattern that is not a regular expression, a callable returning a non-string, or two
            keys renamed to the same name (naming both).
    """
    keys = list(keys)
    if rename is None:
        return {k: k for k in keys}
    if isinstance(rename, Mapping):
        rules = []
        for pattern, repl in rename.items():
            try:
                rules.append((re.compile(pattern), repl))
            except (re.error, TypeError) as e:
                raise CheckpointError(f"rename: {pattern!r} is not a regular expression ({e}). Escape dots as '[.]' or '\\\\.'.") from e

        def apply(key: str) -> str | None:
            for rx, repl in rules:
                key = rx.sub(repl, key)
            return key
    elif callable(rename):
        apply = rename
    else:
        raise CheckpointError(f"rename= takes a mapping of regular expression -> replacement or a callable key -> key, got {type(rename).__name__}.")
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for key in keys:
        try:
            new = apply(key)
        except re.error as e:
            raise CheckpointError(f"rename: the replacement for {key!r} failed ({e}).") from e
        if new is None:
            continue
        if not isinstance(new, str) or not new:
            raise CheckpointError(f"rename turned {key!r} into {new!r}; it must return a non-empty string, or None to drop the key.")
        if new in owner:
            raise CheckpointError(
                f"rename maps both {owner[new]!r} and {key!r} to {new!r}; two tensors cannot share a name. "
                "Make the patterns more specific (anchor them with ^ and $)."
            )
        owner[new] = key
        out[key] = new
    return out


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: object, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """The tensors in a loaded torch object: ``(state_dict, key it was under or None, other top-level keys)``.

    A mapping of tensors is taken as is (non-tensor entries such as
    ``_extra_state`` are dropped); a training-loop dict is searched under
    ``state_dict``, ``model_state_dict`` and ``model``, in that order.

    Raises:
        CheckpointError: naming the top-level keys found when no weights are recognisable.
    """
    if isinstance(obj, Mapping):
        for k in STATE_DICT_KEYS:
            inner = obj.get(k)
            if _is_state_dict(inner) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
                return dict(inner), k, sorted(str(x) for x in obj if x != k)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors, None, sorted(str(k) for k in obj if not isinstance(obj[k], torch.Tensor))
        found = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:10])
        raise CheckpointError(
            f"No weights found in {where}: expected a mapping of tensors, or one under "
            f"{' / '.join(map(repr, STATE_DICT_KEYS))}; found keys {found}. "
            f"Load it with read_weights / torch.load and pass the right dict to load_weights."
        )
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict()), None, []
    if getattr(obj, "__name__", None) == "state_dict" and isinstance(getattr(obj, "__self__", None), torch.nn.Module):
        return dict(obj()), None, []  # torch.save(model.state_dict, path), loaded trusted: the call it lacked
    raise CheckpointError(
        f"No weights found in {where}: it holds a {type(obj).__name__}, expected a mapping of tensors."
    )


@dataclass
class KeyMatch:
    """How file keys map onto model keys."""

    pairs: dict[str, str] = field(default_factory=dict)  # model key -> file key
    missing: list[str] = field(default_factory=list)  # model keys with no file key
    unexpected: list[str] = field(default_factory=list)  # file keys matching no model key
    removed: Counter = field(default_factory=Counter)  # prefix -> keys it was removed from
    added: Counter = field(default_factory=Counter)  # prefix -> keys it was added to


def _user_prefix_direction(file_keys: list[str], model_keys: list[str], prefix: str) -> str:
    """'strip' when the file carries ``prefix`` the model lacks, 'add' for the reverse, '' otherwise."""
    f_has = sum(k.startswith(prefix) for k in file_keys)
    m_has = sum(k.startswith(prefix) for k in model_keys)
    if f_has > m_has:
        return "strip"
    if m_has > f_has:
        return "add"
    return ""


def apply_prefix(file_keys: list[str], model_keys: list[str], prefix: str | None) -> tuple[dict[str, str], Counter, Counter]:
    """``file key -> key`` after a user prefix (``"backbone."``) is stripped or added, whichever fits; and the
    counts removed / added. Wrapper segments and ``None`` / ``"auto"`` leave keys as they are."""
    removed, added = Counter(), Counter()
    if prefix in (None, "auto", ""):
        return {k: k for k in file_keys}, removed, added
    direction = _user_prefix_direction(file_keys, model_keys, prefix)
    if direction == "strip":
        removed[prefix] = sum(k.startswith(prefix) for k in file_keys)
        return {k: k[len(prefix) :] if k.startswith(prefix) else k for k in file_keys}, removed, added
    if direction == "add":
        added[prefix] = len(file_keys)
        return {k: prefix + k for k in file_keys}, removed, added
    return {k: k for k in file_keys}, removed, added


def _canonical(keys: Iterable[str]) -> dict[str, tuple[str, tuple[str, ...]]] | None:
    """key -> (stripped key, segments); None when stripping would merge two keys."""
    out = {k: strip_wrappers(k) for k in keys}
    if len({v[0] for v in out.values()}) != len(out):
        return None
    return out


def match_keys(file_keys: Iterable[str], model_keys: Iterable[str], *, prefix: str | None = "auto") -> KeyMatch:
    """Pair model keys with file keys.

    ``prefix="auto"`` removes or adds wrapper segments as needed; ``None``
    matches keys exactly; any other string is a user prefix (``"backbone."``)
    stripped from file keys or added to them, whichever fits, before the
    wrapper matching.
    """
    file_keys, model_keys = list(file_keys), list(model_keys)
    if prefix in (None, "auto", "") and len(file_keys) == len(model_keys) and set(file_keys) == set(model_keys):
        return KeyMatch(pairs=dict(zip(model_keys, model_keys)))  # the same keys: the common case, at C speed
    result = KeyMatch()
    renamed, result.removed, result.added = apply_prefix(file_keys, model_keys, prefix)  # file key -> key after it
    by_name = {v: k for k, v in renamed.items()}
    if prefix is None or set(model_keys) <= set(by_name) or not (
        (f_can := _canonical(renamed.values())) and (m_can := _canonical(model_keys))
    ):
        for mk in model_keys:
            if mk in by_name:
                result.pairs[mk] = by_name[mk]
            else:
                result.missing.append(mk)
    else:
        file_by_canon = {canon: (name, segs) for name, (canon, segs) in f_can.items()}
        for mk in model_keys:
            canon, m_segs = m_can[mk]
            hit = file_by_canon.get(canon)
            if hit is None:
                result.missing.append(mk)
                continue
            name, f_segs = hit
            result.pairs[mk] = by_name[name]
            for seg in set(f_segs) - set(m_segs):
                result.removed[seg] += 1
            for seg in set(m_segs) - set(f_segs):
                result.added[seg] += 1
    used = set(result.pairs.values())
    result.unexpected = [k for k in file_keys if k not in used]
    return result


# explaining a mismatch


def _prefixes_to(keys: Iterable[str], targets: set[str]) -> Counter:
    """For each key, every leading run of segments whose removal leaves a key in ``targets``: prefix -> count."""
    found: Counter = Counter()
    for key in keys:
        at = key.find(".")
        while at != -1:
            if key[at + 1 :] in targets:
                found[key[: at + 1]] += 1
            at = key.find(".", at + 1)
    return found


def explaining_prefix(missing: Iterable[str], unexpected: Iterable[str]) -> tuple[str, int] | None:
    """A prefix that, stripped from the file's keys or added to them, would find at least half the missing
    keys: ``(prefix, keys it finds)``; None when no prefix explains the mismatch (a different model).

    >>> explaining_prefix(["layer1.w", "fc.w"], ["backbone.layer1.w", "backbone.fc.w", "head.w"])
    ('backbone.', 2)
    >>> explaining_prefix(["backbone.layer1.w"], ["layer1.w"])
    ('backbone.', 1)
    >>> explaining_prefix(["layer1.w", "layer2.w"], ["conv.w", "bn.w"]) is None
    True
    """
    missing, unexpected = list(missing), list(unexpected)
    if not missing or not unexpected:
        return None
    counts = _prefixes_to(unexpected, set(missing)) + _prefixes_to(missing, set(unexpected))
    if not counts:
        return None
    prefix, n = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return (prefix, n) if 2 * n >= len(missing) else None


class LayoutGuess(NamedTuple):
    """The model a checkpoint's keys were saved from: its name, and what differs (``""``: nothing)."""

    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name!r}{self.detail}"


LayoutGuesser = Callable[[Mapping[str, tuple[int, ...]]], "LayoutGuess | None"]
_GUESSERS: list[LayoutGuesser] = []


def register_layout_guesser(fn: LayoutGuesser) -> LayoutGuesser:
    """Register ``fn(shapes) -> LayoutGuess or None``: which model a checkpoint's keys (``{key: shape}``, wrapper
    segments removed) were saved from, for the message of a load that does not fit. The checkpoint code knows no
    models; the registry-aware layer (:mod:`torchsmith.models_io`) registers one that compares the registered
    models' layouts. Returns ``fn`` (a decorator)."""
    if fn not in _GUESSERS:
        _GUESSERS.append(fn)
    return fn


def guess_layout(shapes: Mapping[str, tuple[int, ...]]) -> LayoutGuess | None:
    """What the registered guessers say the keys belong to (the last registered first), or None."""
    canonical = {strip_wrappers(k)[0]: tuple(v) for k, v in shapes.items()}
    for guess in reversed(_GUESSERS):
        found = guess(canonical)
        if found:
            return found
    return None
