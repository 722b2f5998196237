"""The torchsmith tour (`make demo`): runs each step in examples/tour/ in order.

Each step is a small script with a ``main()``; run one alone with
``python examples/tour/step_1_zoo.py``. A step that prints nothing for 10 seconds gets a line saying it is
still at work; every table fits the terminal (80 columns and up).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console()
HEARTBEAT_S = 10.0  # the longest a step stays silent


class _Heartbeat:
    """Stands in for sys.stdout while a step runs: passes everything through, and prints "still working" when
    nothing was written for HEARTBEAT_S seconds (only at the start of a line)."""

    def __init__(self, stream, label: str):
        self.stream, self.label = stream, label
        self.lock = threading.Lock()
        self.last = self.start = time.monotonic()
        self.at_line_start = True
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def write(self, text: str) -> int:
        with self.lock:
            if text:
                self.last = time.monotonic()
                self.at_line_start = text.endswith("\n")
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno ...: the real stream's
        return getattr(self.stream, name)

    def _beat(self) -> None:
        while not self.done.wait(0.5):
            with self.lock:
                now = time.monotonic()
                if now - self.last >= HEARTBEAT_S and self.at_line_start:
                    self.stream.write(f"  ... {self.label} still at work ({now - self.start:.0f}s)\n")
                    self.stream.flush()
                    self.last = now

    def __enter__(self):
        sys.stdout = self
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        sys.stdout = self.stream


def load_step(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heading(module, number: int, total: int) -> tuple[Rule, str]:
    """The step's rule (``Step 2 of 8: surgery``) and the rest of its docstring's first line, as prose."""
    first = module.__doc__.strip().splitlines()[0]  # "Step 2 - surgery: modifying a ResNet-50, done right (...)"
    name, _, rest = first.partition(" - ")[2].partition(": ")
    return Rule(f"[bold]Step {number} of {total}: {name}"), rest


def run_step(path: Path, number: int, total: int) -> None:
    module = load_step(path)
    rule, rest = heading(module, number, total)
    console.print(rule)
    console.print(rest, highlight=False)
    start = time.perf_counter()
    with _Heartbeat(sys.stdout, f"step {number}"):
        module.main()
    console.print(f"[dim]({path.name}: {time.perf_counter() - start:.1f}s)[/]\n")


def steps() -> list[Path]:
    return sorted((Path(__file__).parent / "tour").glob("step_*.py"), key=lambda p: int(p.name.split("_")[1]))


def main() -> int:
    found = steps()
    for number, path in enumerate(found, 1):
        run_step(path, number, len(found))
    console.print(f"[bold green]tour done:[/] {len(found)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
