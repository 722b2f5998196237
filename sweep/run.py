"""The parent: one child process per model (forked from a server that imported the libraries once), a timeout per
child, results appended as each model finishes (``.sweep/results.jsonl``), so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .cases import Case
from .checks import OPS

SAVED = ("weights", "save_model")
OUTCOMES = ("ok", "refused", "wrong", "crash", "n/a", "skip")
PRELOAD = ["torch", "torchvision.models", "timm", "transformers", "torchsmith", "sweep.preload", "sweep.worker"]


def _child(task: str, case: dict, ops: list[str], folder: str) -> None:
    import logging
    import warnings

    from .worker import run_case, verify_case

    warnings.simplefilter("ignore")  # the libraries' own warnings (deprecations, tied weights): the page says what matters
    logging.getLogger("torch").setLevel(logging.CRITICAL)  # fake-tensor tracebacks of a probe that falls back

    case_ = Case(**case)
    run_case(case_, ops, folder) if task == "run" else verify_case(case_, folder)


class Pool:
    """Starts children from a fork server that preloaded the libraries (a child starts in milliseconds)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def run(self, task: str, case: Case, ops: list[str], folder: Path) -> str | None:
        """None when the child finished; else what happened to it."""
        p = self.ctx.Process(target=_child, args=(task, asdict(case), ops, str(folder)), daemon=True)
        p.start()
        p.join(self.timeout)
        if p.is_alive():
            p.kill()
            p.join()
            return f"timed out after {self.timeout:.0f} s"
        if p.exitcode:
            return f"the process died ({'signal ' + str(-p.exitcode) if p.exitcode < 0 else 'exit code ' + str(p.exitcode)})"
        return None


def _consume(folder: Path) -> tuple[dict[str, dict], str]:
    """The finished operations a child wrote, and the one it was in when it stopped."""
    done: dict[str, dict] = {}
    log = folder / "ops.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry.pop("op")] = entry
        log.unlink()
    current = (folder / "current").read_text().strip() if (folder / "current").exists() else ""
    return done, current


def run_model(case: Case, pool: Pool, work: Path, ops: list[str]) -> dict:
    """Every operation on ``case``; a child that dies costs only the operation it was in (the rest run again)."""
    folder = work / re.sub(r"[^\w.-]", "_", case.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    results: dict[str, dict] = {}
    remaining = list(ops)
    for _ in range(3):
        died = pool.run("run", case, remaining, folder)
        done, current = _consume(folder)
        results.update(done)
        if "setup" in results:
            break
        if died and current and current not in results:
            results[current] = {"result": "crash", "detail": died, "seconds": None}
        remaining = [op for op in ops if op not in results and not (op in SAVED and (folder / f"{'weights' if op == 'weights' else 'model'}.json").exists())]
        if not remaining or not died:
            break
    if any((folder / f"{name}.json").exists() for name in ("weights", "model")):
        died = pool.run("verify", case, [], folder)
        done, current = _consume(folder)
        results.update(done)
        if died and current and current not in results:
            results[current] = {"result": "crash", "detail": f"loading in a fresh process: {died}", "seconds": None}
    attempt = json.loads((folder / "attempt.json").read_text()) if (folder / "attempt.json").exists() else None
    setup = results.pop("setup", None)
    for op in ops:
        if setup is not None:
            results[op] = {"result": "skip", "detail": setup["detail"], "seconds": None}
        elif op not in results:
            results[op] = {"result": "crash", "detail": "not run: the model's process died three times", "seconds": None}
    shutil.rmtree(folder, ignore_errors=True)
    return {**asdict(case), "attempt": attempt, "seconds": round(time.monotonic() - started, 1), "ops": {op: results[op] for op in ops}}


# results on disk


def load_results(path: Path) -> dict[str, dict]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out[record["name"]] = record
    return out


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def counts(records: list[dict]) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for r in records:
        for entry in r["ops"].values():
            out[entry["result"]] += 1
    return out


def interleaved(cases: list[Case]) -> list[Case]:
    """``cases`` taken in turn from each library, the smallest first, so that a sweep stopped part way covers all
    three libraries and as many models as it could (what is left is the largest)."""
    queues: dict[str, list[Case]] = {}
    for case in sorted(cases, key=lambda c: c.params if c.params is not None else float("inf")):
        queues.setdefault(case.library, []).append(case)
    out = []
    while any(queues.values()):
        out += [q.pop(0) for q in queues.values() if q]
    return out


def sweep(cases: list[Case], *, state: Path, timeout: float, ops: list[str] = OPS, console=None) -> list[dict]:
    """Run ``cases`` not already in ``state/results.jsonl`` (the libraries in turn); every record of ``cases``, in
    order."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results_path = state / "results.jsonl"
    done = load_results(results_path)
    todo = interleaved([c for c in cases if c.name not in done])
    pool = Pool(timeout)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[tally]}"), console=console) as progress:  # fmt: skip
        finished = [done[c.name] for c in cases if c.name in done]
        tally = lambda: "  ".join(f"{k} {v}" for k, v in counts(finished).items() if v)  # noqa: E731
        task = progress.add_task("sweep", total=len(cases), completed=len(finished), tally=tally())
        for case in todo:
            progress.update(task, description=f"{case.name:<40}")
            record = run_model(case, pool, state / "work", ops)
            append_result(results_path, record)
            done[case.name] = record
            finished.append(record)
            bad = [f"{op}: {e['result']}" for op, e in record["ops"].items() if e["result"] in ("wrong", "crash")]
            if bad:
                progress.console.print(f"[red]{escape(case.name)}[/red] {escape(', '.join(bad))}", highlight=False)
            progress.update(task, advance=1, tally=tally())
    return [done[c.name] for c in cases]
