"""Checkpoint details: float8 dtypes, the suffix table, NaN-aware diff, inspect's value count, convert's ties
and new directories."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import bits, snapshot
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.checkpoint.formats import DTYPES, TORCH_SUFFIXES
from torchsmith.checkpoint.safetensors_format import SafetensorsFile
from torchsmith.cli import app

FLOAT8 = sorted(name for name in DTYPES if name.startswith("F8_"))


def every_byte(dtype: torch.dtype) -> torch.Tensor:
    """All 256 bit patterns of a one-byte dtype (NaNs and infinities included), as a (16, 16) tensor."""
    return torch.arange(256, dtype=torch.uint8).view(dtype).reshape(16, 16)


# float8


def test_every_float8_dtype_of_the_format_is_known():
    expected = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
                "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}
    assert {k: str(v).removeprefix("torch.") for k, v in DTYPES.items() if k.startswith("F8_")} == {
        k: v for k, v in expected.items() if hasattr(torch, v)
    }
    assert len(FLOAT8) == 5  # torch 2.13 has them all


@pytest.mark.parametrize("name", FLOAT8)
def test_float8_written_by_us_reads_bitwise_with_us_and_the_package(tmp_path, name):
    t = every_byte(DTYPES[name])
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        ts.save_weights({"w": t}, path)
        back = ts.read_weights(path)["w"]
        assert back.dtype == t.dtype and bits(back) == bits(t)
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        theirs = f.get_tensor("w")
    assert theirs.dtype == t.dtype and bits(theirs) == bits(t)
    assert SafetensorsFile(tmp_path / "w.safetensors").entries["w"].dtype == name


@pytest.mark.parametrize("name", FLOAT8)
def test_float8_written_by_the_package_reads_bitwise_and_loads(tmp_path, name):
    t = every_byte(DTYPES[name])
    save_file({"w": t}, tmp_path / "p.safetensors")
    assert ts.inspect_checkpoint(tmp_path / "p.safetensors").entries == [("w", [16, 16], str(t.dtype)[6:])]
    back = ts.read_weights(tmp_path / "p.safetensors")["w"]
    assert back.dtype == t.dtype and bits(back) == bits(t)
    holder = torch.nn.Module()
    holder.register_buffer("w", torch.zeros(16, 16, dtype=t.dtype))
    assert ts.load_weights(holder, tmp_path / "p.safetensors").ok and bits(holder.w) == bits(t)


# one suffix table


@pytest.mark.parametrize("suffix", TORCH_SUFFIXES)
def test_every_torch_suffix_writes_a_torch_file(tmp_path, suffix):
    src = filled(TinyNet(), seed=1)
    path = ts.save_weights(src, tmp_path / f"x{suffix}")
    assert zipfile.is_zipfile(path)  # torch.save's format, not safetensors
    plain = torch.load(path, weights_only=True)
    assert set(plain["state_dict"]) == set(src.state_dict())
    dst = TinyNet()
    assert ts.load_weights(dst, path).format == "torch" and snapshot(dst) == snapshot(src)


def test_other_suffixes_write_safetensors(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=2), tmp_path / "x.weights")
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == set(TinyNet().state_dict())


# diff


def test_a_file_holding_nan_equals_itself(tmp_path):
    sd = filled(TinyNet(), seed=3).state_dict()
    sd["conv.bias"][0] = float("nan")
    sd["bn.weight"][1] = float("inf")
    ts.save_weights(sd, tmp_path / "a.safetensors")
    d = ts.diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    assert d.same and d.max_abs_diff["conv.bias"] == 0.0 and d.max_abs_diff["bn.weight"] == 0.0
    ts.save_weights(sd, tmp_path / "a.pt")
    assert ts.diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "a.pt").same


def test_nan_against_a_number_differs(tmp_path):
    sd = filled(TinyNet(), seed=4).state_dict()
    ts.save_weights(sd, tmp_path / "a.safetensors")
    other = {k: v.clone() for k, v in sd.items()}
    other["conv.bias"][0] = float("nan")
    other["conv.weight"][0, 0, 0, 0] += 0.25
    ts.save_weights(other, tmp_path / "b.safetensors")
    d = ts.diff_checkpoints(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert not d.same and d.max_abs_diff["conv.bias"] == float("inf")
    expected = (sd["conv.weight"].double() - other["conv.weight"].double()).abs().max().item()
    assert d.max_abs_diff["conv.weight"] == expected and d.max_abs_diff["bn.weight"] == 0.0


# inspect


def test_inspect_counts_values_of_parameters_and_buffers(tmp_path):
    model = filled(TinyNet(), seed=5)
    ts.save_weights(model, tmp_path / "w.safetensors")
    info = ts.inspect_checkpoint(tmp_path / "w.safetensors")
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers > 0 and info.values == params + buffers
    assert "parameters" not in info.to_dict()
    out = CliRunner().invoke(app, ["inspect", str(tmp_path / "w.safetensors")]).stdout
    assert f"values: {params + buffers:,} (parameters and buffers)" in out and "parameters:" not in out


# convert


def test_convert_of_a_bin_with_tied_tensors_stores_them_once(tmp_path):
    src = filled(TinyNet(tie=True), seed=6)
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")  # torch.save keeps the tie
    out = ts.convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "model.safetensors")
    st = SafetensorsFile(out)
    assert st.aliases == {"head.weight": "embed.weight"} and "head.weight" not in st.entries
    with safe_open(out, "pt") as f:
        assert set(f.keys()) == set(src.state_dict()) - {"head.weight"}
    dst = TinyNet(tie=True)
    report = ts.load_weights(dst, out)
    assert report.ok and dst.head.weight is dst.embed.weight and snapshot(dst) == snapshot(src)
    assert ts.inspect_checkpoint(tmp_path / "pytorch_model.bin").aliases == {"head.weight": "embed.weight"}


def test_convert_to_shards_in_a_new_directory_creates_it(tmp_path):
    src = filled(TinyNet(width=16), seed=7)
    ts.save_weights(src, tmp_path / "w.pt")
    out = ts.convert_checkpoint(tmp_path / "w.pt", tmp_path / "new" / "sub" / "m.safetensors", max_shard_size=1000)
    assert out == tmp_path / "new" / "sub" / "m.safetensors.index.json"
    assert len(json.loads(out.read_text())["weight_map"]) == 9
    dst = TinyNet(width=16)
    assert ts.load_weights(dst, out).ok and snapshot(dst) == snapshot(src)


def test_a_failed_convert_leaves_no_new_directory(tmp_path):
    ts.save_weights(filled(TinyNet(), seed=8), tmp_path / "w.pt")

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ts.convert_checkpoint(tmp_path / "w.pt", tmp_path / "new" / "sub" / "m.safetensors", progress=interrupt)
    assert not (tmp_path / "new").exists()
