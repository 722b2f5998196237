"""Readers never delete; a save removes only temporaries it can prove dead; ``torchsmith clean`` does the
rest on request (issue 20 §7).

On a file system shared by several machines (multi-node training, docs/distributed.md) a temporary named
for another host may be that host's save in progress: its process cannot be checked from here. A load
used to delete every temporary whose process id was not running on the loading machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch
from ckpt_models import TinyNet, filled
from reliability_tools import record
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.checkpoint import atomic
from torchsmith.cli import app


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid  # no longer running on this host


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def _readers(tmp: Path, weights: Path, directory: Path, dcp: Path) -> dict:
    """Every way to read a checkpoint: name -> call."""

    def cli(*args):
        done = CliRunner().invoke(app, [str(a) for a in args])
        assert done.exit_code == 0, done.output

    return {
        "read_weights": lambda: ts.read_weights(weights),
        "load_weights": lambda: ts.load_weights(filled(TinyNet(), seed=9), weights),
        "inspect_checkpoint": lambda: ts.inspect_checkpoint(weights),
        "diff_checkpoints": lambda: ts.diff_checkpoints(weights, weights),
        "convert_checkpoint (its input)": lambda: ts.convert_checkpoint(weights, tmp / "elsewhere" / "c.pt"),
        "load_model": lambda: ts.load_model(directory),
        "load_distributed": lambda: ts.load_distributed(TinyNet(), None, dcp),
        "cli inspect": lambda: cli("inspect", weights),
        "cli summary (a directory)": lambda: cli("summary", directory, "--input", "1,3,8,8"),
        "cli convert (its input)": lambda: cli("convert", weights, tmp / "elsewhere" / "d.safetensors"),
    }


def test_readers_never_delete_temporaries(tmp_path):
    """Temporaries of three kinds sit beside the files every reader reads: another host's save in progress
    (its process id not running here), a dead process of this host, and one whose name has no host."""
    weights = ts.save_weights(filled(TinyNet(), seed=1), tmp_path / "w.safetensors")
    directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "m")
    dcp = ts.save_distributed(TinyNet(), None, tmp_path / "dcp")
    dead, host = _dead_pid(), atomic.temporary_owner(atomic.temporary_name('x').name)[2]
    planted = {
        tmp_path: [f".w.safetensors.tmp-{dead}-0a1b2c3d@another-node", f".w.safetensors.tmp-{dead}-0a1b2c3e@{host}", f".w.safetensors.tmp-{dead}-0a1b2c3f"],
        directory: [f".model.safetensors.tmp-{dead}-0a1b2c3d@another-node", f".config.json.tmp-{dead}-0a1b2c3e@{host}"],
        dcp: [f".__0_0.distcp.tmp-{dead}-0a1b2c3d@another-node"],
    }
    for where, names in planted.items():
        for name in names:
            (where / name).write_bytes(b"a save in progress")
    readers = _readers(tmp_path, weights, directory, dcp)
    deleted = {}
    for name, read in readers.items():
        read()
        gone = [n for where, names in planted.items() for n in names if not (where / n).exists()]
        if gone:
            deleted[name] = gone
            for where, names in planted.items():  # put them back for the next reader
                for n in names:
                    (where / n).write_bytes(b"a save in progress")
    # the other node's save finishes: its temporary is still there to be renamed over the target
    other = tmp_path / f".w.safetensors.tmp-{dead}-0a1b2c3d@another-node"
    ts.save_weights(filled(TinyNet(), seed=2), other.with_name("staging.safetensors"))
    os.replace(other.with_name("staging.safetensors"), other)
    os.replace(other, weights)
    assert torch.equal(ts.read_weights(weights)["head.weight"], filled(TinyNet(), seed=2).head.weight)
    record("readers never delete", readers=len(readers), temporaries=sum(map(len, planted.values())), readers_that_deleted=len(deleted))
    assert not deleted, deleted


def test_a_save_removes_only_its_own_hosts_dead_temporaries(tmp_path):
    dead, host = _dead_pid(), atomic.temporary_owner(atomic.temporary_name('x').name)[2]
    names = {
        "this host, dead": f".w.safetensors.tmp-{dead}-00000001@{host}",
        "this host, running (this test)": f".w.safetensors.tmp-{os.getpid()}-00000002@{host}",
        "another host": f".w.safetensors.tmp-{dead}-00000003@another-node",
        "no host named": f".w.safetensors.tmp-{dead}-00000004",
        "another target, this host, dead": f".x.safetensors.tmp-{dead}-00000005@{host}",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    ts.save_weights(TinyNet(), tmp_path / "w.safetensors")
    left = {k for k, v in names.items() if (tmp_path / v).exists()}
    assert left == set(names) - {"this host, dead"}, left
    ts.save_model(ts.create_model("ckpt_tiny"), tmp_path)  # saves to other targets leave them all
    assert {k for k, v in names.items() if (tmp_path / v).exists()} == left


def test_torchsmith_clean_removes_what_it_can_prove_and_says_why(tmp_path):
    dead, host = _dead_pid(), atomic.temporary_owner(atomic.temporary_name('x').name)[2]
    names = {
        "mine, dead": f".w.safetensors.tmp-{dead}-00000001@{host}",
        "mine, running": f".w.safetensors.tmp-{os.getpid()}-00000002@{host}",
        "other host, old": f".w.safetensors.tmp-{dead}-00000003@node-b",
        "other host, recent": f".w.safetensors.tmp-{dead}-00000004@node-c",
        "no host, old": f".config.json.tmp-{dead}-00000005",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for key in ("other host, old", "no host, old"):
        os.utime(tmp_path / names[key], (two_hours_ago, two_hours_ago))
    (tmp_path / "model.safetensors").write_bytes(b"not a temporary")
    runner = CliRunner()

    def present():
        return {k for k, v in names.items() if (tmp_path / v).exists()}

    dry = runner.invoke(app, ["clean", str(tmp_path), "--dry-run", "--json"])
    assert dry.exit_code == 0 and present() == set(names), dry.output
    listed = {Path(t["path"]).name: t for t in json.loads(dry.output)["temporaries"]}
    assert set(listed) == set(names.values()) and listed[names["mine, dead"]]["remove"]
    assert "is gone" in listed[names["mine, dead"]]["reason"] and "running" in listed[names["mine, running"]]["reason"]
    assert "cannot be checked" in listed[names["other host, old"]]["reason"]
    plain = runner.invoke(app, ["clean", str(tmp_path)])
    assert plain.exit_code == 0 and present() == set(names) - {"mine, dead"}, plain.output
    assert "removed" in plain.output and "kept" in plain.output
    usage = runner.invoke(app, ["clean", str(tmp_path), "--other-hosts"])  # an age is required
    assert usage.exit_code == 2 and present() == set(names) - {"mine, dead"}
    aged = runner.invoke(app, ["clean", str(tmp_path), "--other-hosts", "--older-than", "1h"])
    assert aged.exit_code == 0 and present() == {"mine, running", "other host, recent"}, aged.output
    assert (tmp_path / "model.safetensors").exists()
    record("torchsmith clean", temporaries=len(names), removed_by_default=1, removed_with_other_hosts_1h=2)
