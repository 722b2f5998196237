"""The one statistic every benchmark reports: the median of interleaved rounds.

Each round runs every candidate once, the order reversed every other round
(A B C, C B A, ...), so drift in the machine (other load, thermal state, page
cache) lands on all candidates alike. A candidate's figure is the median of
its rounds; the spread (max - min over the median) is printed next to it so a
noisy run shows itself.

    >>> times = interleaved({"a": lambda: None, "b": lambda: None}, rounds=3)
    >>> sorted(times), len(times["a"])
    (['a', 'b'], 3)

Each benchmark also hands every target it checks to :func:`record`; ``make bench``
(benchmarks/run_all.py) collects them from all benchmarks into one summary table.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["interleaved", "median", "spread", "order", "record", "SUMMARY_ENV"]

SUMMARY_ENV = "TORCHSMITH_BENCH_SUMMARY"  # a JSON-lines file run_all.py reads; unset: record() keeps nothing


def order(names: Sequence[str], round_index: int) -> list[str]:
    """The candidates' order in round ``round_index``: as given, then reversed, alternately."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def interleaved(candidates: Mapping[str, Callable[[], Any]], *, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each candidate per round, candidates interleaved (see the module docstring).

    A candidate that returns a number reports its own seconds (e.g. measured in a child
    process); otherwise its call is timed here.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for i in range(rounds):
        for name in order(list(candidates), i):
            start = time.perf_counter()
            got = candidates[name]()
            elapsed = time.perf_counter() - start
            times[name].append(float(got) if isinstance(got, (int, float)) else elapsed)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: 0.05 means the rounds agreed within 5%."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else 0.0


def record(target: str, ok: bool, measured: str) -> bool:
    """Add one checked target (its text with the goal, PASS or FAIL, the measured figure) to the summary of
    ``make bench``, when run_all.py asked for one; returns ``ok``. The benchmark prints its own line."""
    path = os.environ.get(SUMMARY_ENV)
    if path:
        row = {"benchmark": Path(sys.argv[0]).name, "target": target, "ok": bool(ok), "measured": measured}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return ok
