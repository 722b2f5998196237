"""torchsmith inspect / convert / diff: output, --json and exit codes."""

from __future__ import annotations

import json

import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from torch import nn
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_inspect_json_describes_the_file(tmp_path):
    ts.save_weights(nn.DataParallel(filled(TinyNet(tie=True), seed=1)), tmp_path / "dp.safetensors", metadata={"run": "7"})
    result = run("inspect", str(tmp_path / "dp.safetensors"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "safetensors" and info["layout"] == "single file"
    assert info["tensors"] == 9 and info["values"] == 153 - 12  # the tied head is stored once
    assert info["prefixes"] == {"module.": 9} and info["checksums"] == "verified"
    assert info["aliases"] == {"module.head.weight": "module.embed.weight"}
    assert info["metadata"]["run"] == "7"
    assert ["module.conv.weight", [4, 3, 3, 3], "float32"] in info["entries"]


def test_inspect_table_and_errors(tmp_path):
    ts.save_weights(filled(TinyNet(), seed=2), tmp_path / "w.pt")
    result = run("inspect", str(tmp_path / "w.pt"))
    assert result.exit_code == 0 and "conv.weight" in result.stdout and "checksums: verified" in result.stdout
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    result = run("inspect", str(tmp_path / "bad.safetensors"))
    assert result.exit_code == 1 and "not valid JSON" in result.stderr
    result = run("inspect", str(tmp_path / "nope.safetensors"))
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_convert_pt_to_sharded_safetensors_and_back(tmp_path):
    src = filled(TinyNet(width=16), seed=3)
    ts.save_weights(nn.DataParallel(src), tmp_path / "dp.pt")
    result = run("convert", str(tmp_path / "dp.pt"), str(tmp_path / "m.safetensors"), "--strip-prefix", "module.", "--max-shard-size", "1000", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == str(tmp_path / "m" / "m.safetensors.index.json")  # shards in m/
    dst = TinyNet(width=16)
    report = ts.load_weights(dst, tmp_path / "m" / "m.safetensors.index.json", prefix=None)
    assert snapshot(dst) == snapshot(src) and report.checksums == "verified"
    result = run("convert", str(tmp_path / "m" / "m.safetensors.index.json"), str(tmp_path / "back.pt"))
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert torch.equal(ts.read_weights(tmp_path / "back.pt")["conv.weight"], src.conv.weight)


def test_convert_refuses_pickles_unless_trusted(tmp_path):
    torch.save(filled(TinyNet(), seed=4), tmp_path / "whole.pt")
    result = run("convert", str(tmp_path / "whole.pt"), str(tmp_path / "w.safetensors"))
    assert result.exit_code == 1 and "Refused" in result.stderr and not (tmp_path / "w.safetensors").exists()
    result = run("convert", str(tmp_path / "whole.pt"), str(tmp_path / "w.safetensors"), "--trusted")
    assert result.exit_code == 0 and ts.inspect_checkpoint(tmp_path / "w.safetensors").tensors == 9


def test_diff_exit_codes_and_json(tmp_path):
    a = filled(TinyNet(), seed=5)
    ts.save_weights(a, tmp_path / "a.safetensors")
    ts.save_weights(nn.DataParallel(a), tmp_path / "a_dp.pt")
    assert run("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "a_dp.pt")).exit_code == 0
    with torch.no_grad():
        a.conv.bias[1] += 0.5
    sd = a.state_dict()
    sd["extra"] = torch.ones(1)
    ts.save_weights(sd, tmp_path / "b.safetensors")
    result = run("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json")
    assert result.exit_code == 3
    d = json.loads(result.stdout)
    assert d["only_in_b"] == ["extra"] and d["only_in_a"] == [] and d["same"] is False
    assert d["max_abs_diff"]["conv.bias"] == 0.5 and d["max_abs_diff"]["conv.weight"] == 0.0
    # against a model name: keys, shapes and dtypes of the model built on meta, not random values
    result = run("diff", str(tmp_path / "a.safetensors"), "ckpt_tiny", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["max_abs_diff"] == {}, result.output
    result = run("diff", str(tmp_path / "b.safetensors"), "ckpt_tiny")
    assert result.exit_code == 3 and "- extra" in result.stdout and "different" in result.stdout
    wide = filled(TinyNet(width=5), seed=5)
    ts.save_weights(wide, tmp_path / "wide.safetensors")
    result = run("diff", str(tmp_path / "wide.safetensors"), "ckpt_tiny", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["shape"]["conv.weight"] == [[5, 3, 3, 3], [4, 3, 3, 3]]
    result = run("diff", str(tmp_path / "a.safetensors"), "ckpt_tinyy")
    assert result.exit_code == 1 and "Did you mean 'ckpt_tiny'" in result.stderr


def test_inspect_summarizes_many_tensors_unless_asked_for_all(tmp_path):
    path = ts.save_weights({f"layer{i:03d}.w": torch.zeros(2) for i in range(100)}, tmp_path / "many.safetensors")
    result = run("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "layer039.w" in result.stdout and "layer040.w" not in result.stdout
    assert "and 60 more tensors" in result.stdout and "tensors: 100" in result.stdout
    result = run("inspect", str(path), "--all")
    assert "layer099.w" in result.stdout and "more tensors" not in result.stdout


def test_convert_json_is_the_report_and_shards_go_into_a_folder_named_after_the_target(tmp_path):
    src = filled(TinyNet(width=16), seed=3)
    ts.save_weights(nn.DataParallel(src), tmp_path / "dp.pt")
    result = run("convert", str(tmp_path / "dp.pt"), str(tmp_path / "out" / "m.safetensors"), "--strip-prefix", "module.",
                 "--max-shard-size", "1000", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    folder = tmp_path / "out" / "m"
    shards = sorted(p.name for p in folder.iterdir())
    assert row["folder"] == str(folder) and row["output"] == str(folder / "m.safetensors.index.json")
    assert row["files"] == shards and "m.safetensors.index.json" in shards and len(shards) > 2
    assert all(name.startswith("m-000") for name in shards if name != "m.safetensors.index.json")
    sd = src.state_dict()
    assert row["tensors"] == len(sd) and row["values"] == sum(t.numel() for t in sd.values())
    assert row["bytes"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert row["format"] == "safetensors-sharded" and row["stripped_prefix"] == "module."
    dst = TinyNet(width=16)
    assert ts.load_weights(dst, folder).ok and snapshot(dst) == snapshot(src)  # the folder loads as is
    result = run("convert", str(tmp_path / "dp.pt"), str(tmp_path / "one.safetensors"), "--strip-prefix", "module.")
    assert result.exit_code == 0 and result.stdout.startswith(f"wrote {tmp_path / 'one.safetensors'}: {len(sd)} tensors")


def test_diff_groups_by_kind_caps_each_and_shows_keys_as_matched(tmp_path):
    a = {f"block{i:02d}.w": torch.zeros(2) for i in range(30)}
    b = {f"module.block{i:02d}.w": torch.zeros(3 if i < 12 else 2) for i in range(15)}
    b.update({f"module.extra{i:02d}": torch.ones(1) for i in range(11)})
    ts.save_weights(a, tmp_path / "a.safetensors")
    ts.save_weights(b, tmp_path / "b.safetensors")
    result = run("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"keys matched after removing 'module.' from 15 keys of {tmp_path / 'b.safetensors'}"
    assert f"only in {tmp_path / 'a.safetensors'}: 15" in lines and f"only in {tmp_path / 'b.safetensors'}: 11" in lines
    assert "shape differs: 12" in lines and lines[-1] == "different"
    assert "  shape differs" not in result.stdout and "module." not in "".join(lines[1:])  # keys as matched
    assert sum(line.startswith("  - ") for line in lines) == 10 and "  ... and 5 more (--all lists them; --json gives all)" in lines
    assert sum(line.startswith("  + ") for line in lines) == 10 and "  ... and 1 more (--all lists them; --json gives all)" in lines
    assert "  block00.w: (2,) vs (3,)" in lines
    full = run("diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--all").stdout.splitlines()
    assert sum(line.startswith("  - ") for line in full) == 15 and sum(line.startswith("  + ") for line in full) == 11
    assert sum(line.startswith("  block") and " vs " in line for line in full) == 12 and "more (" not in "".join(full)
