"""save_model / load_model without pickle, and refusal of pickles that would run code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from ckpt_models import TinyNet, filled, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
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
    assert cfg["kwargs"] == {"num_classes": 3, "norm_layer": {"$layer": "frozen_bn"}}
    assert cfg["torch_version"] == torch.__version__.split("+")[0] and cfg["torchsmith_version"] == ts.__version__
    assert len(cfg["checksums"]["model.safetensors"]["header_xxh3-64"]) == 16
    model, report = ts.load_model(tmp_path / "r18", return_report=True)
    assert isinstance(model.bn1, FrozenBatchNorm2d) and model.fc.out_features == 3
    assert not any(t.is_meta for t in model.state_dict().values())
    assert snapshot(model) == snapshot(src) and report.ok and report.checksums == "verified"
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
    with pytest.raises(ts.CheckpointError, match="'no_such_model', which is not registered"):
        ts.load_model(tmp_path / "c")
    with pytest.raises(ts.CheckpointError, match="no config.json"):
        ts.load_model(tmp_path)


# hostile pickles


class Payload:
    """Unpickling this runs a shell command that creates the sentinel file."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _hostile_files(tmp_path):
    sentinel = tmp_path / "PWNED"
    payload = Payload(sentinel)
    torch.save({"w": torch.ones(2), "evil": payload}, tmp_path / "zip.pt")
    torch.save({"w": torch.ones(2), "evil": payload}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"w": payload}, protocol=2))
    torch.save(TinyNet(), tmp_path / "whole.pt")
    return sentinel, ["zip.pt", "legacy.pt", "raw.pkl", "whole.pt"]


def test_hostile_pickles_are_refused_everywhere_and_nothing_runs(tmp_path):
    sentinel, names = _hostile_files(tmp_path)
    entry_points = [
        lambda p: ts.load_weights(TinyNet(), p),
        lambda p: ts.read_weights(p),
        lambda p: ts.load_model(p),
        lambda p: ts.inspect_checkpoint(p),
        lambda p: ts.diff_checkpoints(p, p),
        lambda p: ts.convert_checkpoint(p, tmp_path / "out.safetensors"),
    ]
    for name in names:
        for call in entry_points:
            with pytest.raises(ts.UnsafeCheckpointError) as info:
                call(tmp_path / name)
            msg = str(info.value)
            assert name in msg and "--trusted" in msg and "Nothing was executed" in msg
            expected = "ckpt_models.TinyNet" if name == "whole.pt" else "posix.system"
            assert expected in msg, (name, msg)
    assert not sentinel.exists() and not (tmp_path / "out.safetensors").exists()


def test_trusted_really_unpickles_so_the_sentinel_test_means_something(tmp_path):
    sentinel, _ = _hostile_files(tmp_path)
    with pytest.raises(ts.CheckpointError):  # runs the payload, then finds no model
        ts.load_model(tmp_path / "zip.pt", trusted=True)
    assert sentinel.exists()


def test_trusted_whole_model_pickle_can_be_converted(tmp_path):
    src = filled(ts.create_model("ckpt_tiny"), seed=3)
    torch.save(src, tmp_path / "legacy_whole.pt")
    model = ts.load_model(tmp_path / "legacy_whole.pt", trusted=True)
    ts.save_model(model, tmp_path / "converted")
    assert snapshot(ts.load_model(tmp_path / "converted")) == snapshot(src)


# fuzzing: only TorchsmithError escapes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=64))
def test_random_safetensors_bytes_only_raise_torchsmith_errors(tmp_path_factory, header, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    try:
        ts.read_weights(path)
    except ts.TorchsmithError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8))
def test_random_configs_only_raise_torchsmith_errors(tmp_path_factory, doc):
    directory = tmp_path_factory.mktemp("cfg")
    ts.save_model(ts.create_model("ckpt_tiny"), directory)
    base = json.loads((directory / "config.json").read_text())
    for variant in (doc, {**base, "kwargs": doc}, {**base, "name": doc}, {**base, "checksums": doc}):
        (directory / "config.json").write_text(json.dumps(variant))
        try:
            ts.load_model(directory)
        except ts.TorchsmithError:
            pass
