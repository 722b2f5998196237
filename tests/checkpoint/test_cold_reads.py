"""Cold reads: readahead hints only once a read would wait for the disk, and the same bytes either way.

The page cache is simulated at the system-call boundary (``preadv`` with ``RWF_NOWAIT`` answering
EAGAIN, as the kernel does for uncached data), so the test does not depend on the file system or on
what else the machine caches. References: the tensors saved, and the byte ranges of the file.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
from helpers import snapshot
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint import _engine


def big_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 256))  # about 1.5 MiB


@pytest.fixture
def syscalls(monkeypatch):
    """Record fadvise hints; ``state["nowait"]``: what a RWF_NOWAIT read does ('ok', 'eagain', 'unsupported')."""
    state = {"nowait": "ok", "hints": [], "nowait_reads": 0}
    real_preadv, real_fadvise = os.preadv, os.posix_fadvise

    def preadv(fd, buffers, offset, flags=0):
        if flags & _engine._NOWAIT:
            state["nowait_reads"] += 1
            if state["nowait"] == "eagain":
                raise BlockingIOError(errno.EAGAIN, "would block")
            if state["nowait"] == "unsupported":
                raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_preadv(fd, buffers, offset, flags)

    def fadvise(fd, offset, length, advice):
        state["hints"].append((offset, length, advice))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(_engine.os, "preadv", preadv)
    monkeypatch.setattr(_engine.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(_engine, "AHEAD", 256 * 1024)  # hints every 128 KiB on this small file
    monkeypatch.setattr(_engine, "WINDOW", 64 * 1024)
    monkeypatch.setattr(_engine, "HOT_CHUNK", 64 * 1024)
    monkeypatch.setattr(_engine, "READ", 64 * 1024)
    return state


def data_range(path) -> tuple[int, int]:
    raw = open(path, "rb").read(8)
    return 8 + int.from_bytes(raw, "little"), os.path.getsize(path)


@pytest.mark.skipif(not _engine._NOWAIT, reason="RWF_NOWAIT is Linux-only")
@pytest.mark.parametrize("load", ["live", "meta", "read_weights"])
def test_a_cold_file_is_read_with_hints_ahead_and_loads_the_same_bytes(tmp_path, syscalls, load):
    src = big_model()
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    syscalls["nowait"] = "eagain"
    if load == "live":
        dst = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 256))
        ts.load_weights(dst, path)  # the checksum pass, then the copy
        got = snapshot(dst)
    elif load == "meta":
        with torch.device("meta"):
            dst = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 256))
        ts.load_weights(dst, path)  # one pass, hashed as it lands
        got = snapshot(dst)
    else:
        got = snapshot(ts.read_weights(path))
    assert got == snapshot(src)
    begin, end = data_range(path)
    hints = [(o, n) for o, n, advice in syscalls["hints"] if advice == os.POSIX_FADV_WILLNEED]
    assert hints, "no readahead hint for a cold file"
    assert all(begin <= o and o + n <= end for o, n in hints)  # only the tensors' bytes are asked for
    covered = set()
    for o, n in hints:
        covered.update(range(o // 4096, (o + n - 1) // 4096 + 1))
    assert set(range(begin // 4096 + 1, (end - 1) // 4096)) <= covered  # every page asked for, ahead of its read


@pytest.mark.parametrize("nowait", ["ok", "unsupported"])
def test_a_warm_file_or_a_file_system_without_nowait_gets_no_hints(tmp_path, syscalls, nowait):
    src = big_model()
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    syscalls["nowait"] = nowait
    dst = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 256))
    ts.load_weights(dst, path)
    assert snapshot(dst) == snapshot(src)
    assert syscalls["hints"] == []
    assert syscalls["nowait_reads"] > 0 or not _engine._NOWAIT
