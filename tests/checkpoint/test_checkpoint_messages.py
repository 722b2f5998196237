"""What a refused load says: short (counts, the first few keys, the model the weights look like), a prefix
hint only when a prefix explains the keys, and the tutorial's ``torch.save(model.state_dict, path)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint.keys import explaining_prefix


def refused(model, path, **kwargs) -> ts.IncompatibleCheckpointError:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ts.IncompatibleCheckpointError) as caught:
        ts.load_weights(model, path, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
    return caught.value


def test_resnet152_weights_into_resnet50_say_so_in_25_lines(tmp_path):
    path = ts.save_weights(ts.create_model("resnet152"), tmp_path / "r152.safetensors")
    err = refused(ts.create_model("resnet50"), path)
    message = str(err)
    extra = set(ts.create_model("resnet152").state_dict()) - set(ts.create_model("resnet50").state_dict())
    assert len(message.splitlines()) <= 25  # was 618 lines, one per key
    assert f"{len(extra)} file keys unknown to the model" in message
    assert "These weights look like 'resnet152'" in message
    assert f"  unexpected  {len(extra)}" in message and f"... and {len(extra) - 3} more unexpected" in message
    assert "prefix=" not in message  # no prefix explains a deeper network
    assert "  matching    320 of 320 model tensors" in message and "none loaded (refused)" in message
    assert "  loaded " not in message  # "Nothing was loaded" is not contradicted by a "loaded 320" row
    assert sorted(err.report.unexpected) == sorted(extra)  # the full list stays on the error


def test_counts_of_each_kind_and_a_guess_despite_another_head(tmp_path):
    path = ts.save_weights(ts.create_model("resnet34", num_classes=10), tmp_path / "r34.safetensors")
    err = refused(ts.create_model("resnet18"), path)
    message = str(err)
    r18 = ts.create_model("resnet18").state_dict()
    r34 = ts.create_model("resnet34", num_classes=10).state_dict()
    shapes = [k for k in set(r18) & set(r34) if r18[k].shape != r34[k].shape]
    assert f"{len(set(r34) - set(r18))} file keys unknown to the model" in message
    assert f"{len(shapes)} keys with a different shape or dtype" in message
    assert "look like 'resnet34' built with other arguments (2 tensors differ in shape, e.g. fc.weight (10, 512)" in message
    assert len(message.splitlines()) <= 25


def test_no_guess_when_no_registered_model_has_these_keys(tmp_path):
    path = ts.save_weights({"conv.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "odd.safetensors")
    message = str(refused(ts.create_model("mlp"), path))
    assert "look like" not in message and "strict=False" in message


def test_prefix_hint_only_when_a_prefix_explains_the_keys(tmp_path):
    model = ts.create_model("resnet18")
    wrapped = nn.Module()
    wrapped.backbone = ts.create_model("resnet18")
    wrapped.head = nn.Linear(2, 2)
    path = ts.save_weights(wrapped, tmp_path / "wrapped.safetensors")
    message = str(refused(model, path))
    # as load_state_dict: BatchNorm fills its own num_batches_tracked, so those are not missing
    missing = model.load_state_dict(wrapped.state_dict(), strict=False).missing_keys
    assert "ass prefix='backbone.' to strip it" in message and f"finds {len(missing)} of the" in message
    assert ts.load_weights(model, path, prefix="backbone.", strict=False).missing == []  # the hint works
    other = ts.save_weights(ts.create_model("mlp"), tmp_path / "mlp.safetensors")
    assert "prefix=" not in str(refused(model, other))


@pytest.mark.parametrize("missing, unexpected, expected", [
    (["a.w", "b.w"], ["model.a.w", "model.b.w"], ("model.", 2)),
    (["model.a.w", "model.b.w"], ["a.w", "b.w"], ("model.", 2)),
    (["a.w", "b.w", "c.w"], ["x.a.w", "y.z"], None),  # finds 1 of 3: not an explanation
    (["a.w"], [], None),
    (["layer1.w"], ["backbone.body.layer1.w"], ("backbone.body.", 1)),
])
def test_explaining_prefix(missing, unexpected, expected):
    assert explaining_prefix(missing, unexpected) == expected


def test_state_dict_saved_without_the_call_says_so(tmp_path):
    model = ts.create_model("mlp")
    torch.save(model.state_dict, tmp_path / "model.pth")  # the tutorial's missing ()
    with pytest.raises(ts.UnsafeCheckpointError) as caught:
        ts.load_weights(model, tmp_path / "model.pth")
    message = str(caught.value)
    assert "this file holds model.state_dict without the call" in message
    assert "save model.state_dict() (with parentheses)" in message.replace("Save", "save")
    assert "Nothing was executed" in message
    # the maker of the file can still get the weights out of it
    out = ts.convert_checkpoint(tmp_path / "model.pth", tmp_path / "model.safetensors", trusted=True)
    fresh = ts.create_model("mlp")
    assert ts.load_weights(fresh, out).ok
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_a_whole_pickled_model_is_still_refused_as_before(tmp_path):
    torch.save(ts.create_model("mlp"), tmp_path / "whole.pth")
    with pytest.raises(ts.UnsafeCheckpointError, match="Refused to load .* wants to import torchsmith.zoo.mlps.MLP"):
        ts.load_weights(ts.create_model("mlp"), tmp_path / "whole.pth")
