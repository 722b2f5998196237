"""Reading a spec: a dict, YAML or JSON text, or a path, into plain JSON values.

Only the file a caller names is opened; YAML is read with ``yaml.safe_load`` (no tags that build
objects); the result is copied into plain dicts, lists, strings, numbers, booleans and nulls, refusing
cycles, very deep nesting and alias bombs.

    >>> read_spec("layers: [ReLU, {Dropout: 0.5}]")
    {'layers': ['ReLU', {'Dropout': 0.5}]}
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..checkpoint import safe_json
from ..errors import SpecError

__all__ = ["read_spec", "MAX_NODES", "MAX_DEPTH"]

MAX_NODES = 100_000  # values in one spec (after YAML aliases are expanded)
MAX_DEPTH = 64
MAX_BYTES = 16 * 2**20

def read_spec(spec: Any) -> dict[str, Any]:
    """The spec as a plain dict (a fresh copy).

    A ``str`` holding a mapping is spec text (YAML or JSON); any other ``str``, or an ``os.PathLike``,
    is the path of a ``.yaml`` / ``.yml`` / ``.json`` file.

    Raises:
        SpecError: unreadable file, bad YAML/JSON, not a mapping, or values that are not plain data.
    """
    if isinstance(spec, dict):
        doc, where = spec, "spec"
    elif isinstance(spec, os.PathLike):
        doc, where = _parse(_read_file(Path(spec)), str(spec)), str(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        doc = _parse(spec, "spec text") if ("\n" in text or text.startswith(("{", "-", "#")) or ": " in text) else None
        if isinstance(doc, dict):
            where = "spec text"
        elif doc is None and text:
            doc, where = _parse(_read_file(Path(spec)), spec), spec
        else:
            raise SpecError(f"The spec text holds a {type(doc).__name__}, not a mapping; a spec is a mapping with 'layers', 'graph' or 'model'.")
    else:
        raise SpecError(f"build() takes a dict, YAML/JSON text or a path; got a {type(spec).__name__}.")
    if not isinstance(doc, dict):
        raise SpecError(f"{where} holds a {type(doc).__name__}, not a mapping; a spec is a mapping with 'layers', 'graph' or 'model'.")
    return _plain(doc)


def _read_file(path: Path) -> str:
    try:
        found, size = path.is_file(), path.stat().st_size if path.is_file() else 0
    except (OSError, ValueError):  # a name too long, a NUL in it
        found, size = False, 0
    if not found:
        raise SpecError(f"No spec file at {str(path)!r}. Pass a path to a .yaml/.json file, YAML/JSON text holding a mapping, or a dict.")
    if size > MAX_BYTES:
        raise SpecError(f"{str(path)!r} is {size:,} bytes; a spec file is at most {MAX_BYTES:,}.")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"Cannot read the spec file {str(path)!r}: {e}") from e


def _parse(text: str, where: str) -> Any:
    import yaml

    if text.lstrip().startswith("{"):
        try:
            return safe_json.loads(text)
        except ValueError as e:
            if "nested too deeply" in str(e):  # YAML would recurse just as deep
                raise SpecError(f"{where} nests too deeply (at most {MAX_DEPTH} levels).") from e
            # YAML flow style is not always JSON: read it as YAML below
    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), where)  # nodes only: nothing constructed
        return yaml.safe_load(text)
    except SpecError:
        raise
    except yaml.YAMLError as e:
        raise SpecError(f"{where} is not valid YAML/JSON: {e}") from e
    except RecursionError as e:
        raise SpecError(f"{where} nests too deeply (at most {MAX_DEPTH} levels).") from e
    except ValueError as e:  # a value Python will not make: an integer of more than 4,300 digits
        raise SpecError(f"{where} holds a value that cannot be read: {str(e).split(';')[0]}.") from e


def _refuse_duplicate_keys(root: Any, where: str) -> None:
    """YAML keeps the last of two equal keys silently; a spec with two ``conv1:`` entries is a mistake."""
    import yaml

    problems: list[str] = []
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in keys:
                        problems.append(f"line {key.start_mark.line + 1}: {key.value!r} is already a key at line {keys[key.value] + 1}")
                    keys.setdefault(key.value, key.start_mark.line)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    if problems:
        problems.sort(key=lambda p: int(p.split(":")[0].removeprefix("line ")))
        raise SpecError(f"{where} repeats keys (YAML would keep only the last):\n" + "\n".join(f"  {p}" for p in problems), problems)


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    count = 0
    problems: list[str] = []

    def copy(value: Any, path: str, depth: int, active: set[int]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"The spec holds more than {MAX_NODES:,} values (YAML aliases count once per use).")
        if depth > MAX_DEPTH:
            raise SpecError(f"{path}: the spec nests more than {MAX_DEPTH} levels deep.")
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                problems.append(f"{path}: {value!r} is not a finite number")
            return value
        if isinstance(value, (list, tuple, dict)):
            if id(value) in active:
                raise SpecError(f"{path}: the spec refers to itself (a YAML alias inside its own anchor).")
            active.add(id(value))
            try:
                if isinstance(value, dict):
                    out = {}
                    for k, v in value.items():
                        if not isinstance(k, str):
                            problems.append(f"{path}: key {k!r} is a {type(k).__name__}; names are strings (quote it: '{k}')")
                            continue
                        out[k] = copy(v, f"{path}.{k}" if path else k, depth + 1, active)
                    return out
                return [copy(v, f"{path}[{i}]", depth + 1, active) for i, v in enumerate(value)]
            finally:
                active.discard(id(value))
        problems.append(f"{path}: {value!r} is a {type(value).__name__}; a spec holds only strings, numbers, booleans, null, lists and mappings")
        return None

    out = copy(doc, "", 0, set())
    if problems:
        raise SpecError(f"The spec is not plain data ({len(problems)} problem{'s' * (len(problems) > 1)}):\n" + "\n".join(f"  {p}" for p in problems), problems)
    return out
