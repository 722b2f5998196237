"""The one kind of link a checkpoint directory may hold: a Hugging Face cache snapshot's link into its own
repository's ``blobs/``. Every other link out of a snapshot (another repository's blobs, a file outside the
cache, a blob that is itself a link out) is refused like any link out of a directory, everywhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from hub_fixtures import hf_repo
from reliability_tools import record

import torchsmith as ts


def _save(model, path: Path) -> Path:
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _calls(target: Path) -> dict:
    return {
        "load_weights": lambda: ts.load_weights(filled(TinyNet(), seed=98), target),
        "read_weights": lambda: ts.read_weights(target),
        "inspect_checkpoint": lambda: ts.inspect_checkpoint(target),
    }


def _relink(link: Path, to: Path) -> None:
    link.unlink()
    os.symlink(os.path.relpath(to, link.parent), link)


def test_snapshot_links_into_their_own_blobs_load(tmp_path):
    src = filled(TinyNet(), seed=1)
    snap = hf_repo(tmp_path / "hub", "org/tiny", {"model.safetensors": _save(src, tmp_path / "w.safetensors")})
    assert (snap / "model.safetensors").is_symlink()
    for name, call in _calls(snap).items():
        out = call()
        if name == "load_weights":
            assert out.ok
    model = filled(TinyNet(), seed=98)
    ts.load_weights(model, snap)
    assert snapshot(model) == snapshot(src)


def test_snapshot_links_anywhere_else_are_refused(tmp_path):
    hub = tmp_path / "hub"
    mine = _save(filled(TinyNet(), seed=1), tmp_path / "mine.safetensors")
    other = hf_repo(hub, "org/other", {"model.safetensors": _save(filled(TinyNet(), seed=2), tmp_path / "o.safetensors")})
    other_blob = (other / "model.safetensors").resolve()
    outside = tmp_path / "outside.safetensors"
    shutil.copy(mine, outside)
    cases = {}
    # a link into another repository's blobs
    snap = hf_repo(hub, "org/a", {"model.safetensors": mine})
    _relink(snap / "model.safetensors", other_blob)
    cases["another repository's blob"] = snap
    # a link to a file outside the cache
    snap = hf_repo(hub, "org/b", {"model.safetensors": mine})
    _relink(snap / "model.safetensors", outside)
    cases["a file outside the cache"] = snap
    # a blob that is itself a link out: the opened file's real path counts, not the first hop
    snap = hf_repo(hub, "org/c", {"model.safetensors": mine})
    blob = (snap / "model.safetensors").resolve()
    blob.unlink()
    blob.symlink_to(outside)
    cases["a blob linking out"] = snap
    # a folder that only looks like a cache: blobs/ beside a folder that is not snapshots/REV
    fake = tmp_path / "notcache" / "models--org--d"
    (fake / "blobs").mkdir(parents=True)
    shutil.copy(mine, fake / "blobs" / "x")
    (fake / "weights").mkdir()
    (fake / "weights" / "model.safetensors").symlink_to(Path("..") / "blobs" / "x")
    cases["a look-alike folder"] = fake / "weights"
    refusals = 0
    for label, target in cases.items():
        for name, call in _calls(target).items():
            with pytest.raises(ts.CorruptCheckpointError, match="outside the checkpoint directory") as info:
                call()
            refusals += 1
            if label != "a look-alike folder":
                assert "Hugging Face cache repository" in str(info.value), (label, name)
    record("links out of a Hugging Face snapshot", refusals=refusals)


def test_a_shard_linking_out_of_its_repository_is_refused(tmp_path):
    src = filled(TinyNet(width=16), seed=3)
    (tmp_path / "out").mkdir()
    index = ts.save_weights(src, tmp_path / "out" / "model.safetensors", max_shard_size=600)
    files = {p.name: p for p in index.parent.iterdir()}
    snap = hf_repo(tmp_path / "hub", "org/sharded", files)
    model = filled(TinyNet(width=16), seed=98)
    ts.load_weights(model, snap)  # every shard a link into its own blobs: loads
    assert snapshot(model) == snapshot(src)
    shard = sorted(snap.glob("model-*.safetensors"))[1]
    moved = tmp_path / "moved.safetensors"
    shutil.copy(shard.resolve(), moved)
    _relink(shard, moved)  # the same bytes, outside the repository: still refused
    for target in (snap, snap / "model.safetensors.index.json"):
        with pytest.raises(ts.CorruptCheckpointError, match="outside the checkpoint directory"):
            ts.load_weights(filled(TinyNet(width=16), seed=98), target)


def test_a_save_model_snapshot_with_config_linking_out_is_refused(tmp_path):
    directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "run")
    snap = hf_repo(tmp_path / "hub", "org/run", {p.name: p for p in directory.iterdir()})
    assert ts.load_model(snap) is not None
    copy = tmp_path / "config-copy.json"
    shutil.copy(snap / "config.json", copy)
    _relink(snap / "config.json", copy)
    with pytest.raises(ts.CorruptCheckpointError, match="outside the checkpoint directory"):
        ts.load_model(snap)
