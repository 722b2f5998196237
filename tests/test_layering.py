"""The house's layering, read from the imports: errors < checkpoint file I/O / layers < codec < registry / runner <
steps < zoo / features / inspect < surgery / spec < models_io (whole models) < distributed / cli. No module imports one of a
higher layer, nor a sibling area of its own layer."""

from __future__ import annotations

import ast
from pathlib import Path
from helpers import ROOT

SRC = ROOT / "src" / "torchsmith"

# area -> rank; an area may import its own modules and any area of a lower rank
RANKS = {
    "errors": 0, "_version": 0, "units": 0, "display": 0,
    "checkpoint": 1, "layers": 1,
    "codec": 1.5,  # layer names and config values as data: above layers and the dtype table, below the registry
    "kept": 1.5, "paths": 1.5,  # the model as it was (restores); module paths (aliases, torch.compile wrappers)
    "pretrained": 1.75,  # the weights table, fetching files, loading them: checkpoint code, no model code
    "registry": 2, "runner": 2,
    "steps": 2.5,  # the recorded-operation table: appends through the registry, imported by zoo and surgery
    "zoo": 3, "features": 3, "surgery": 4, "inspect": 3, "spec": 4,
    "models_io": 5,
    "cli": 6, "distributed": 6,
    "__init__": 7, "__main__": 7,
}  # fmt: skip


def area(module: str) -> str:
    return module.removeprefix("torchsmith.").split(".")[0]


def torchsmith_imports(path: Path) -> set[str]:
    """Absolute names of the torchsmith modules ``path`` imports (relative imports resolved)."""
    package = "torchsmith." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__") + ".__init__"
    parts = package.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            names = [f"{target}.{a.name}" for a in node.names] if node.module is None else [target]
            found.update(n for n in names if n.startswith("torchsmith"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("torchsmith"))
    return found


def test_no_module_imports_upward_or_sideways():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        mine = area("torchsmith." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        for target in torchsmith_imports(path):
            theirs = area(target) if area(target) in RANKS else "__init__"  # `from .. import x`: the package
            if theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                problems.append(f"{path.relative_to(SRC)} ({mine}) imports {target} ({theirs})")
    assert not problems, "\n".join(problems)


def test_every_area_has_a_rank():
    areas = {area("torchsmith." + ".".join(p.relative_to(SRC).with_suffix("").parts)) for p in SRC.rglob("*.py")}
    assert areas <= set(RANKS), areas - set(RANKS)


# private names

SHARED_PRIVATE = {"torchsmith._version"}  # the packaging convention: every layer reads __version__ from it


def _private(name: str) -> bool:
    """Whether a dotted name has a private part (``_files``, ``_encode``; not a dunder like ``__version__``)."""
    return any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])


def used_names(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute name)`` of each torchsmith name ``path`` imports, and of each attribute it reads
    from an imported torchsmith module (``safe_json.loads`` -> ``torchsmith.checkpoint.safe_json.loads``)."""
    package = "torchsmith." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    parts = package.split(".")[:-1] if path.name != "__init__.py" else package.split(".")[:-1]
    tree = ast.parse(path.read_text())
    bound, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            for a in node.names:
                full = f"{target}.{a.name}"
                if full.startswith("torchsmith."):
                    found.append((node.lineno, full))
                    bound[a.asname or a.name] = full
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name, a.name) for a in node.names if a.name.startswith("torchsmith"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            found.append((node.lineno, f"{bound[node.value.id]}.{node.attr}"))
    return found


def test_private_names_never_cross_package_lines():
    """What another package needs is public API of its owner: no ``from ..checkpoint._files import``, no
    ``from ..surgery.heads import _helper``, no ``steps._table`` read from another package."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        mine = area("torchsmith." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        for line, name in used_names(path):
            if area(name) != mine and _private(name) and not any(name.startswith(s) for s in SHARED_PRIVATE):
                problems.append(f"{path.relative_to(SRC)}:{line} ({mine}) uses {name}")
    assert not problems, "\n".join(problems)
