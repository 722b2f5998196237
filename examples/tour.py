"""The torchsmith tour (`make demo`): runs each step in examples/tour/ in order.

Each step is a small script with a ``main()``; run one alone with
``python examples/tour/step_1_zoo.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console()


def run_step(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    console.print(Rule(f"[bold]{module.__doc__.strip().splitlines()[0]}"))
    start = time.perf_counter()
    module.main()
    console.print(f"[dim]({path.name}: {time.perf_counter() - start:.1f}s)[/]\n")


def main() -> int:
    steps = sorted((Path(__file__).parent / "tour").glob("step_*.py"))
    for path in steps:
        run_step(path)
    console.print(f"[bold green]tour done:[/] {len(steps)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
