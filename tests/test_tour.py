"""The tour (`make demo`): steps numbered 1..N, tables that fit an 80-column terminal, a line at least every
10 s of a long step."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

from helpers import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import tour  # noqa: E402

# prints every step's heading and every table the steps print, the way `make demo` prints them
PRINT_TABLES = """
import sys
sys.path.insert(0, "examples")
import tour
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
console = Console()
found = tour.steps()
for number, path in enumerate(found, 1):
    step = tour.load_step(path)
    rule, rest = tour.heading(step, number, len(found))
    console.print(rule)
    console.print(rest, highlight=False)
    for table in getattr(step, "tables", list)():
        if isinstance(table, Table):  # its natural width: wider than the terminal would wrap or cut cells
            print("NATURAL", Measurement.get(console, console.options, table).maximum, table.title, file=sys.stderr)
        console.print(table)
"""


def test_steps_are_numbered_1_to_n_without_gaps():
    found = tour.steps()
    numbers = [int(p.name.split("_")[1]) for p in found]
    assert numbers == list(range(1, len(found) + 1)) and len(found) >= 8
    for number, path in enumerate(found, 1):
        assert re.fullmatch(r"step_\d+_[a-z_]+\.py", path.name), path.name  # no "3b"
        first = tour.load_step(path).__doc__.strip().splitlines()[0]
        assert first.startswith(f"Step {number} - "), (path.name, first)


def test_every_table_and_heading_fits_80_columns():
    done = subprocess.run([sys.executable, "-c", PRINT_TABLES], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in done.stdout  # nothing cut short
    natural = [line.split(" ", 2) for line in done.stderr.splitlines() if line.startswith("NATURAL")]
    assert len(natural) >= 3 and all(int(width) <= 80 for _, width, _ in natural), natural
    for _, _, title in natural:  # each table's title on one line, whole
        assert any(title in line for line in lines), title
    found = tour.steps()
    for number, path in enumerate(found, 1):
        name = tour.load_step(path).__doc__.strip().splitlines()[0].partition(" - ")[2].partition(": ")[0]
        assert any(f"Step {number} of {len(found)}: {name}" in line for line in lines), name
    assert sum("summary" in line and "Module" not in line for line in lines) >= 3  # the summaries were printed
    assert "Columns left out to fit 80 characters" in done.stdout  # and said what they left out


def test_a_silent_step_gets_a_line_every_heartbeat(monkeypatch):
    monkeypatch.setattr(tour, "HEARTBEAT_S", 0.05)
    out = io.StringIO()
    with tour._Heartbeat(out, "step 9"):
        print("starting")
        deadline = time.monotonic() + 30
        while out.getvalue().count("still at work") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # a long step that prints nothing
        print("done")
    text = out.getvalue().splitlines()
    assert text[0] == "starting" and text[-1] == "done"
    beats = [line for line in text if "still at work" in line]
    assert len(beats) >= 2 and all(line.startswith("  ... step 9 still at work (") for line in beats)
