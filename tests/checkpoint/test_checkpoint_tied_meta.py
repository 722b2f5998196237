"""load_weights: keys tied in the model but absent from the file; models built on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import GOLDEN, snapshot
from safetensors.torch import save_file
from torch import nn

import torchsmith as ts

GOLDEN = GOLDEN


class Positions(nn.Module):
    """An embedding plus what no checkpoint holds: a non-persistent buffer, and a tensor in a plain attribute."""

    def __init__(self, *, length: int = 6, width: int = 4):
        super().__init__()
        self.embed = nn.Embedding(length, width)
        self.gain = nn.Parameter(torch.randn(width))  # (width,); draws from the global generator as it is built
        self.register_buffer("position_ids", torch.arange(length).unsqueeze(0), persistent=False)  # (1, L)
        self.scales = [torch.linspace(0.5, 1.5, width)]  # (width,), like torchvision's anchor cells

    def forward(self) -> torch.Tensor:
        return self.embed(self.position_ids) * self.scales[0] * self.gain  # (1, L, width)


@ts.register_model(name="ckpt_positions")
def registered_positions(*, length: int = 6, width: int = 4) -> Positions:
    return Positions(length=length, width=width)


# tied in the model, absent from the file


def test_a_model_tie_the_file_leaves_out_is_tied_not_missing(tmp_path):
    src = filled(TinyNet(tie=True), seed=1)
    sd = {k: v for k, v in src.state_dict().items() if k != "head.weight"}
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")  # as save_pretrained does
    dst = TinyNet(tie=True)
    report = ts.load_weights(dst, tmp_path / "w.safetensors")  # strict
    assert report.ok and report.missing == []
    assert report.tied_in_model == [("head.weight", "embed.weight")]
    assert dst.head.weight is dst.embed.weight and snapshot(dst) == snapshot(src)
    assert "loaded      8 (+1 tied) of 9 model tensors" in str(report)


def test_the_same_file_into_an_untied_model_is_missing(tmp_path):
    sd = {k: v for k, v in filled(TinyNet(), seed=2).state_dict().items() if k != "head.weight"}
    ts.save_weights(sd, tmp_path / "w.safetensors")
    dst = TinyNet()
    before = snapshot(dst)
    with pytest.raises(ts.IncompatibleCheckpointError, match="1 model keys missing") as err:
        ts.load_weights(dst, tmp_path / "w.safetensors")
    assert err.value.report.missing == ["head.weight"] and snapshot(dst) == before


def test_tied_key_into_a_meta_model_shares_one_new_parameter(tmp_path):
    src = filled(TinyNet(tie=True), seed=3)
    sd = {k: v for k, v in src.state_dict().items() if k != "head.weight"}
    ts.save_weights(sd, tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = TinyNet(tie=True)
    report = ts.load_weights(dst, tmp_path / "w.safetensors")
    assert report.ok and dst.head.weight is dst.embed.weight and not dst.head.weight.is_meta
    assert snapshot(dst) == snapshot(src)


# built on meta


def test_meta_model_recomputes_what_no_file_holds(tmp_path):
    src = filled(registered_positions(length=6), seed=4)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    assert sorted(ts.read_weights(path)) == ["embed.weight", "gain"]
    with torch.device("meta"):
        dst = registered_positions(length=6)
    assert dst.position_ids.is_meta and dst.scales[0].is_meta
    report = ts.load_weights(dst, path)
    assert report.ok and report.recomputed == ["position_ids", "scales.0"] and report.on_meta == []
    assert torch.equal(dst.position_ids, torch.arange(6).unsqueeze(0))  # what __init__ computes
    assert torch.equal(dst.scales[0], torch.linspace(0.5, 1.5, 4))
    assert torch.equal(dst(), src())
    assert "recomputed  2" in str(report)


def test_meta_model_that_cannot_recompute_fails_strictly_and_names_the_tensors(tmp_path):
    path = ts.save_weights(filled(Positions(), seed=5), tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = Positions()  # not built through the registry: nothing says how to build it again
    with pytest.raises(ts.IncompatibleCheckpointError, match="left on the meta device") as err:
        ts.load_weights(dst, path)
    assert err.value.report.on_meta == ["position_ids", "scales.0"]
    assert dst.embed.weight.is_meta  # nothing was loaded
    report = ts.load_weights(dst, path, strict=False)
    assert not report.ok and report.on_meta == ["position_ids", "scales.0"]
    assert not dst.embed.weight.is_meta and dst.position_ids.is_meta
    assert str(report) + "\n" == (GOLDEN / "load_report_meta.txt").read_text().replace("PATH", str(path))


def test_recomputing_leaves_the_random_state_alone(tmp_path):
    path = ts.save_weights(filled(registered_positions(), seed=6), tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = registered_positions()
    torch.manual_seed(7)
    ts.load_weights(dst, path)
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))
    assert nn.Module.register_parameter.__qualname__ == "Module.register_parameter"  # the build's patch is undone
