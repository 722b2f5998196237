"""The load engine (checkpoint/_engine.py) on several threads: bytes, checksums, errors, Ctrl-C.

The engine runs small loads on the caller's thread; these tests force the
threaded path with tiny chunks, so every tensor is split and shared out.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint import _engine
from torchsmith.checkpoint.sources import open_source
from torchsmith.errors import ChecksumError, CorruptCheckpointError


class Mixed(nn.Module):
    """Tensors of many sizes and dtypes, an empty one and a bool buffer."""

    def __init__(self):
        super().__init__()
        self.big = nn.Linear(64, 96)
        self.half = nn.Linear(16, 16).to(torch.bfloat16)
        self.register_buffer("mask", torch.zeros(37, dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("empty", torch.zeros(0, 3))


def filled(seed: int) -> Mixed:
    g = torch.Generator().manual_seed(seed)
    m = Mixed()
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.dtype == torch.bool:
                t.copy_(torch.rand(t.shape, generator=g) > 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                t.fill_(seed)
    return m


@pytest.fixture
def threaded(monkeypatch):
    """Every load on 3 threads, in pieces of a few hundred bytes."""
    seen = []

    def threads(tasks: int, nbytes: int) -> int:
        seen.append(min(3, tasks))
        return min(3, tasks)

    monkeypatch.setattr(_engine, "threads", threads)
    monkeypatch.setattr(_engine, "CHUNK", 256)
    monkeypatch.setattr(_engine, "HOT_CHUNK", 128)
    monkeypatch.setattr(_engine, "WINDOW", 512)
    return seen


def tensor_offsets(path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges from the header, read as the safetensors format defines it."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"}


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("shards", [None, 600])
def test_threaded_load_weights_matches_the_reference_reader(tmp_path, threaded, shards):
    src = filled(1)
    path = ts.save_weights(src, tmp_path / "w.safetensors", max_shard_size=shards)
    dst = filled(2)
    report = ts.load_weights(dst, path)
    assert report.ok and report.checksums == "verified" and report.checksums_checked == len(src.state_dict())
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == (1 if shards is None else len(files)) and (shards is None or len(files) > 1)
    ref = {k: v for f in files for k, v in load_file(f).items()}
    assert all(torch.equal(ref[k], v) for k, v in dst.state_dict().items())
    assert max(threaded) > 1  # the threads did run


def test_threaded_load_model_and_read_weights_check_on_the_fly(tmp_path, threaded):
    src = ts.create_model("mlp", in_features=40, hidden=[48, 48])
    ts.save_model(src, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    ref = load_file(tmp_path / "m" / "model.safetensors")
    assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())
    read = ts.read_weights(tmp_path / "m" / "model.safetensors")
    assert all(torch.equal(ref[k], read[k]) for k in ref)
    assert max(threaded) > 1


@pytest.mark.parametrize("fresh", [False, True])
def test_two_damaged_tensors_name_the_first_in_file_order_and_change_nothing(tmp_path, threaded, fresh):
    path = ts.save_weights(filled(1), tmp_path / "w.safetensors")
    ranges = tensor_offsets(path)
    first, second = sorted(("big.bias", "half.weight"), key=lambda k: ranges[k][0])  # small first: scheduled last
    flip(path, ranges[second][1] - 1)  # the later one is damaged at its end,
    flip(path, ranges[first][1] - 1)  # the earlier one too: it must be the one named
    if fresh:  # read_weights: fresh tensors, checked as they arrive
        with pytest.raises(ChecksumError, match=repr(first)):
            ts.read_weights(path)
        return
    dst = filled(2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ChecksumError, match=repr(first)):
        ts.load_weights(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_a_file_cut_short_after_its_header_was_read_is_refused_not_a_crash(tmp_path, threaded):
    path = ts.save_weights(filled(1), tmp_path / "w.safetensors")
    src = open_source(path)
    os.truncate(path, os.path.getsize(path) - 100)  # in place, as a non-atomic copy would
    with pytest.raises(CorruptCheckpointError, match="cut short"):
        src.verify(src.keys())
    fresh = [(k, torch.empty(*src.spec(k)[:1], dtype=src.spec(k)[1])) for k in src.keys()]
    with pytest.raises(CorruptCheckpointError, match="cut short"):
        src.read_many(fresh, verify=False)


def test_ctrl_c_stops_every_worker_before_it_propagates(monkeypatch):
    monkeypatch.setattr(_engine, "threads", lambda tasks, nbytes: 3)
    started = threading.Barrier(3)
    polled = []

    def patient(stop: threading.Event) -> None:
        started.wait()
        while not stop.wait(0.01):
            pass
        polled.append(threading.current_thread().name)

    def interrupted(stop: threading.Event) -> None:
        started.wait()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _engine._run([(1, patient), (1, patient), (1, interrupted)])
    assert len(polled) == 2  # both others saw the stop and returned before _run did
    assert not [t for t in threading.enumerate() if t.name.startswith("torchsmith-load-")]


def test_meta_targets_that_need_a_cast_are_read_in_bounded_batches(tmp_path, threaded, monkeypatch):
    from torchsmith.checkpoint import weights

    monkeypatch.setattr(weights, "BATCH_BYTES", 1000)  # several batches for this model
    src = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10)).double()
    report = ts.load_weights(dst, path)
    assert report.ok and len(report.casts) == 4 and report.checksums_checked == 4
    ref = load_file(path)
    assert all(v.dtype == torch.float64 and torch.equal(v, ref[k].double()) for k, v in dst.state_dict().items())
    assert len(weights._batches([(t, k) for k, t in dst.state_dict().items()], open_source(path), "cpu")) > 1
