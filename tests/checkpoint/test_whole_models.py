"""Whole models that survive surgery: save_model after each recorded operation (and chains of them),
load_model in a fresh process, and everything comes back bitwise: state dict, outputs, requires_grad,
BatchNorm behaviour after .train(). Models that load_model would rebuild differently are refused at save."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file
from helpers import randomise_bn_
from torch import nn

import torchsmith as ts

# what the fresh process does with each saved model: the same as `observe` below, on the loaded model
CHILD = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
import torchsmith as ts

for case in map(Path, sys.argv[1:]):
    model = ts.load_model(case / "model")
    saved = load_file(case / "inputs.safetensors")
    inputs = [saved[f"x{i}"].clone() for i in range(len(saved))]  # fresh (aligned) memory, as the parent's
    observed, facts = OBSERVE(model, inputs)
    save_file(observed, case / "child.safetensors")
    (case / "child.json").write_text(json.dumps(facts))
"""


def observe(model: nn.Module, inputs: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict as loaded, eval outputs, then .train(): module modes, train outputs, state after that step."""
    out = {f"state.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    facts = {
        "types": {n: type(m).__name__ for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "config": ts.model_config(model),
    }
    def outputs(y) -> dict[str, torch.Tensor]:  # a tensor, or a dict of them (FPN levels)
        return {str(k): v.contiguous() for k, v in y.items()} if isinstance(y, dict) else {"": y.contiguous()}

    with torch.no_grad():
        out.update({f"y_eval.{k}": v for k, v in outputs(model.eval()(*inputs)).items()})
        model.train()
        facts["training"] = {n: m.training for n, m in model.named_modules()}
        torch.manual_seed(0)  # the same dropout masks in both processes
        out.update({f"y_train.{k}": v for k, v in outputs(model(*inputs)).items()})
    out.update({f"after_train.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()})
    return out, facts




def img(c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(2, c, size, size, generator=torch.Generator().manual_seed(c))


def r18() -> nn.Module:
    return randomise_bn_(ts.create_model("resnet18", num_classes=4))


def tiny_unet() -> nn.Module:
    return randomise_bn_(ts.create_model("unet", widths=(4, 8), dropout=(0.0, 0.0)))


def tiny_mlp() -> nn.Module:
    return ts.create_model("mlp", in_features=12, hidden=(8,), num_classes=3)


GRAPH = {"input": [1, 4], "graph": {"nodes": {"blocks.a": {"Linear": [4, 4]}, "blocks.b": {"Linear": [4, 2]}}}}


def tutorial_head(in_features: int = 2048) -> nn.Sequential:
    """The tutorial's named classifier, built by hand from torch.nn."""
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(in_features, 128), relu1=nn.ReLU(), dropout1=nn.Dropout(0.5), fc2=nn.Linear(128, 10),
        output=nn.LogSoftmax(dim=1),
    ))  # fmt: skip


def chain(model: nn.Module, trainable: list[str]) -> nn.Module:
    """The issue's chain: 1 input channel, a new head, frozen BatchNorm (but in ``trainable``), then folded."""
    model = ts.adapt_input_channels(model, 1)
    model = ts.replace_head(model, 2)
    model = ts.freeze(model, exclude=trainable, bn="frozen")
    return ts.fold_batchnorm(model.eval())


# name -> (build and change a model, its inputs)
CASES = {
    "replace_head": (lambda: ts.replace_head(r18(), 10), [img()]),
    "replace_head_0": (lambda: ts.replace_head(tiny_mlp(), 0), [torch.randn(3, 12)]),
    "adapt_input_channels": (lambda: ts.adapt_input_channels(r18(), 1), [img(1)]),
    "adapt_input_channels_unet": (lambda: ts.adapt_input_channels(tiny_unet(), 5), [img(5, 8)]),
    "add_inputs": (lambda: ts.add_inputs(tiny_mlp(), extra_features=2, num_classes=5), [torch.randn(3, 12), torch.randn(3, 2)]),
    "add_inputs_resnet": (lambda: ts.add_inputs(r18(), extra_features=1, num_classes=3, fusion="add"), [img(), torch.randn(2)]),
    "add_inputs_relu": (lambda: ts.add_inputs(tiny_mlp(), extra_features=2, num_classes=5, relu=True, dropout=0.5), [torch.randn(3, 12), torch.randn(3, 2)]),
    "add_inputs_output": (  # the tutorial's model: the whole resnet's output, ReLU, Dropout, cat one scalar, Linear
        lambda: ts.add_inputs(r18(), extra_features=1, num_classes=10, fuse="output", relu=True, dropout=0.5),
        [img(), torch.randn(2)],
    ),
    "freeze_eval": (lambda: ts.freeze(tiny_unet(), exclude=["decoder", "head"]), [img(3, 8)]),
    "freeze_frozen": (lambda: ts.freeze(r18(), ["layer1", "bn1"], bn="frozen"), [img()]),
    "freeze_unfreeze": (lambda: ts.unfreeze(ts.freeze(tiny_unet(), bn="frozen")), [img(3, 8)]),
    "fold_batchnorm": (lambda: ts.fold_batchnorm(tiny_unet().eval()), [img(3, 8)]),
    "optimize_for_inference": (lambda: ts.optimize_for_inference(r18()), [img()]),
    "replace_module_layer": (lambda: ts.replace_module(tiny_unet(), "stem.3", ts.create_layer("GELU", approximate="tanh")), [img(3, 8)]),
    "replace_module_model": (
        lambda: ts.replace_module(r18(), "fc", ts.replace_head(ts.create_model("mlp", in_features=512, hidden=(16,)), 6)),
        [img()],
    ),
    "replace_module_plain": (lambda: ts.replace_module(randomise_bn_(ts.create_model("resnet50")), "fc", tutorial_head()), [img()]),
    "replace_module_plain_list": (  # the U-Net's decoder, a ModuleList its forward walks
        lambda: ts.replace_module(tiny_unet(), "decoder", nn.ModuleList([nn.Sequential(
            nn.Conv2d(8, 4, 3, padding=1, bias=False, padding_mode="reflect"), nn.BatchNorm2d(4, momentum=0.3),
            nn.LeakyReLU(0.2))])),
        [img(3, 8)],
    ),  # fmt: skip
    "replace_module_plain_dict": (  # a spec graph's nodes live in ModuleDicts
        lambda: ts.replace_module(ts.build(GRAPH), "blocks", nn.ModuleDict(dict(
            a=nn.Sequential(nn.Linear(4, 6), nn.GELU("tanh"), nn.Linear(6, 4)), b=nn.Linear(4, 2, bias=False)))),
        [torch.randn(3, 4)],
    ),  # fmt: skip
    "replace_head_layered": (lambda: ts.replace_head(r18(), 10, hidden=[32, 16], dropout=0.25, output="LogSoftmax"), [img()]),
    "replace_head_tutorial": (  # the tutorial's named head in one call; "replace_module_plain" is the same head by hand
        lambda: ts.replace_head(randomise_bn_(ts.create_model("resnet50")), 10, hidden=[128], dropout=0.5,
                                names=["fc1", "relu1", "dropout1", "fc2", "output"], output="LogSoftmax"),
        [img()],
    ),  # fmt: skip
    "chain_resnet": (lambda: chain(r18(), ["layer4", "fc"]), [img(1)]),
    "chain_unet": (lambda: chain(tiny_unet(), ["decoder", "head"]), [img(1, 8)]),
    "chain_fpn": (lambda: ts.fold_batchnorm(ts.adapt_input_channels(ts.create_model("resnet18_fpn", out_channels=8), 2).eval()), [img(2)]),
}


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory) -> dict[str, tuple]:
    """Every case saved here, then all loaded in ONE fresh Python process (fresh imports, fresh registry)."""
    root = tmp_path_factory.mktemp("whole")
    parents = {}
    for name, (make, inputs) in CASES.items():
        torch.manual_seed(0)
        model = make()
        case = root / name
        ts.save_model(model, case / "model")
        save_file({f"x{i}": x for i, x in enumerate(inputs)}, case / "inputs.safetensors")
        # BLAS rounding can depend on the input's memory alignment: both sides run freshly allocated clones
        parents[name] = observe(copy.deepcopy(model), [x.clone() for x in inputs])
    script = root / "child.py"
    script.write_text(
        "import torch\nfrom torch import nn\n" + _source(observe) + CHILD.replace("OBSERVE", "observe")
    )
    subprocess.run([sys.executable, str(script), *(str(root / n) for n in CASES)], check=True, timeout=600)
    return {
        n: (parents[n], (load_file(root / n / "child.safetensors"), json.loads((root / n / "child.json").read_text())))
        for n in CASES
    }


def _source(fn) -> str:
    import inspect

    return inspect.getsource(fn)


@pytest.mark.parametrize("name", list(CASES))
def test_fresh_process_rebuilds_bitwise(round_trips, name):
    (tensors, facts), (child_tensors, child_facts) = round_trips[name]
    assert child_facts["types"] == facts["types"]
    assert child_facts["config"] == json.loads(json.dumps(facts["config"]))  # the steps come back, to be saved again
    assert list(child_tensors) == sorted(tensors) or set(child_tensors) == set(tensors)
    for key, value in tensors.items():
        assert child_tensors[key].dtype == value.dtype and torch.equal(child_tensors[key], value), (name, key)
    assert child_facts["requires_grad"] == facts["requires_grad"]
    assert child_facts["training"] == facts["training"]  # BatchNorm pinned to eval stays pinned after .train()


def test_the_cases_cover_every_recorded_operation():
    from torchsmith.steps import recorded_ops

    seen = set()
    for make, _ in CASES.values():
        torch.manual_seed(0)
        seen |= {step["op"] for step in ts.model_config(make())["steps"]}
    assert seen == set(recorded_ops())


def test_a_frozen_batchnorm_pinned_in_eval_stays_pinned_after_load(tmp_path):
    model = ts.freeze(r18(), ["bn1"])
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m").train()
    assert not loaded.bn1.training and loaded.layer1[0].bn1.training
    ts.unfreeze(loaded)  # unfreeze works on a loaded model, and is recorded in turn
    assert loaded.bn1.training and ts.model_config(loaded)["steps"][-1] == {"op": "unfreeze"}


def test_unfreeze_after_load_gives_batchnorm_with_the_loaded_values(tmp_path):
    model = ts.freeze(r18(), bn="frozen")
    ts.save_model(model, tmp_path / "m")
    loaded = ts.unfreeze(ts.load_model(tmp_path / "m"))
    assert type(loaded.bn1) is nn.BatchNorm2d and loaded.bn1.weight.requires_grad
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var) and not loaded.bn1.running_var.is_meta


# save_model never writes what load_model cannot rebuild


class Swish(nn.Module):  # a layer of the user's own: not data
    def forward(self, x):
        return x * torch.sigmoid(x)


class MyReLU(nn.ReLU):  # a subclass of an allowed layer: its forward may differ, so it is not data either
    pass


@pytest.mark.parametrize("module, why", [
    (Swish(), "layer1.0.relu: test_whole_models.Swish is not a torch.nn layer on the allow-list"),
    (MyReLU(), "layer1.0.relu: test_whole_models.MyReLU is not a torch.nn layer on the allow-list (a subclass of an allowed one)"),
    (nn.Sequential(nn.ReLU(), nn.CrossMapLRN2d(3)),  # torch.nn, but not on the allow-list
     "layer1.0.relu.1: torch.nn.modules.normalization.CrossMapLRN2d is not a torch.nn layer on the allow-list"),
])  # fmt: skip
def test_replace_module_with_a_module_that_is_not_plain_data_is_refused_at_save(tmp_path, module, why):
    model = ts.replace_module(r18(), "layer1.0.relu", module)
    assert model(img()).shape == (2, 4)  # it runs; it just cannot be written down
    with pytest.raises(ts.UnsaveableModelError) as info:
        ts.save_model(model, tmp_path / "m")
    msg = str(info.value)
    assert f"layer1.0.relu: expected ReLU, found {type(module).__name__}" in msg
    assert "'layer1.0.relu' is not plain data, so it could not be recorded: " + why in msg
    assert "create_layer" in msg and "register_model" in msg and "save_weights" in msg
    assert not (tmp_path / "m").exists()


def test_replace_module_with_torch_nn_layers_saves_and_loads(tmp_path):
    """What was refused before the config codec described plain modules: nn.GELU() put in by replace_module."""
    model = ts.replace_module(r18(), "layer1.0.relu", nn.GELU())
    assert ts.model_config(model)["steps"] == [{"op": "replace_module", "path": "layer1.0.relu", "spec": "GELU"}]
    ts.save_model(model, tmp_path / "m")
    assert type(ts.load_model(tmp_path / "m").layer1[0].relu) is nn.GELU
    # described through create_layer, the same change saves and comes back as before
    model = ts.replace_module(r18(), "layer1.0.relu", ts.create_layer("GELU"))
    ts.save_model(model, tmp_path / "m")
    assert type(ts.load_model(tmp_path / "m").layer1[0].relu) is nn.GELU


def test_a_plain_module_assigned_by_hand_is_refused_with_the_way_to_record_it(tmp_path):
    model = r18()
    model.fc = nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Linear(8, 4))  # not through replace_module
    with pytest.raises(ts.UnsaveableModelError, match=r"'fc' is plain data: put it in with replace_module\(model, 'fc', module\)"):
        ts.save_model(model, tmp_path / "m")


def test_a_module_sharing_weights_with_the_model_is_not_recorded(tmp_path):
    model = r18()
    shared = nn.Sequential(model.layer1[0].conv1, nn.ReLU())  # a description would rebuild it untied
    ts.replace_module(model, "layer1.0.conv2", shared)
    assert ts.model_config(model)["steps"] == []
    with pytest.raises(ts.UnsaveableModelError, match="layer1.0.conv2: expected Conv2d, found Sequential"):
        ts.save_model(model, tmp_path / "m")


def test_hand_edited_attributes_are_refused_at_save_naming_the_differences(tmp_path):
    model = r18()
    model.fc = nn.Linear(512, 3)  # the config still says num_classes=4
    model.layer2[0].bn1 = nn.Identity()
    with pytest.raises(ts.UnsaveableModelError) as info:
        ts.save_model(model, tmp_path / "m")
    msg = str(info.value)
    assert "layer2.0.bn1: expected BatchNorm2d, found Identity" in msg
    assert "fc.weight: expected shape (4, 512), found (3, 512)" in msg
    assert "layer2.0.bn1.weight: expected a (128,) tensor, found none" in msg
    assert not (tmp_path / "m").exists()


def test_a_dtype_change_outside_torchsmith_is_refused_at_save(tmp_path):
    model = tiny_mlp().to(torch.float64)
    with pytest.raises(ts.UnsaveableModelError, match=r"features.0.weight: expected float32, found float64"):
        ts.save_model(model, tmp_path / "m")


def test_a_failed_save_leaves_the_old_directory(tmp_path):
    ts.save_model(tiny_mlp(), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    bad = tiny_mlp()
    bad.head = nn.Linear(8, 9)
    with pytest.raises(ts.UnsaveableModelError):
        ts.save_model(bad, tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


@pytest.mark.parametrize("edit, error", [
    ({"Sequential": [{"Transformer": {}}]}, r"torch.nn.Transformer is not on torchsmith's allow-list"),
    ({"Sequential": [{"builtins.eval": {"source": "1"}}]}, r"torch.nn has no layer 'builtins.eval' on torchsmith's allow-list"),
    ({"Sequential": {"a.b": "ReLU"}}, r"fc.Sequential: child names \['a.b'\] are not letters, digits and _"),
    ({"Linear": {"in_features": 512, "out_features": 4, "device": "cuda"}}, r"fc.Linear: expected \{argument: value\} \(no device or dtype\)"),
])  # fmt: skip
def test_a_hand_edited_module_description_is_refused_at_load(tmp_path, edit, error):
    ts.save_model(ts.replace_module(r18(), "fc", nn.Sequential(nn.Linear(512, 4))), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    doc = json.loads(path.read_text())
    doc["steps"][0]["spec"] = edit
    path.write_text(json.dumps(doc))
    with pytest.raises(ts.TorchsmithError, match=error):
        ts.load_model(tmp_path / "m", verify=False)


def test_a_hand_edited_config_with_an_unknown_step_is_refused_at_load(tmp_path):
    ts.save_model(ts.replace_head(tiny_mlp(), 4), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    doc = json.loads(path.read_text())
    doc["steps"][0]["op"] = "replace_haed"
    path.write_text(json.dumps(doc))
    with pytest.raises(ts.CorruptCheckpointError, match="does not match its checksum"):
        ts.load_model(tmp_path / "m")  # config.json's own checksum catches the edit first
    with pytest.raises(ts.ModelConfigError, match="Did you mean 'replace_head'"):
        ts.load_model(tmp_path / "m", verify=False)



def test_a_torch_compile_wrapper_saves_the_model_it_wraps(tmp_path):
    model = ts.replace_head(tiny_mlp(), 4)
    ts.save_model(torch.compile(model), tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    assert type(loaded) is type(model) and list(loaded.state_dict()) == list(model.state_dict())
