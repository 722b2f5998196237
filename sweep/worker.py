"""What a child process does: run the operations on one model (and save its files), or verify those files fresh.

The parent starts one child per model (and one more, fresh, to load what the first saved), so a crash or a hang
stays in its child. A child appends one JSON line per finished operation to ``ops.jsonl`` in its work folder and
names the operation it is in (``current``), so the parent knows what a dead child was doing.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

import torchsmith as ts
from helpers import bits

from .cases import Case, attempts, build, example
from .checks import Subject, check, differences, leaves, outcome

SAVED = ("weights", "save_model")  # checked in a fresh process


# the model as the sweep builds it (also the registered builder save_model/load_model rebuild)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics (as after training), so folding BatchNorm is really tested."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and not m.running_mean.is_meta:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@ts.register_model(name="sweep_model")
def sweep_model(*, case: str, library: str, family: str, kind: str, attempt: dict) -> nn.Module:
    """A sweep case, registered so that save_model records it and load_model rebuilds it."""
    return randomise_batchnorm(build(Case(case, library, family, kind), attempt))


def registered(case: Case, attempt: dict) -> nn.Module:
    """The case built through the registry (what save_model records and load_model rebuilds)."""
    return ts.create_model("sweep_model", case=case.name, library=case.library, family=case.family, kind=case.kind, attempt=attempt)


def prepare(case: Case) -> Subject:
    """The first attempt (input size, build arguments) whose forward runs."""
    errors = []
    for attempt in attempts(case):
        try:
            model = registered(case, attempt)
            args, kwargs = example(case, attempt)
            with torch.no_grad():
                output = model(*args, **kwargs)
            return Subject(case, attempt, model, args, kwargs, output)
        except Exception as e:  # noqa: BLE001 - the next attempt may fit
            errors.append(f"{attempt}: {type(e).__name__}: {str(e)[:200]}")
    raise RuntimeError("the model does not run on any input tried: " + " | ".join(errors))


def digests(model: nn.Module) -> dict[str, str]:
    """sha256 of every state-dict tensor's bytes (the reference for a bitwise round trip; not torchsmith's code)."""
    return {k: hashlib.sha256(bits(v)).hexdigest() for k, v in model.state_dict().items()}


# the first child: every operation, then the files


class Log:
    def __init__(self, folder: Path):
        self.folder = folder

    def start(self, op: str) -> float:
        (self.folder / "current").write_text(op)
        return time.monotonic()

    def done(self, op: str, result: str, detail: str, started: float) -> None:
        with open(self.folder / "ops.jsonl", "a") as f:
            f.write(json.dumps({"op": op, "result": result, "detail": detail, "seconds": round(time.monotonic() - started, 2)}) + "\n")


def run_case(case: Case, ops: list[str], folder: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work, log = Path(folder), Log(Path(folder))
    started = log.start("setup")
    try:
        subject = prepare(case)
    except Exception as e:  # noqa: BLE001 - recorded: the model itself did not run here
        log.done("setup", "skip", str(e)[:1000], started)
        return
    (work / "attempt.json").write_text(json.dumps(subject.attempt))
    for op in ops:
        if op in SAVED:
            continue
        started = log.start(op)
        result, detail = check(op, subject)
        log.done(op, result, detail[:2000], started)
    if "weights" in ops:
        started = log.start("weights")
        try:
            ts.save_weights(subject.model, work / "weights.safetensors")
            (work / "weights.json").write_text(json.dumps(digests(subject.model)))
        except Exception as e:  # noqa: BLE001
            log.done("weights", *outcome(e, subject.model), started)
    if "save_model" in ops:
        started = log.start("save_model")
        try:
            ts.save_model(subject.model, work / "model")  # built through the registry: save_model records it
            (work / "model.json").write_text(json.dumps(digests(subject.model)))
            torch.save(leaves(subject.output), work / "outputs.pt")
        except Exception as e:  # noqa: BLE001
            log.done("save_model", *outcome(e, subject.model), started)
    (work / "current").write_text("")


# the second child, fresh: load what the first one saved


def verify_case(case: Case, folder: str) -> None:
    work, log = Path(folder), Log(Path(folder))
    attempt = json.loads((work / "attempt.json").read_text())
    if (work / "weights.json").exists():
        started = log.start("weights")
        model = randomise_batchnorm(build(case, attempt))
        try:
            with torch.no_grad():
                for t in model.state_dict().values():
                    t.add_(1)  # every value differs from the saved one: the load must write them all
            report = ts.load_weights(model, work / "weights.safetensors")
            expected = json.loads((work / "weights.json").read_text())
            got = digests(model)
            bad = [k for k in expected if got.get(k) != expected[k]]
            if not report.ok or bad or got.keys() != expected.keys():
                log.done("weights", "wrong", f"report ok={report.ok}; {len(bad)} tensors differ after the load: {bad[:3]}", started)
            else:
                log.done("weights", "ok", f"{len(got)} tensors bitwise, {report.checksums}", started)
        except Exception as e:  # noqa: BLE001
            log.done("weights", *outcome(e, model), started)
        del model
    if (work / "model.json").exists():
        started = log.start("save_model")
        try:
            model = ts.load_model(work / "model")
            expected = json.loads((work / "model.json").read_text())
            got = digests(model)
            bad = [k for k in expected if got.get(k) != expected[k]]
            args, kwargs = example(case, attempt)
            with torch.no_grad():
                out = model(*args, **kwargs)
            outs = differences(leaves(out), torch.load(work / "outputs.pt"), tolerance=0.0)
            if bad or got.keys() != expected.keys() or outs:
                log.done("save_model", "wrong", f"{len(bad)} tensors differ; outputs: {'; '.join(outs[:3]) or 'equal'}", started)
            else:
                log.done("save_model", "ok", f"{len(got)} tensors bitwise, outputs equal, fresh process", started)
        except Exception as e:  # noqa: BLE001
            log.done("save_model", *outcome(e, build(case, attempt)), started)
    (work / "current").write_text("")
