"""save_weights / load_weights: formats, prefixes, reports, tied weights, transactions, sharding."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import GOLDEN, snapshot
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint.safetensors_format import SafetensorsFile

GOLDEN = GOLDEN


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return snapshot(a) == snapshot(b)


# round trips


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt", "w.pth"])
def test_round_trip_is_exact_and_report_counts_everything(tmp_path, name):
    src = filled(TinyNet(), seed=1)
    path = ts.save_weights(src, tmp_path / name)
    assert path == tmp_path / name
    dst = filled(TinyNet(), seed=2)
    report = ts.load_weights(dst, path)
    assert same_weights(src, dst)
    assert report.ok and report.checksums == "verified"
    assert report.loaded == list(src.state_dict())
    assert report.model_keys == 9 and report.checksums_checked == 9
    assert report.values == 3 * 4 + 4 * 3 * 9 + 4 + 4 * 4 + 1 + 3 * 4


def test_safetensors_written_by_us_reads_with_the_reference_library(tmp_path):
    from safetensors.torch import load_file

    src = filled(TinyNet(), seed=3)
    ts.save_weights(src, tmp_path / "w.safetensors", metadata={"note": "hi"})
    ref = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(ref[k], v) for k, v in src.state_dict().items())
    assert SafetensorsFile(tmp_path / "w.safetensors").metadata["note"] == "hi"


def test_reference_library_files_load_with_checksums_absent(tmp_path):
    from safetensors.torch import save_file

    src = filled(TinyNet(), seed=4)
    save_file(src.state_dict(), tmp_path / "ref.safetensors")
    dst = TinyNet()
    report = ts.load_weights(dst, tmp_path / "ref.safetensors")
    assert same_weights(src, dst) and report.checksums == "absent"


def test_saving_the_bound_method_is_explained(tmp_path):
    with pytest.raises(ts.CheckpointError, match=r"call model.state_dict\(\)"):
        ts.save_weights(TinyNet().state_dict, tmp_path / "w.safetensors")


# tied weights


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    src = filled(TinyNet(tie=True), seed=5)
    path = ts.save_weights(src, tmp_path / "tied.safetensors")
    st = SafetensorsFile(path)
    assert st.aliases == {"head.weight": "embed.weight"} and "head.weight" not in st.entries
    dst = TinyNet(tie=True)
    report = ts.load_weights(dst, path)
    assert dst.head.weight is dst.embed.weight
    assert torch.equal(dst.head.weight, src.embed.weight)
    assert report.tied == [("head.weight", "embed.weight")] and report.ok
    untied = TinyNet()  # same keys, separate tensors: both filled from the one stored copy
    ts.load_weights(untied, path)
    assert torch.equal(untied.head.weight, src.embed.weight) and torch.equal(untied.embed.weight, src.embed.weight)


def test_tied_weights_on_meta_are_materialised_once(tmp_path):
    path = ts.save_weights(filled(TinyNet(tie=True), seed=6), tmp_path / "tied.safetensors")
    with torch.device("meta"):
        dst = TinyNet(tie=True)
    ts.load_weights(dst, path)
    assert dst.head.weight is dst.embed.weight and not dst.head.weight.is_meta
    assert isinstance(dst.head.weight, nn.Parameter)


# prefixes


def test_dataparallel_and_compiled_checkpoints_load_into_a_plain_model(tmp_path):
    src = filled(TinyNet(), seed=7)
    ts.save_weights(nn.DataParallel(src), tmp_path / "dp.pt")
    ts.save_weights(torch.compile(src).state_dict(), tmp_path / "compiled.safetensors")
    for name, prefix in (("dp.pt", "module."), ("compiled.safetensors", "_orig_mod.")):
        dst = TinyNet()
        report = ts.load_weights(dst, tmp_path / name)
        assert same_weights(src, dst)
        assert report.prefixes_removed == {prefix: 9} and report.prefixes_added == {}


def test_plain_checkpoint_loads_into_wrapped_models(tmp_path):
    src = filled(TinyNet(), seed=8)
    path = ts.save_weights(src, tmp_path / "plain.safetensors")
    dp = nn.DataParallel(TinyNet())
    assert ts.load_weights(dp, path).prefixes_added == {"module.": 9}
    compiled = torch.compile(TinyNet())
    assert ts.load_weights(compiled, path).prefixes_added == {"_orig_mod.": 9}
    assert same_weights(src, dp.module) and same_weights(src, compiled._orig_mod)


def test_repeated_and_nested_wrapper_segments(tmp_path):
    src = filled(TinyNet(), seed=9)
    sd = {f"module._orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    ts.save_weights(sd, tmp_path / "nested.safetensors")
    dst = TinyNet()
    report = ts.load_weights(dst, tmp_path / "nested.safetensors")
    assert same_weights(src, dst)
    assert report.prefixes_removed == {"module.": 9, "_orig_mod.": 9}

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = TinyNet()

    inner = {f"backbone._orig_mod.{k}": v for k, v in src.state_dict().items()}
    ts.save_weights(inner, tmp_path / "inner.safetensors")
    outer = Outer()
    assert ts.load_weights(outer, tmp_path / "inner.safetensors").prefixes_removed == {"_orig_mod.": 9}
    assert same_weights(src, outer.backbone)


def test_explicit_prefix_strips_or_adds(tmp_path):
    src = filled(TinyNet(), seed=10)
    full = {f"backbone.{k}": v for k, v in src.state_dict().items()} | {"neck.w": torch.ones(2)}
    ts.save_weights(full, tmp_path / "detector.safetensors")
    dst = TinyNet()
    report = ts.load_weights(dst, tmp_path / "detector.safetensors", prefix="backbone.", strict=False)
    assert same_weights(src, dst)
    assert report.prefixes_removed == {"backbone.": 9} and report.unexpected == ["neck.w"]

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = TinyNet()

    ts.save_weights(src, tmp_path / "plain.safetensors")
    holder = Holder()
    assert ts.load_weights(holder, tmp_path / "plain.safetensors", prefix="backbone.").prefixes_added == {"backbone.": 9}
    assert same_weights(src, holder.backbone)


def test_prefix_none_matches_exactly(tmp_path):
    """(BatchNorm fills its own num_batches_tracked when a file lacks it, as load_state_dict does: 8 missing, not 9.)"""
    ts.save_weights(nn.DataParallel(TinyNet()), tmp_path / "dp.safetensors")
    with pytest.raises(ts.IncompatibleCheckpointError) as info:
        ts.load_weights(TinyNet(), tmp_path / "dp.safetensors", prefix=None)
    reference = TinyNet().load_state_dict(nn.DataParallel(TinyNet()).state_dict(), strict=False)
    assert info.value.report.missing == reference.missing_keys and len(reference.missing_keys) == 8
    assert len(info.value.report.unexpected) == len(reference.unexpected_keys) == 9


# training-loop checkpoints


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_training_loop_dicts_are_unwrapped_and_reported(tmp_path, key):
    src = filled(TinyNet(), seed=11)
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 3, key: src.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "train.pt")
    dst = TinyNet()
    report = ts.load_weights(dst, tmp_path / "train.pt")
    assert same_weights(src, dst)
    assert report.source_key == key and report.other_keys == ["epoch", "optimizer"]
    assert report.checksums == "absent"


def test_a_file_without_weights_names_what_it_holds(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nothing.pt")
    with pytest.raises(ts.CheckpointError, match=r"No weights found.*'epoch' \(int\)"):
        ts.load_weights(TinyNet(), tmp_path / "nothing.pt")


# mismatches, casts, strictness


def test_strict_mismatch_raises_and_leaves_model_unchanged(tmp_path):
    ts.save_weights(filled(TinyNet(classes=5), seed=12), tmp_path / "five.safetensors")
    dst = filled(TinyNet(), seed=13)
    before = snapshot(dst)
    with pytest.raises(ts.IncompatibleCheckpointError, match="skip_mismatched=True") as info:
        ts.load_weights(dst, tmp_path / "five.safetensors")
    assert snapshot(dst) == before
    mism = {m.key: (m.file_shape, m.model_shape) for m in info.value.report.mismatched}
    assert mism == {"embed.weight": ((5, 4), (3, 4)), "head.weight": ((5, 4), (3, 4))}


def test_skip_mismatched_loads_the_rest(tmp_path):
    src = filled(TinyNet(classes=5), seed=14)
    ts.save_weights(src, tmp_path / "five.safetensors")
    dst = filled(TinyNet(), seed=15)
    head_before = dst.head.weight.clone()
    report = ts.load_weights(dst, tmp_path / "five.safetensors", skip_mismatched=True)
    assert torch.equal(dst.conv.weight, src.conv.weight) and torch.equal(dst.head.weight, head_before)
    assert [m.key for m in report.mismatched] == ["embed.weight", "head.weight"] and len(report.loaded) == 7


def test_non_strict_reports_missing_and_unexpected(tmp_path):
    sd = filled(TinyNet(), seed=16).state_dict()
    sd.pop("bn.running_var")
    sd["extra.weight"] = torch.zeros(2)
    ts.save_weights(sd, tmp_path / "partial.safetensors")
    dst = TinyNet()
    with pytest.raises(ts.IncompatibleCheckpointError, match="strict=False"):
        ts.load_weights(dst, tmp_path / "partial.safetensors")
    report = ts.load_weights(dst, tmp_path / "partial.safetensors", strict=False)
    assert report.missing == ["bn.running_var"] and report.unexpected == ["extra.weight"] and not report.ok


def test_float_dtypes_are_cast_and_reported(tmp_path):
    src = filled(TinyNet(), seed=17)
    ts.save_weights({k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}, tmp_path / "h.safetensors")
    dst = TinyNet()
    report = ts.load_weights(dst, tmp_path / "h.safetensors")
    assert dst.conv.weight.dtype == torch.float32
    assert torch.equal(dst.conv.weight, src.conv.weight.half().float())
    assert len(report.casts) == 8 and report.casts[0].file_dtype == "float16"


def test_wrong_dtype_is_a_mismatch_and_changes_nothing(tmp_path):
    sd = filled(TinyNet(), seed=18).state_dict()
    sd["conv.weight"] = torch.ones(sd["conv.weight"].shape, dtype=torch.int32)
    ts.save_weights(sd, tmp_path / "int.safetensors")
    dst = filled(TinyNet(), seed=19)
    before = snapshot(dst)
    with pytest.raises(ts.IncompatibleCheckpointError) as info:
        ts.load_weights(dst, tmp_path / "int.safetensors")
    assert snapshot(dst) == before
    assert info.value.report.mismatched[0].reason == "dtype int32 in file, float32 in model"


# checksums and damage


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_checksum_mismatch_names_file_and_tensor_and_changes_nothing(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=20), tmp_path / "w.safetensors")
    entry = SafetensorsFile(path).entries["bn.weight"]
    _flip(path, entry.begin + 2)
    dst = filled(TinyNet(), seed=21)
    before = snapshot(dst)
    with pytest.raises(ts.ChecksumError, match=r"w\.safetensors', tensor 'bn.weight'"):
        ts.load_weights(dst, path)
    assert snapshot(dst) == before
    with torch.device("meta"):
        meta = TinyNet()
    with pytest.raises(ts.ChecksumError):
        ts.load_weights(meta, path)
    assert all(p.is_meta for p in meta.parameters())  # nothing assigned
    report = ts.load_weights(TinyNet(), path, verify=False)
    assert report.checksums == "skipped"


def test_checksum_mismatch_in_torch_files(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=22), tmp_path / "w.pt")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["conv.bias"][0] += 1
    torch.save(obj, path)
    dst = filled(TinyNet(), seed=23)
    before = snapshot(dst)
    with pytest.raises(ts.ChecksumError, match="tensor 'conv.bias'"):
        ts.load_weights(dst, path)
    assert snapshot(dst) == before


# truncation, bit flips and forged headers: tests/test_reliability_corrupt.py


# sharding


def test_sharded_save_writes_the_hugging_face_layout_and_loads(tmp_path):
    src = filled(TinyNet(width=16), seed=26)
    index = ts.save_weights(src, tmp_path / "model.safetensors", max_shard_size=1000)
    assert index == tmp_path / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    shards = sorted(set(doc["weight_map"].values()))
    assert shards == [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    assert doc["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in src.state_dict().values())
    assert set(doc["weight_map"]) == set(src.state_dict())
    for target in (index, tmp_path):
        dst = TinyNet(width=16)
        report = ts.load_weights(dst, target)
        assert same_weights(src, dst) and report.format == "safetensors-sharded"
        assert report.checksums_checked == 9
    # a smaller re-save removes the shards it no longer uses
    ts.save_weights(src, tmp_path / "model.safetensors", max_shard_size="1MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_bad_shard_size_is_refused(tmp_path):
    with pytest.raises(ts.CheckpointError, match="not a size"):
        ts.save_weights(TinyNet(), tmp_path / "m.safetensors", max_shard_size="lots")


# atomic saves


def test_save_keeps_permissions_and_cleans_stale_temporaries(tmp_path):
    path = ts.save_weights(TinyNet(), tmp_path / "w.safetensors")
    os.chmod(path, 0o640)
    from torchsmith.checkpoint.atomic import temporary_name, temporary_owner

    stale = tmp_path / f".w.safetensors.tmp-999999999-abcd@{temporary_owner(temporary_name('w').name)[2]}"  # this host's: a save may remove it
    stale.write_bytes(b"half")
    ts.save_weights(TinyNet(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_a_saves_temporary_names_its_process_and_host_and_the_cleaner_keeps_to_its_target(tmp_path):
    import re
    import socket
    import subprocess

    from torchsmith.checkpoint.atomic import atomic_write, clean_stale_temporaries

    with atomic_write(tmp_path / "w.safetensors") as f:
        (name,) = [p.name for p in tmp_path.iterdir()]
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:32]  # as a file name may hold it
    assert name.startswith(f".w.safetensors.tmp-{os.getpid()}-") and name.endswith(f"@{host}")
    assert f.closed and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine, other = tmp_path / f".w.safetensors.tmp-{dead.pid}-0123abcd@{host}", tmp_path / f".x.pt.tmp-{dead.pid}-0123abcd@{host}"
    foreign = [tmp_path / f".w.safetensors.tmp-{dead.pid}-0123abcd@h", tmp_path / f".w.safetensors.tmp-{dead.pid}-0123abce"]
    for p in (mine, other, *foreign):
        p.write_bytes(b"partial")
    assert clean_stale_temporaries(tmp_path, target="w.safetensors") == [mine] and other.exists()
    assert clean_stale_temporaries(tmp_path) == [other]
    assert all(p.exists() for p in foreign)  # another host's, or no host named: never removed by a save


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    src = filled(TinyNet(), seed=27)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    old = path.read_bytes()
    import torchsmith.checkpoint.weights as weights

    def broken(f, tensors, **kw):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "write_safetensors", broken)
    with pytest.raises(ts.CheckpointError, match="No space left.*previous file.*unchanged"):
        ts.save_weights(TinyNet(), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_saving_onto_the_file_the_tensors_are_mapped_from(tmp_path):
    src = filled(TinyNet(), seed=28)
    pt = ts.save_weights(src, tmp_path / "w.pt")
    mapped = torch.load(pt, weights_only=True, mmap=True)["state_dict"]
    ts.save_weights(mapped, pt)
    dst = TinyNet()
    ts.load_weights(dst, pt)
    assert same_weights(src, dst)

    from safetensors import safe_open

    st = ts.save_weights(src, tmp_path / "w.safetensors")
    with safe_open(st, "pt") as f:
        mapped = {k: f.get_tensor(k) for k in f.keys()}
    ts.save_weights(mapped, st)
    dst = TinyNet()
    ts.load_weights(dst, st)
    assert same_weights(src, dst)


# the printed report


def test_load_report_table_matches_golden(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = filled(TinyNet(classes=5), seed=29).state_dict()
    sd = {f"module.{k}": (v.half() if k == "conv.weight" else v) for k, v in sd.items() if k != "bn.bias"}
    sd["module.aux.weight"] = torch.zeros(2)
    ts.save_weights(sd, "ckpt.safetensors")
    report = ts.load_weights(TinyNet(), "ckpt.safetensors", strict=False, skip_mismatched=True)
    expected = (GOLDEN / "load_report.txt").read_text()
    assert str(report) + "\n" == expected
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_header_length_starting_with_a_pickle_byte_is_still_safetensors(tmp_path):
    src = filled(TinyNet(), seed=30)
    for n in range(300):  # find a header whose length's low byte is 0x80, the pickle protocol marker
        path = ts.save_weights(src, tmp_path / "w.safetensors", metadata={"pad": "x" * n})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    dst = TinyNet()
    assert ts.load_weights(dst, path).format == "safetensors" and snapshot(dst) == snapshot(src)
