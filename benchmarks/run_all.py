"""Run every benchmark (benchmarks/bench_*.py), each in its own process, then print one summary table.

Each benchmark prints its own figures as it goes and hands every target it checks to
``_common.record``; this collects them into one table: benchmark, target, measured, PASS / FAIL.
A benchmark that crashes is a row of its own (and makes the exit status 1); a FAIL target does not
change the exit status (figures on a loaded machine say little: read the table).

    python benchmarks/run_all.py                    # make bench
    python benchmarks/run_all.py bench_header.py    # some of them
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SUMMARY_ENV
from rich.console import Console
from rich.table import Table
from rich.text import Text

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = [HERE / name for name in argv] or sorted(HERE.glob("bench_*.py"))
    rows: list[dict] = []
    crashed = 0
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "targets.jsonl"
        for script in scripts:
            print(f"== {script.relative_to(HERE.parent)}", flush=True)
            start = time.perf_counter()
            rc = subprocess.call([sys.executable, str(script)], env={**os.environ, SUMMARY_ENV: str(summary)})
            minutes = (time.perf_counter() - start) / 60
            got = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
            summary.unlink(missing_ok=True)
            rows += got
            if rc:
                crashed += 1
                rows.append({"benchmark": script.name, "target": "(the benchmark itself)", "ok": False,
                             "measured": f"exited with status {rc} after {minutes:.1f} min"})
            elif not got:
                rows.append({"benchmark": script.name, "target": "(no target checked)", "ok": True, "measured": f"{minutes:.1f} min"})
    table = Table(title=f"make bench: every target (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at the end)")
    for column in ("benchmark", "target", "measured", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        # the texts come from our own benchmarks, but are shown as plain text (no rich markup)
        result = Text("PASS", style="green") if row["ok"] else Text("FAIL", style="bold red")
        table.add_row(Text(row["benchmark"]), Text(row["target"]), Text(row["measured"]), result)
    console = Console(width=max(120, Console().width))
    console.print()
    console.print(table)
    checked = [r for r in rows if not r["target"].startswith("(")]
    console.print(f"{sum(r['ok'] for r in checked)} of {len(checked)} targets met; {crashed} benchmark(s) crashed")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
