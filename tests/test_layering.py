"""The house's layering, read from the imports: errors < checkpoint file I/O / layers < codec < registry / runner <
zoo / features / inspect < surgery / spec < models_io (whole models) < distributed / cli. No module imports one of a
higher layer, nor a sibling area of its own layer."""

from __future__ import annotations

import ast
from pathlib import Path
from helpers import ROOT

SRC = ROOT / "src" / "torchsmith"

# area -> rank; an area may import its own modules and any area of a lower rank
RANKS = {
    "errors": 0, "_version": 0, "_units": 0,
    "checkpoint": 1, "layers": 1,
    "codec": 1.5,  # layer names and config values as data: above layers and the dtype table, below the registry
    "registry": 2, "runner": 2,
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
