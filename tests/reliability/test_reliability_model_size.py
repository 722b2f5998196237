"""A spec or a config.json cannot ask for more model than the bounds allow, and a replay allocates
nothing before the weights are checked (issue 20 §3, §4).

``repeat`` is bounded per use (``MAX_REPEAT``), so nesting multiplies: a few hundred bytes ask for
1024^2 or 1024^3 modules. ``Limits.max_modules`` and ``max_parameters`` bound the model as a whole,
counted as it is built (a repeat is sized from its first copy), on the meta device before a real
build. Each hostile input runs in a child under a memory cap, with an alarm: it must be refused
with a ``TorchsmithError`` naming the bound (the CLI: exit code 1), within the alarm's time.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from reliability_tools import Child, limit_memory, record
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith import Limits
from torchsmith.cli import app
from torchsmith.models_io import whole

LINEAR = {"Linear": [1, 1]}


def _nest(layer: dict, times: int, depth: int) -> dict:
    """``layer`` repeated ``times`` at each of ``depth`` levels: times**depth copies."""
    for _ in range(depth - 1):
        layer = {"Sequential": [{**layer, "repeat": times}]}
    return {**layer, "repeat": times}


SPECS = {
    "1024^2 Linear layers": {"layers": [_nest(LINEAR, 1024, 2)]},
    "1024^3 Linear layers": {"layers": [_nest(LINEAR, 1024, 3)]},
    "1024^3 ReLUs": {"layers": [_nest({"ReLU": None}, 1024, 3)]},
    "resnet152 x 1024": {"model": {"resnet152": None, "repeat": 1024}},
    "a 2.5e9-parameter Linear": {"layers": [{"Linear": [50_000, 50_000]}]},
    "a graph of 1024^2 nodes' modules": {"graph": {"inputs": ["x"], "nodes": {"a": {"Sequential": [_nest(LINEAR, 1024, 2)], "from": "x"}}, "outputs": "a"}},
}


def _config_dir(root: Path, name: str, kwargs: dict, steps: list | None = None) -> Path:
    """A save_model directory whose config.json asks for ``name(**kwargs)`` then ``steps``, re-checksummed
    (a checksum is not authentication: anyone can recompute it)."""
    directory = ts.save_model(ts.create_model("mlp", in_features=3, hidden=[4], num_classes=2), root / name.replace(" ", "-"))
    doc = json.loads((directory / "config.json").read_text())
    doc.update(name=kwargs.pop("$name", doc["name"]), kwargs=kwargs, steps=steps or [])
    doc["checksums"]["config.json"]["xxh3-64"] = whole._config_digest(doc)
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


def _configs(root: Path) -> dict[str, Path]:
    return {
        "config: spec of 1024^2 Linear layers": _config_dir(root, "c1", {"$name": "spec", "spec": SPECS["1024^2 Linear layers"]}),
        "config: spec of resnet152 x 1024": _config_dir(root, "c2", {"$name": "spec", "spec": SPECS["resnet152 x 1024"]}),
        "config: 9,000-layer MLP x in_features 100,000": _config_dir(root, "c3", {"in_features": 100_000, "hidden": [100_000] * 9000, "num_classes": 2}),
        "config: resnet18 adapted to 2**27 input channels": _config_dir(
            root, "c4", {"$name": "resnet18"}, [{"op": "adapt_input_channels", "in_chans": 2**27, "path": "conv1"}]
        ),
    }


class _Hang(Exception):
    pass


_RANG: list[bool] = []
_OUT_OF_MEMORY = ("MemoryError", "can't allocate memory", "Cannot allocate memory")


def _alarm(signum, frame):
    _RANG.append(True)  # whatever the exception becomes on its way out (the builder wraps it), it was too slow
    raise _Hang("no answer within the time allowed")


def run_cases(cases: list[tuple[str, str, str]], headroom: int, seconds: int, limits: dict | None) -> dict[str, dict]:
    """Each ``(name, entry, target)`` under a memory cap and an alarm: what it raised."""
    warm = ts.build({"input": [1, 2], "layers": [{"Linear": [2, 2]}]}, device="meta")  # lazy imports first
    ts.summary(warm, input_size=(1, 2))
    CliRunner().invoke(app, ["list", "mlp"])
    limit_memory(headroom)
    signal.signal(signal.SIGALRM, _alarm)
    bounds = Limits(**{k: v for k, v in limits.items() if k in Limits.__dataclass_fields__}) if limits else None  # fields this torchsmith has
    out = {}
    for name, entry, target in cases:
        result = {"entry": entry, "error": None, "torchsmith": False, "message": ""}
        signal.alarm(seconds)
        try:
            if entry == "build":
                ts.build(json.loads(target), **({"limits": bounds} if bounds else {}))
            elif entry == "build (meta)":
                ts.build(json.loads(target), device="meta", **({"limits": bounds} if bounds else {}))
            elif entry == "load_model":
                ts.load_model(target, **({"limits": bounds} if bounds else {}))
            else:  # a CLI command on a file or directory
                done = CliRunner().invoke(app, [*entry.split()[1:], target])
                traceback = "Traceback" in done.output or not isinstance(done.exception, (SystemExit, type(None)))
                result["message"] = done.output[-400:]
                if done.exit_code != 0:
                    result.update(error=f"exit code {done.exit_code}", torchsmith=done.exit_code == 1 and not traceback)
        except BaseException as e:  # noqa: BLE001 - every outcome is a finding
            result.update(error=type(e).__name__, message=str(e)[:400], torchsmith=isinstance(e, ts.TorchsmithError))
        finally:
            signal.alarm(0)
        if _RANG:
            result.update(error="no answer within the time allowed", torchsmith=False)
            _RANG.clear()
        elif any(m in result["message"] for m in _OUT_OF_MEMORY):  # refused only because the cap stopped an allocation
            result.update(error="out of memory", torchsmith=False)
        out[f"{name} / {entry}"] = result
    return out


def _cases(root: Path) -> list[tuple[str, str, str]]:
    cases = []
    for name, spec in SPECS.items():
        path = root / f"{len(cases)}.json"
        path.write_text(json.dumps(spec))
        cases += [(name, "build", json.dumps(spec)), (name, "build (meta)", json.dumps(spec)), (name, "cli build", str(path)), (name, "cli summary", str(path))]
    for name, directory in _configs(root).items():
        cases += [(name, "load_model", str(directory)), (name, "cli summary", str(directory))]
    return cases


def test_specs_and_configs_asking_for_too_much_model_are_refused(tmp_path):
    cases = _cases(tmp_path)
    results = Child(run_cases, cases, 1024 * 2**20, 60, None).result(timeout=120 + 70 * len(cases))
    through = [f"{k}: {r['error'] or 'built'}" for k, r in results.items() if not r["torchsmith"]]
    record("model size bounds", inputs=len(SPECS) + 4, loads=len(cases), through=len(through), examples=through[:6])
    assert not through, through
    for key, r in results.items():
        if r["entry"] not in ("cli build", "cli summary"):
            assert "max_modules" in r["message"] or "max_parameters" in r["message"], (key, r["message"])


def test_the_bounds_admit_every_zoo_model_and_example_spec():
    with torch.device("meta"):
        for name in ts.list_models():
            ts.create_model(name)  # built under the default limits
    for spec in sorted((Path(__file__).parents[2] / "examples" / "specs").glob("*.yaml")):
        ts.build(spec, device="meta")


def test_raising_the_bound_lets_the_spec_build(tmp_path):
    spec = {"layers": [_nest(LINEAR, 20, 2)]}  # 400 Linear layers in 20 + 1 Sequentials, 20 repeats and the top
    modules = 400 + 20 + 20 + 1 + 1  # counted by hand: Linear, inner repeats, Sequential nodes, outer repeat, top
    with pytest.raises(ts.SpecError, match="max_modules=") as info:
        ts.build(spec, device="meta", limits=Limits(max_modules=modules - 1))
    assert "--limit max_modules=" in str(info.value) and "limits=Limits(max_modules=" in str(info.value)
    model = ts.build(spec, device="meta", limits=Limits(max_modules=modules))
    assert sum(1 for _ in model.modules()) == modules
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    refused = CliRunner().invoke(app, ["build", str(path), "--limit", f"max_modules={modules - 1}"])
    assert refused.exit_code == 1 and "max_modules" in refused.output
    assert CliRunner().invoke(app, ["build", str(path), "--limit", f"max_modules={modules}"]).exit_code == 0


def test_a_replay_allocates_nothing_before_the_weights_are_checked(tmp_path):
    """A 700-byte config.json asking resnet18 for 2**27 input channels: with the size bounds raised out of
    the way, the meta replay makes no tensor and the weights' header refuses it (it peaked at 2.7 GB)."""
    directory = _configs(tmp_path)["config: resnet18 adapted to 2**27 input channels"]
    assert (directory / "config.json").stat().st_size < 1000
    results = Child(run_cases, [("in_chans 2**27", "load_model", str(directory))], 256 * 2**20, 60, {"max_parameters": 10**15}).result(timeout=180)
    (r,) = results.values()
    record("replay without allocating", config_bytes=(directory / "config.json").stat().st_size, result=f"{r['error']}: {r['message'][:80]}")
    assert r["error"] == "IncompatibleCheckpointError" and "does not fit" in r["message"], r
