"""``python -m sweep``: run the compatibility sweep and publish docs/compatibility.md (see ``--help``)."""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console

from . import ROOT
from .cases import all_cases, sample
from .checks import OPS
from .publish import publish
from .run import counts, load_results, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep", description=__doc__)
    parser.add_argument("--sample", type=int, help="a fixed, seeded sample of N models spread over the families")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--max-params", type=float, help="sample only models up to this many parameters (e.g. 3e7)")
    parser.add_argument("--only", action="append", help="models whose name matches this glob (tv.resnet*, timm.*); repeatable")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one model's process may take (default 1200)")
    parser.add_argument("--state", type=Path, default=ROOT / ".sweep", help="results as they come, for resuming (default .sweep/)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results in --state and run everything again")
    parser.add_argument("--out", type=Path, help="where compatibility.md/.json go (default: docs/ for a full run, else --state)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--publish", action="store_true",
                        help="run nothing: publish what --state holds so far (a stopped sweep; the page says how much ran)")  # fmt: skip
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    if args.fresh:
        shutil.rmtree(args.state, ignore_errors=True)
    args.state.mkdir(parents=True, exist_ok=True)
    with console.status("listing models (timm's are sized on meta once per timm version)"):
        cases = all_cases(args.state)
    full = not (args.sample or args.only)
    if args.only:
        cases = [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in args.only)]
    if args.sample:
        cases = sample(cases, args.sample, seed=args.seed, max_params=int(args.max_params) if args.max_params else None)
    if args.list:
        for c in cases:
            print(f"{c.name}\t{c.family}\t{c.kind}\t{c.params or ''}")
        return 0
    started = time.monotonic()
    if args.publish:
        done = load_results(args.state / "results.jsonl")
        records, wall = [done[c.name] for c in cases if c.name in done], None
    else:
        console.print(f"{len(cases)} models x {len(OPS)} operations; results in {args.state / 'results.jsonl'}", highlight=False)
        records = sweep(cases, state=args.state, timeout=args.timeout, console=console)
        wall = time.monotonic() - started
    out = args.out or (ROOT / "docs" if full else args.state)
    command = "python -m sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    md_path, _ = publish(records, out, command=command.strip(), wall_seconds=wall, planned=[c.name for c in cases])
    tally = counts(records)
    console.print(f"wrote {md_path}: " + ", ".join(f"{k} {v}" for k, v in tally.items()), highlight=False)
    return 1 if tally["wrong"] or tally["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
