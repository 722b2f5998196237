"""Transactions: interrupts, odd tensors in plain torch files, and files rewritten under a reader.

A load either leaves the model exactly as it was (and raises a ``TorchsmithError``, or the user's
own ``KeyboardInterrupt``), or loads all of it; a reader never dies because another process
rewrites the file it reads.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from reliability_tools import record, start_child

import torchsmith as ts
from torchsmith.checkpoint import _engine, sources


# Ctrl-C


@pytest.mark.parametrize("meta", [False, True], ids=["in place", "meta model"])
def test_ctrl_c_during_the_copy_leaves_the_model_all_old_or_all_new(tmp_path, monkeypatch, meta):
    src = filled(TinyNet(width=16), seed=1)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    real = sources.SafetensorsSource.read_many
    calls = []

    def interrupted(self, items, *, verify):  # a real SIGINT, delivered in the middle of the copy
        calls.append(len(items))
        half = len(items) // 2
        real(self, items[:half], verify=verify)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here, between two tensors
        real(self, items[half:], verify=verify)

    monkeypatch.setattr(sources.SafetensorsSource, "read_many", interrupted)
    if meta:
        with torch.device("meta"):
            model = TinyNet(width=16)
    else:
        model = filled(TinyNet(width=16), seed=98)
    before = snapshot(model) if not meta else None
    with pytest.raises(KeyboardInterrupt):
        ts.load_weights(model, path)
    if meta:  # fresh tensors are assigned only after the copy: still all on meta, or all new
        assert all(t.is_meta for t in model.state_dict().values()) or snapshot(model) == snapshot(src)
    else:
        assert snapshot(model) == snapshot(src) or snapshot(model) == before
        assert snapshot(model) == snapshot(src)  # the copy went on to the end: all new
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_ctrl_c_during_verification_comes_through_as_itself(tmp_path, monkeypatch):
    src = filled(TinyNet(width=16), seed=1)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    real = _engine.tensor_hasher

    class Interrupting:
        def __init__(self, *args):
            self.h, self.n = real(*args), 0

        def update(self, data):
            self.n += 1
            if Interrupting.count == 2:
                raise KeyboardInterrupt
            Interrupting.count += 1
            self.h.update(data)

        def hexdigest(self):
            return self.h.hexdigest()

    Interrupting.count = 0
    monkeypatch.setattr(_engine, "tensor_hasher", Interrupting)
    model = filled(TinyNet(width=16), seed=98)
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt) as info:
        ts.load_weights(model, path)
    assert info.type is KeyboardInterrupt and not isinstance(info.value.__context__, BufferError)
    assert snapshot(model) == before


# plain torch.save files with tensors torchsmith cannot load


def _odd_files(tmp_path: Path) -> dict[str, Path]:
    good = filled(TinyNet(width=4), seed=1).state_dict()
    last = list(good)[-1]
    kinds = {
        "meta last": {**good, last: torch.empty(good[last].shape, device="meta")},
        "sparse": {**good, last: good[last].to_sparse()},
        "quantized": {**good, "q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8)},
        "nested": {**good, "n": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])},
        "complex128": {**good, "c": torch.ones(2, dtype=torch.complex128)},
        "int key": {**good, 7: torch.ones(2)},
        "expanded": {**good, "e": torch.zeros(1).expand(2**28)},
    }
    out = {}
    for name, sd in kinds.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(sd, out[name])
    # complex128 inside a torchsmith-style file with a checksum table
    table = tmp_path / "complex_table.pt"
    torch.save({"state_dict": {"c": torch.ones(2, dtype=torch.complex128)}, "torchsmith": {"hash": "xxh3-64", "checksums": '{"c": "0123456789abcdef"}', "metadata": {}}}, table)
    out["complex128 with checksums"] = table
    nested_int = tmp_path / "int_under_state_dict.pt"
    torch.save({"state_dict": {**good, 3: torch.ones(1)}, "epoch": 1}, nested_int)
    out["int key under state_dict"] = nested_int
    return out


def test_plain_torch_files_with_odd_tensors_are_refused_before_writing(tmp_path):
    refused = 0
    for name, path in _odd_files(tmp_path).items():
        for entry in ("load_weights", "read_weights", "inspect"):
            model = filled(TinyNet(width=4), seed=98)
            before = snapshot(model)
            with pytest.raises(ts.TorchsmithError) as info:
                if entry == "load_weights":
                    ts.load_weights(model, path, strict=False)
                elif entry == "read_weights":
                    ts.read_weights(path)
                else:
                    ts.inspect_checkpoint(path)
            assert path.name in str(info.value), (name, str(info.value))
            assert snapshot(model) == before, name
            refused += 1
    record("odd tensors in torch files", kinds=len(_odd_files(tmp_path)), loads=refused, refused=refused)


# a file rewritten in place under a reader


def read_while_rewritten(path: str, n: int) -> dict:
    """Read ``path`` ``n`` times; failures are counted (a TorchsmithError is fine, dying is not)."""
    counts = {"loads": 0, "ok": 0, "refused": 0}
    live = torch.nn.ParameterDict({"a": torch.zeros(2**20), "b": torch.zeros(2**20)})
    for i in range(n):
        try:
            if i % 2:
                ts.read_weights(path)  # hashed as it lands in fresh tensors
            else:
                ts.load_weights(live, path)  # the checksum pass first, then the copy
            counts["ok"] += 1
        except ts.TorchsmithError:
            counts["refused"] += 1
        counts["loads"] += 1
    return counts


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_reader_survives_the_file_being_rewritten_in_place(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    sd = {"a": torch.ones(2**20), "b": torch.ones(2**20)}
    ts.save_weights(sd, tmp_path / "with_checksums.safetensors")  # so the checksum pass reads the data too
    content = (tmp_path / "with_checksums.safetensors").read_bytes()

    def rewrite():  # as plain torch.save or safetensors.save_file do: truncate, then write in place
        with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT), "r+b") as f:
            f.truncate(0)
            if suffix == ".pt":
                torch.save(sd, f)
            else:
                f.write(content)

    rewrite()
    reader = start_child(read_while_rewritten, str(path), 200)
    try:
        deadline = time.monotonic() + 120
        while reader.process.is_alive() and time.monotonic() < deadline:
            rewrite()
            time.sleep(0.002)  # some reads fall between rewrites, most overlap one
        counts = reader.result(timeout=60)  # raises "died with exit code -7" on SIGBUS
    finally:
        reader.stop()
    assert counts["loads"] == 200
    record(f"rewritten under a reader {suffix}", **counts)
