"""Spec models saved with save_model and rebuilt by load_model in a fresh process; the CLI; the JSON Schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

import torchsmith as ts
from torchsmith.cli import main
from helpers import GOLDEN, SPECS, ROOT



def test_save_model_stores_the_spec_and_a_fresh_process_rebuilds_it(tmp_path):
    model = ts.build(SPECS / "fpn_top_down.yaml").eval()
    ts.save_model(model, tmp_path / "fpn")
    config = json.loads((tmp_path / "fpn" / "config.json").read_text())
    assert config["name"] == "spec"
    assert config["kwargs"]["spec"] == yaml.safe_load((SPECS / "fpn_top_down.yaml").read_text())
    x = torch.rand(2, 3, 48, 40)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, torchsmith as ts\n"
        "m = ts.load_model(sys.argv[1]).eval()\n"
        "out = m(torch.load(sys.argv[2]))\n"
        "torch.save(out, sys.argv[3])\n"
        "print(type(m).__name__, ts.to_spec(m)['name'], sorted(k for k in sys.modules if k.startswith('test')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fpn"), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["GraphModel", "fpn_top_down", "[]"]  # no test code in the fresh process
    got = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = model(x)
    assert set(got) == {"p2", "p3", "p4"} and all(torch.equal(got[k], expected[k]) for k in expected)


def test_load_model_rebuilds_a_sequential_spec_in_process(tmp_path):
    model = ts.build(SPECS / "conv_stack.yaml")
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    assert [n for n, _ in loaded.named_children()] == ["conv1", "relu1", "conv2", "relu2"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert ts.to_spec(loaded) == ts.to_spec(model)


def test_create_model_spec_is_the_same_builder():
    spec = yaml.safe_load((SPECS / "mlp.yaml").read_text())
    model = ts.create_model("spec", spec=spec)
    assert ts.model_config(model) == {"name": "spec", "kwargs": {"spec": spec}, "steps": []}
    assert len(ts.create_model("spec")) == 0  # no spec: an empty Sequential (so `torchsmith list` can show it)
    with pytest.raises(ts.SpecError, match="takes the spec as a dict"):
        ts.create_model("spec", spec="layers: [ReLU]")


# the command line


def test_cli_build_json(capsys):
    assert main(["build", str(SPECS / "conv_stack.yaml"), "--input", "2,3,64,64", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["output"] == [2, 64, 64 - 8, 64 - 8]
    assert row["params"] == (3 * 25 * 20 + 20) + (20 * 25 * 64 + 64)
    rows = [(r["type"], r["depth"]) for r in row["summary"]["layers"]]  # the summary's rows say what the census did
    assert Counter(t for t, depth in rows if depth == 1) == {"Conv2d": 2, "ReLU": 2} and "layers" not in row
    totals = row["summary"]["totals"]  # the summary of the built model comes with it
    assert totals["total_params"] == row["params"]
    conv_flops = 2 * 2 * (20 * 60 * 60 * 3 * 25 + 64 * 56 * 56 * 20 * 25)  # 2 x MACs of both convs, batch 2
    assert totals["total_flops"] == conv_flops


def test_cli_build_table_matches_golden(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.chdir(ROOT)
    assert main(["build", "examples/specs/unet.yaml", "--input", "1,3,100,75"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "spec_build_unet.txt").read_text()


def test_cli_build_saves_a_loadable_model(tmp_path, capsys):
    assert main(["build", str(SPECS / "mlp_dict.yaml"), "--save", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved"] == str(tmp_path / "out")
    loaded = ts.load_model(tmp_path / "out")
    assert list(loaded.keys()) == ["linear", "act", "output"]


def test_cli_build_builds_the_spec_once(monkeypatch, tmp_path, capsys):
    from torchsmith.spec import api

    calls = []
    real = api.construct
    monkeypatch.setattr(api, "construct", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["build", str(SPECS / "unet.yaml"), "--input", "1,3,64,64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == [1, 3, 64, 64] and len(calls) == 1
    calls.clear()
    assert main(["build", str(SPECS / "mlp.yaml"), "--save", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == [1, 10]
    assert len(calls) == 2  # the model saved, and save_model's own rebuild on meta that checks load_model's


def test_cli_build_errors_exit_1_and_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  conv1: {Conv2d: [x, 20, 5]}\n")
    assert main(["build", str(bad)]) == 1
    assert "layers.conv1.Conv2d.args[0]: expected int, got 'x'" in capsys.readouterr().err
    assert main(["build", str(SPECS / "mlp.yaml"), "--input", "1,a"]) == 2


def test_cli_spec_schema_prints_the_schema(capsys):
    assert main(["spec-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(ts.spec_schema()))


# the JSON Schema


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate_against_the_schema(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), ts.spec_schema())


def test_schema_rejects_what_build_rejects():
    schema = ts.spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = yaml.safe_load((SPECS / "conv_stack.yaml").read_text())
    for broken in (
        {**good, "layres": {}},                                                    # unknown top-level key
        {"input": [1, 3], "layers": {"conv1": {"Conv2dd": [3, 20, 5]}}},           # unknown layer
        {"layers": {"conv1": {"Conv2d": [3, 20, 5], "ReLU": None}}},               # two layers in one entry
        {"layers": {"conv1": "Sequential"}},                                       # a container without layers
        {"layers": {"a": {"ReLU": None, "repeat": 0}}},                            # bad repeat
        {"layers": ["ReLU"], "model": "ReLU"},                                     # two bodies
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
        with pytest.raises(ts.SpecError):
            ts.build(copy.deepcopy(broken))


def test_a_fresh_process_without_the_block_says_what_to_import(tmp_path):
    @ts.register_block(name="test_roundtrip_Scale")
    class Scale(torch.nn.Module):
        def __init__(self, factor: float = 2.0):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    ts.save_model(ts.build({"layers": [{"Linear": [2, 2]}, {"test_roundtrip_Scale": 3.0}]}), tmp_path / "m")
    code = "import sys, torchsmith as ts\ntry:\n    ts.load_model(sys.argv[1])\nexcept ts.TorchsmithError as e:\n    print(e)\n"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "layers[1].test_roundtrip_Scale: unknown layer 'test_roundtrip_Scale'." in done.stdout
    assert "A block or model registered in code needs its module imported before building or loading." in done.stdout


def test_surgery_after_build_is_saved_as_steps_and_to_spec_refuses_to_forget_it(tmp_path):
    spec = {"input": [1, 3, 16, 16], "layers": {"body": {"Conv2d": [3, 8, 3]}, "pool": {"AdaptiveAvgPool2d": 1}, "flat": "Flatten", "fc": {"Linear": ["auto", 10]}}}
    model = ts.build(spec)
    assert ts.to_spec(model) == spec
    ts.replace_head(model, 4)
    with pytest.raises(ts.SpecError, match=r"changed after it was built \(replace_head\)"):
        ts.to_spec(model)
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    x = torch.rand(2, 3, 16, 16)
    assert loaded.fc.out_features == 4 and torch.equal(loaded(x), model(x))


def test_cli_summary_trace_and_diagram_take_a_spec_file(tmp_path, capsys):
    assert main(["summary", str(SPECS / "conv_stack.yaml"), "--json"]) == 0  # input: the spec's own [1, 3, 224, 224]
    assert json.loads(capsys.readouterr().out)["outputs"][0]["shape"] == [1, 64, 216, 216]  # the tutorial's figure
    assert main(["trace", str(SPECS / "mlp.yaml")]) == 0
    assert "(1, 784)" in capsys.readouterr().out
    assert main(["diagram", str(SPECS / "mlp.yaml"), "-o", str(tmp_path / "mlp.html")]) == 0
    assert "<html" in (tmp_path / "mlp.html").read_text()[:2000].lower()
