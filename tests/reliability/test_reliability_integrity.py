"""Wrong data, silently: links out of a checkpoint directory, metadata that decides which bytes go
where (aliases, shard indexes, the torch pickle, config.json), and tensors an index does not list.

Each test damages a file in the one way that used to load silently, then checks the load is
refused with a ``TorchsmithError`` naming the file, or loads exactly the original.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from reliability_tools import record, run_child
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app


def _entry_points(path: Path) -> dict:
    """Every way to read weights from ``path``: name -> a call raising or returning the tensors read."""
    return {
        "load_weights": lambda: ts.load_weights(filled(TinyNet(), seed=98), path),
        "read_weights": lambda: ts.read_weights(path),
        "inspect_checkpoint": lambda: ts.inspect_checkpoint(path),
        "convert_checkpoint": lambda: ts.convert_checkpoint(path, path.parent.parent / f"out-{random.random()}.safetensors"),
        "cli inspect": lambda: _cli("inspect", str(path)),
    }


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise ts.CheckpointError(result.output)


def _refused(call, *words: str) -> str:
    with pytest.raises(ts.TorchsmithError) as info:
        call()
    for w in words:
        assert w in str(info.value), str(info.value)
    return str(info.value)


# links out of a directory


def test_links_out_of_a_checkpoint_directory_are_refused_everywhere(tmp_path):
    src = filled(TinyNet(), seed=1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    foreign = ts.save_weights(filled(TinyNet(), seed=2), outside / "other.safetensors")
    refusals = 0
    # a directory whose model.safetensors links out
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").symlink_to(foreign)
    # a sharded checkpoint whose second shard links out (to a copy of the right bytes: still refused)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    index = ts.save_weights(src, sharded / "model.safetensors", max_shard_size=400)
    shard = sorted(sharded.glob("model-0000*.safetensors"))[1]
    shutil.move(shard, outside / shard.name)
    shard.symlink_to(outside / shard.name)
    # a link with ../ inside the directory's name space, resolving out
    dotdot = tmp_path / "dotdot"
    dotdot.mkdir()
    (dotdot / "model.safetensors").symlink_to(Path("..") / "elsewhere" / "other.safetensors")
    for target in (single, sharded, index, dotdot):
        for name, call in _entry_points(target).items():
            _refused(call, "outside the checkpoint directory")
            refusals += 1
    # save_model directories: weights or config.json linking out
    for linked in ("model.safetensors", "config.json"):
        directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / f"m-{linked}")
        shutil.move(directory / linked, outside / f"m-{linked}")
        (directory / linked).symlink_to(outside / f"m-{linked}")
        _refused(lambda: ts.load_model(directory), "outside the checkpoint directory", linked)
        refusals += 1
    # a link that stays inside the directory is fine
    inside = tmp_path / "inside"
    inside.mkdir()
    ts.save_weights(src, inside / "real.safetensors")
    (inside / "model.safetensors").symlink_to("real.safetensors")
    model = filled(TinyNet(), seed=98)
    ts.load_weights(model, inside)
    assert snapshot(model) == snapshot(src)
    record("links out of a directory", refusals=refusals)


def _fifo_and_device_cases(workdir: str) -> list[str]:
    """Run in a child (a hang fails the test by timeout): every case must raise quickly."""
    work = Path(workdir)
    d = work / "fifo"
    d.mkdir()
    os.mkfifo(d / "model.safetensors")
    m = ts.save_model(ts.create_model("ckpt_tiny"), work / "m")
    (m / "config.json").unlink()
    os.mkfifo(m / "config.json")
    out = []
    for call in (
        lambda: ts.read_weights(d / "model.safetensors"),
        lambda: ts.load_weights(TinyNet(), d),
        lambda: ts.inspect_checkpoint(d),
        lambda: ts.load_model(m),
        lambda: ts.read_weights("/dev/zero"),
        lambda: ts.read_weights(work / "fifo" / "model.safetensors"),
    ):
        try:
            call()
            out.append("loaded")
        except ts.TorchsmithError as e:
            out.append(str(e))
    return out


def test_fifos_and_devices_are_refused_without_reading(tmp_path):
    messages = run_child(_fifo_and_device_cases, str(tmp_path), timeout=60)
    assert all("not a regular file" in m for m in messages), messages
    assert "a FIFO" in messages[0] and "a device" in messages[4]


# metadata that decides which bytes go where


def _tied_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    emb1, emb3 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    return {"emb1": emb1, "emb3": emb3, "out": emb1}  # "out" is stored once, as an alias of emb1


def _flip_alias(data: bytes) -> bytes:
    """``out -> emb1`` becomes ``out -> emb3``: one bit ('1' is 0x31, '3' is 0x33)."""
    for old in (b'\\"out\\":\\"emb1\\"', b'"out": "emb1"'):
        if old in data:
            return data.replace(old, old.replace(b"emb1", b"emb3"))
    raise AssertionError("alias not found")


def test_a_flipped_alias_is_refused(tmp_path):
    sd = _tied_state_dict()
    single = ts.save_weights(sd, tmp_path / "t.safetensors")
    single.write_bytes(_flip_alias(single.read_bytes()))
    untied = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(4, 5)) for k in sd})
    for call in (
        lambda: ts.read_weights(single),
        lambda: ts.convert_checkpoint(single, tmp_path / "c.safetensors"),
        lambda: ts.load_weights(untied, single),
        lambda: ts.inspect_checkpoint(single),
    ):
        _refused(call, "t.safetensors", "does not match its checksum")
    assert all(bool((p == 0).all()) for p in untied.values())  # nothing was written
    (tmp_path / "s").mkdir()
    index = ts.save_weights(sd, tmp_path / "s" / "t.safetensors", max_shard_size=100)
    assert index.name.endswith(".index.json")
    index.write_bytes(_flip_alias(index.read_bytes()))
    for call in (lambda: ts.read_weights(index), lambda: ts.load_weights(untied, index)):
        _refused(call, "index.json", "do not match their checksum")


def test_every_one_bit_flip_in_the_torch_pickle_is_caught(tmp_path):
    """The pickle holds the "torchsmith" entry (checksums), names, dtypes, shapes and storage offsets."""
    src = filled(TinyNet(), seed=1)
    path = ts.save_weights(src, tmp_path / "w.pt")
    data = path.read_bytes()
    start = data.index(b"\x80\x02}")  # data.pkl starts with protocol 2 and an empty dict
    end = data.index(b".PK", start) + 1
    rng = random.Random(7)
    outcomes = {"refused": 0, "loaded_original": 0}
    original = snapshot(src)
    for offset in range(start, end):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        model = filled(TinyNet(), seed=98)
        try:
            report = ts.load_weights(model, path)
        except ts.TorchsmithError:
            outcomes["refused"] += 1
            continue
        assert report.checksums == "verified", (offset, report.checksums)  # never "absent"
        assert snapshot(model) == original, offset
        outcomes["loaded_original"] += 1
    assert outcomes["refused"] == end - start  # every byte of the pickle is under the record's CRC-32
    record("torch pickle flips", bytes=end - start, **outcomes)


def test_every_one_bit_flip_in_config_json_is_caught(tmp_path):
    directory = ts.save_model(filled(ts.create_model("ckpt_tiny", scale=0.1), seed=4), tmp_path / "m")
    config = (directory / "config.json").read_bytes()
    expected = snapshot(ts.load_model(directory))
    refused = loaded = 0
    rng = random.Random(8)
    for offset in range(len(config)):
        damaged = bytearray(config)
        damaged[offset] ^= 1 << rng.randrange(8)
        (directory / "config.json").write_bytes(bytes(damaged))
        try:
            model = ts.load_model(directory)
        except ts.TorchsmithError:
            refused += 1
            continue
        # only a flip that changes no value (JSON whitespace) may load
        assert json.loads(bytes(damaged)) == json.loads(config), offset
        assert model.scale == 0.1 and snapshot(model) == expected
        loaded += 1
    assert refused > 0.9 * len(config)
    record("config.json flips", bytes=len(config), refused=refused, loaded_identical=loaded)


def test_a_changed_config_value_is_refused(tmp_path):
    directory = ts.save_model(ts.create_model("ckpt_tiny", scale=0.1), tmp_path / "m")
    text = (directory / "config.json").read_text()
    (directory / "config.json").write_text(text.replace('"scale": 0.1', '"scale": 0.3'))
    _refused(lambda: ts.load_model(directory), "config.json", "does not match its checksum")
    assert ts.load_model(directory, verify=False).scale == 0.3  # an edit on purpose loads with verify=False


# tensors the index does not list


def test_tensors_missing_from_the_weight_map_are_not_loaded(tmp_path):
    """A foreign sharded checkpoint (no torchsmith checksums) whose shard holds a tensor the index omits."""
    src = filled(TinyNet(), seed=1).state_dict()
    names = list(src)
    safetensors.torch.save_file({k: src[k].contiguous() for k in names[:4]}, str(tmp_path / "m-1.safetensors"))
    safetensors.torch.save_file({k: src[k].contiguous() for k in names[4:]}, str(tmp_path / "m-2.safetensors"))
    hidden = names[-1]
    wmap = {k: "m-1.safetensors" if i < 4 else "m-2.safetensors" for i, k in enumerate(names) if k != hidden}
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    assert hidden not in ts.read_weights(index)
    model = filled(TinyNet(), seed=98)
    before = model.state_dict()[hidden].clone()
    report = ts.load_weights(model, index, strict=False)
    assert report.unlisted == [hidden] and report.missing == [hidden]
    assert torch.equal(model.state_dict()[hidden], before)  # not loaded
    assert "unlisted" in str(report) and hidden in str(report)
    # the same edit to an index torchsmith wrote: its checksum catches it
    (tmp_path / "ts").mkdir()
    written = ts.save_weights(src, tmp_path / "ts" / "model.safetensors", max_shard_size=400)
    doc = json.loads(written.read_text())
    del doc["weight_map"][hidden]
    written.write_text(json.dumps(doc))
    _refused(lambda: ts.read_weights(written), "do not match their checksum")
