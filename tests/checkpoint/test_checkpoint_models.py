"""save_model / load_model without pickle; a trusted legacy pickle converted once."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ckpt_models import filled
from helpers import snapshot
from torch import nn

import torchsmith as ts
from torchsmith.layers import FrozenBatchNorm2d


# whole models


def test_save_model_writes_config_and_weights_and_load_model_rebuilds(tmp_path):
    src = filled(ts.create_model("resnet18", num_classes=3, norm_layer=FrozenBatchNorm2d), seed=1)
    for name, buf in src.named_buffers():
        if name.endswith("running_var"):
            buf.abs_().add_(1)  # a valid variance, so the forward pass is finite
    assert ts.save_model(src, tmp_path / "r18") == tmp_path / "r18"
    assert sorted(p.name for p in (tmp_path / "r18").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "r18" / "config.json").read_text())
    assert cfg["name"] == "resnet18"
    assert cfg["kwargs"] == {"num_classes": 3, "norm_layer": {"$layer": "frozen_bn"}} and cfg["steps"] == []
    assert cfg["torch_version"] == torch.__version__.split("+")[0] and cfg["torchsmith_version"] == ts.__version__
    assert len(cfg["checksums"]["model.safetensors"]["header_xxh3-64"]) == 16
    model = ts.load_model(tmp_path / "r18")
    assert isinstance(model.bn1, FrozenBatchNorm2d) and model.fc.out_features == 3
    assert not any(t.is_meta for t in model.state_dict().values())
    assert snapshot(model) == snapshot(src)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.eval()(x), src.eval()(x))


def test_registered_class_with_tied_weights_round_trips(tmp_path):
    src = filled(ts.create_model("ckpt_tiny", width=6, tie=True, act_layer=nn.GELU), seed=2)
    ts.save_model(src, tmp_path / "tiny")
    model = ts.load_model(tmp_path / "tiny")
    assert isinstance(model.act, nn.GELU) and model.head.weight is model.embed.weight
    assert snapshot(model) == snapshot(src)


def test_unsaveable_arguments_are_all_named_with_the_fix(tmp_path):
    model = ts.create_model("ckpt_tiny", act_layer=lambda: nn.ReLU(), scale=float("nan"))
    with pytest.raises(ts.UnsaveableModelError) as info:
        ts.save_model(model, tmp_path / "x")
    msg = str(info.value)
    assert "act_layer=<function" in msg and "scale=nan" in msg and "layer names" in msg
    assert not (tmp_path / "x").exists()
    with pytest.raises(ts.UnsaveableModelError, match="register_model"):
        ts.save_model(nn.Linear(2, 2), tmp_path / "y")


def test_load_model_checks_the_config_and_the_pairing(tmp_path):
    ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "a")
    ts.save_model(ts.create_model("ckpt_tiny", width=5), tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ts.CorruptCheckpointError, match="not the file config.json was saved with"):
        ts.load_model(tmp_path / "a")
    ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg | {"name": "no_such_model"}))
    with pytest.raises(ts.CorruptCheckpointError, match="does not match its checksum.*verify=False"):
        ts.load_model(tmp_path / "c")  # an edited config is caught by its own checksum
    with pytest.raises(ts.CheckpointError, match="'no_such_model', which is not registered"):
        ts.load_model(tmp_path / "c", verify=False)
    with pytest.raises(ts.CheckpointError, match="no config.json"):
        ts.load_model(tmp_path)


# pickles (hostile ones: tests/test_reliability_pickles.py)


def test_trusted_whole_model_pickle_can_be_converted(tmp_path):
    src = filled(ts.create_model("ckpt_tiny"), seed=3)
    torch.save(src, tmp_path / "legacy_whole.pt")
    model = ts.load_model(tmp_path / "legacy_whole.pt", trusted=True)
    ts.save_model(model, tmp_path / "converted")
    assert snapshot(ts.load_model(tmp_path / "converted")) == snapshot(src)
