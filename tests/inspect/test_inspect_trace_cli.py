"""trace() against an independent hook recording, its errors, and the summary / trace CLI commands."""

from __future__ import annotations

import io
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from inspect_models import dict_of_layers
from helpers import probe_differences, probe_snapshot
from torch import nn

import torchsmith as ts
from torchsmith import InspectError
from torchsmith.cli import main
from torchsmith.cli.inputs import parse_inputs

# trace


def test_trace_lists_every_call_in_call_order_with_shapes():
    model = ts.create_model("resnet18").eval()
    order = []
    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(lambda mod, a: order.append(names[mod])) for m in names]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    for h in handles:
        h.remove()
    buf = io.StringIO()
    with torch.no_grad():
        t = ts.trace(model, x, file=buf)
    assert [s.path for s in t.steps] == order
    assert torch.equal(t.output, reference)
    step = next(s for s in t.steps if s.path == "layer3.0.conv1")
    assert (step.inputs, step.outputs) == ("(1, 128, 8, 8)", "(1, 256, 4, 4)")
    printed = buf.getvalue().splitlines()
    assert len(printed) == len(order) and "conv1" in printed[t.steps.index(step)]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_trace_of_the_tutorials_dict_of_layers():
    buf = io.StringIO()
    t = ts.trace(dict_of_layers(), torch.randn(1, 784), file=buf)
    assert [(s.path, s.inputs, s.outputs) for s in t.steps] == [
        ("", "(1, 784)", "(1, 10)"),
        ("layers.linear", "(1, 784)", "(1, 256)"),
        ("layers.act", "(1, 256)", "(1, 256)"),
        ("layers.output", "(1, 256)", "(1, 10)"),
    ]


def test_trace_error_names_the_module_and_the_shapes_and_removes_hooks():
    model = ts.create_model("resnet18").eval()
    model.layer3[0].conv1 = nn.Conv2d(256, 256, 3, stride=2, padding=1, bias=False)  # expects 256, gets 128
    model.layer3[0].downsample = None
    before = probe_snapshot(model)
    with pytest.raises(InspectError) as info:
        ts.trace(model, torch.randn(1, 3, 224, 224), file=None)
    message = str(info.value)
    assert message.startswith("layer3.0.conv1 (Conv2d) got (1, 128, 28, 28), expects 256 input channels")
    assert isinstance(info.value.__cause__, RuntimeError) and "256 channels" in message
    assert probe_differences(before, probe_snapshot(model)) == []


def test_trace_error_in_a_linear_layer():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(5, 2))
    with pytest.raises(InspectError, match=r"^1 \(Linear\) got \(3, 4\), expects a last dimension of 5"):
        ts.trace(model, torch.randn(3, 8), file=None)


# the CLI


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=6), st.sampled_from([",", "x"]))
def test_input_shapes_parse_as_the_spec_commands_do(shape, sep):
    assert parse_inputs([sep.join(map(str, shape))]) == shape
    assert parse_inputs([f"x={sep.join(map(str, shape))}", "y=2,3"]) == {"x": shape, "y": [2, 3]}


@pytest.mark.parametrize("bad", [[""], ["1,3,a"], ["-1,3"], ["1.5,3"], ["0,3"], ["1,3", "2,3"]])
def test_input_shapes_rejected(bad):
    import typer

    with pytest.raises(typer.BadParameter):
        parse_inputs(bad)


def test_cli_named_inputs_become_keyword_arguments(capsys):
    assert main(["summary", "mlp", "--input", "x=3,784", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input"] == "x=(3, 784)" and data["outputs"][0]["shape"] == [3, 10]


def test_cli_summary_json_matches_the_api(capsys):
    assert main(["summary", "resnet18", "--input", "1,3,224,224", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["total_params"] == 11_689_512
    assert data["totals"]["total_flops"] == ts.summary(ts.create_model("resnet18"), (1, 3, 224, 224)).total_flops


def test_cli_summary_table_depth_and_dtype(capsys):
    assert main(["summary", "mlp", "--depth", "1"]) == 0  # input guessed from the first Linear
    out = capsys.readouterr().out
    rows = [line.split() for line in out.split("Output bytes")[1].splitlines() if line.strip()]
    assert [r[0] for r in rows[1:4]] == ["MLP", "features", "head"]  # depth 1: features.0 not printed
    assert "FLOPs: 406.53 KFLOPs" in out  # 2 * (784 * 256 + 256 * 10)


def test_cli_summary_of_a_saved_model_directory(tmp_path, capsys):
    ts.save_model(ts.create_model("mlp"), tmp_path / "run")
    assert main(["summary", str(tmp_path / "run"), "--input", "2,784", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outputs"][0]["shape"] == [2, 10]


def test_cli_errors_and_usage(capsys):
    assert main(["summary", "resnt18"]) == 1
    assert "resnet18" in capsys.readouterr().err
    assert main(["summary", "resnet18", "--input", "1,3,a"]) == 2
    assert main(["summary", "resnet18", "--input", "1,3"]) == 1  # a 2-d input for a conv: an InspectError
    assert "conv1 (Conv2d) got (1, 3)" in capsys.readouterr().err
    assert main(["summary", "resnet18", "--dtype", "floaty"]) == 2


def test_cli_trace(capsys):
    assert main(["trace", "mlp", "--input", "1,784"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("MLP") and lines[0].endswith("(1, 784) -> (1, 10)")


def test_cli_diagram_writes_one_self_contained_page(tmp_path, capsys):
    out = tmp_path / "sub" / "unet.html"
    assert main(["diagram", "unet", "-o", str(out), "--input", "1,3,64,64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output"] == str(out) and out.stat().st_size == data["bytes"]
    text = out.read_text()
    assert "ELK" in text and '"items"' in text and "<script src" not in text


@pytest.mark.parametrize("backend", ["fake", "real"])
def test_cli_backend_flag_chooses_where_summary_and_diagram_run(backend, tmp_path, capsys):
    assert main(["summary", "mlp", "--input", "2,784", "--backend", backend, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = ts.summary(ts.create_model("mlp"), (2, 784), backend=backend)
    assert data["backend"] == backend and data["totals"]["total_flops"] == expected.total_flops == 2 * 2 * (784 * 256 + 256 * 10)
    assert main(["diagram", "mlp", "--backend", backend, "-o", str(tmp_path / "m.html")]) == 0
    assert (tmp_path / "m.html").is_file()
    assert main(["summary", "mlp", "--backend", "gpu"]) == 1 and "backend must be one of" in capsys.readouterr().err
