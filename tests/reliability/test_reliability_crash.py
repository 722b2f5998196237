"""Crash safety: SIGKILL in the middle of saves, and writes that fail (ENOSPC, EIO) part way.

After every fault the file at the path is complete and loads with valid checksums (the old content
or the new), and temporaries do not pile up.
"""

from __future__ import annotations

import errno
import io
import os
import random
import time

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from reliability_tools import (
    Timer,
    check_generation,
    context,
    generation_weights,
    record,
    save_forever,
    scale,
    start_child,
    temporaries,
    tiny_tmpfs,
)

import torchsmith as ts
import torchsmith.checkpoint.atomic as atomic

KILLS = scale(20, 100)
KILL_BYTES = 64 * 2**20


# SIGKILL


def test_sigkill_at_random_moments_leaves_a_complete_file(tmp_path):
    path = tmp_path / "w.safetensors"
    with Timer() as first:
        ts.save_weights(generation_weights(0, KILL_BYTES), path)
    rng = random.Random(1234)
    last_gen, mid_write, advanced, killed = 0, 0, 0, set()
    with Timer() as timer:
        for kill in range(KILLS):
            ready = context().Event()
            child = start_child(save_forever, str(path), KILL_BYTES, (kill + 1) * 10**6, ready)
            try:
                assert ready.wait(60), "the saving child did not start"
                time.sleep(rng.uniform(0, 3 * first.seconds + 0.05))  # anywhere in the first few saves
                child.process.kill()
                child.process.join(30)
                assert child.process.exitcode == -9, child.process.exitcode
            finally:
                child.stop()
            killed.add(child.process.pid)
            left = temporaries(path)
            assert len(left) <= 1, f"kill {kill}: temporaries pile up: {left}"
            if left:
                pid = int(left[0].split(".tmp-")[1].split("-")[0])
                assert pid in killed, left  # a dead child's, cleaned by the next save (of this host)
                mid_write += pid == child.process.pid
            gen = check_generation(path)  # complete, checksums valid
            assert temporaries(path) == left, f"kill {kill}: the load changed the temporaries (readers never delete)"
            assert gen >= last_gen, f"kill {kill}: generation went back from {last_gen} to {gen}"
            advanced += gen > last_gen
            last_gen = gen
    assert mid_write >= 1, "no kill landed inside a write: the test did not test anything"
    ts.save_weights(generation_weights(1, KILL_BYTES), path)  # the next save cleans the dead one's temporary
    assert temporaries(path) == [] and check_generation(path) == 1
    record(
        "sigkill",
        kills=KILLS,
        file_mib=KILL_BYTES // 2**20,
        kills_mid_write=mid_write,
        kills_after_new_content=advanced,
        seconds=timer.seconds,
    )


# injected write failures


class FailingRaw(io.FileIO):
    """A file that fails every write with ``code`` once the shared ``budget[0]`` bytes are used up."""

    def __init__(self, fd: int, budget: list[int], code: int):
        super().__init__(fd, "wb", closefd=True)
        self.budget, self.code = budget, code

    def write(self, b) -> int:
        if self.budget[0] <= 0:
            raise OSError(self.code, os.strerror(self.code))
        n = min(len(memoryview(b)), self.budget[0])
        self.budget[0] -= n
        return super().write(memoryview(b).cast("B")[:n])


@pytest.fixture
def fail_after(monkeypatch):
    """``fail_after(n, errno)``: atomic writes accept ``n`` bytes in all, then fail like a full or broken disk."""

    real_fdopen = os.fdopen

    def arm(budget: int, code: int = errno.ENOSPC) -> None:
        left = [budget]

        def fdopen(fd, mode="r", *args, **kwargs):
            if ".tmp-" not in os.readlink(f"/proc/self/fd/{fd}"):  # not an atomic write: leave it alone
                return real_fdopen(fd, mode, *args, **kwargs)
            return io.BufferedWriter(FailingRaw(fd, left, code))

        monkeypatch.setattr(atomic.os, "fdopen", fdopen)

    yield arm
    monkeypatch.undo()


def _saved(tmp_path, suffix: str):
    src = filled(TinyNet(width=16), seed=1)
    path = ts.save_weights(src, tmp_path / f"w{suffix}")
    return src, path, path.read_bytes()


def _assert_intact(path, old: bytes, src) -> None:
    assert path.read_bytes() == old
    assert temporaries(path) == [], temporaries(path)
    dst = TinyNet(width=16)
    ts.load_weights(dst, path)
    assert snapshot(dst) == snapshot(src)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_write_failing_after_n_bytes_keeps_the_old_file(tmp_path, fail_after, suffix, code):
    src, path, old = _saved(tmp_path, suffix)
    size = len(old)
    budgets = sorted({0, 1, 8, 100, size // 3, size // 2, size - 1})
    for budget in budgets:
        fail_after(budget, code)
        with pytest.raises(ts.CheckpointError) as info:
            ts.save_weights(filled(TinyNet(width=16), seed=2), path)
        msg = str(info.value)
        assert str(path) in msg and os.strerror(code) in msg and "previous file, if any, is unchanged" in msg
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == code
        _assert_intact(path, old, src)
    record(f"write failures {suffix} {errno.errorcode[code]}", budgets=len(budgets), file_bytes=size)


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_fsync_or_rename_failing_keeps_the_old_file(tmp_path, monkeypatch, where):
    src, path, old = _saved(tmp_path, ".safetensors")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, where, broken)
    with pytest.raises(ts.CheckpointError, match="Input/output error"):
        ts.save_weights(filled(TinyNet(width=16), seed=2), path)
    monkeypatch.undo()
    _assert_intact(path, old, src)


def test_save_model_failing_keeps_the_old_directory_loadable(tmp_path, fail_after):
    src = filled(ts.create_model("ckpt_tiny", width=16), seed=1)
    directory = ts.save_model(src, tmp_path / "m")
    old = {p.name: p.read_bytes() for p in directory.iterdir()}
    weights = len(old["model.safetensors"])
    header = 8 + int.from_bytes(old["model.safetensors"][:8], "little")  # written twice: checksums are patched in
    for budget in (0, weights // 2, weights + header + 10):  # in the weights, and in config.json after them
        fail_after(budget)
        with pytest.raises(ts.CheckpointError, match="No space left"):
            ts.save_model(filled(ts.create_model("ckpt_tiny", width=16), seed=2), directory)
        assert {p.name: p.read_bytes() for p in directory.iterdir()} == old
        assert snapshot(ts.load_model(directory)) == snapshot(src)


def test_a_really_full_filesystem(tmp_path, fail_after):
    """A 1 MiB tmpfs when running as root; otherwise the same check through the failing writer."""
    small = {"w": torch.ones(64 * 1024)}  # 256 KiB
    big = {"w": torch.zeros(512 * 1024)}  # 2 MiB: cannot fit
    with tiny_tmpfs(tmp_path / "disk") as mounted:
        path = ts.save_weights(small, tmp_path / "disk" / "w.safetensors")
        old = path.read_bytes()
        if not mounted:
            fail_after(1024 * 1024 - len(old))
        with pytest.raises(ts.CheckpointError, match="No space left on device"):
            ts.save_weights(big, path)
        assert path.read_bytes() == old and temporaries(path) == []
        assert torch.equal(ts.read_weights(path)["w"], small["w"])
        free = os.statvfs(path.parent)
        record("full filesystem", tmpfs=mounted, free_after_kib=free.f_bavail * free.f_frsize // 1024)



def test_loads_leave_temporaries_and_the_next_save_removes_its_own(tmp_path):
    """kill -9 during a save leaves a hidden temporary. Loads leave it (on a shared file system it could be
    another host's save in progress); the next save of that target on this host removes it (issue 20 §7)."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is no longer running
    path = ts.save_weights(filled(TinyNet(), seed=1), tmp_path / "w.safetensors")
    directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "m")
    host = atomic.temporary_owner(atomic.temporary_name('x').name)[2]
    stale = [tmp_path / f".w.safetensors.tmp-{dead.pid}-0123abcd@{host}", directory / f".model.safetensors.tmp-{dead.pid}-89abcdef@{host}"]
    alive = tmp_path / f".w.safetensors.tmp-{os.getpid()}-00000000@{host}"  # a save in progress: kept
    for p in (*stale, alive):
        p.write_bytes(b"partial")
    ts.read_weights(path)
    ts.load_model(directory)
    assert all(p.exists() for p in stale) and alive.exists()
    ts.save_weights(filled(TinyNet(), seed=1), path)
    ts.save_model(ts.create_model("ckpt_tiny"), directory)
    assert not any(p.exists() for p in stale) and alive.exists()
