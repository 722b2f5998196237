"""load_model(mmap=True) / load_weights(mmap=True): parameters that are views of a private mapping of the file.

References: the saved model's own tensors (bitwise), /proc/self/maps (which memory is a file mapping),
and a hash of the file on disk (never written). The default loads stay free of file mappings.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
from helpers import randomise_bn_, snapshot
from test_checkpoint_tied_meta import registered_positions
from test_whole_models import CASES

import torchsmith as ts
from torchsmith.errors import ChecksumError


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``path`` (from /proc/self/maps)."""
    real = str(Path(path).resolve())
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real:
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            out.append((lo, hi))
    return out


def inside(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    return any(lo <= start and end <= hi for lo, hi in ranges)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(CASES))
def test_a_mapped_load_gives_the_saved_model_bitwise_and_its_outputs(tmp_path, name):
    make, inputs = CASES[name]
    torch.manual_seed(0)
    model = make()
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m", mmap=True)
    assert snapshot(loaded) == snapshot(model)
    assert [n for n, _ in loaded.named_modules()] == [n for n, _ in model.named_modules()]
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        want, got = copy.deepcopy(model).eval()(*inputs), loaded.eval()(*inputs)
    for a, b in zip(want.values() if isinstance(want, dict) else [want], got.values() if isinstance(got, dict) else [got]):
        assert torch.equal(a, b), name


def test_the_parameters_are_views_of_a_mapping_of_the_weights_file(tmp_path):
    model = randomise_bn_(ts.create_model("resnet18", num_classes=5))
    ts.save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    assert mapped_ranges(weights) == []
    loaded = ts.load_model(tmp_path / "m", mmap=True)
    ranges = mapped_ranges(weights)
    assert ranges, "no mapping of the weights file"
    tensors = list(loaded.state_dict().values())
    assert all(inside(t, ranges) for t in tensors if t.numel())
    del loaded, tensors
    import gc

    gc.collect()
    assert mapped_ranges(weights) == []  # unmapped with the last tensor


def test_writing_to_a_mapped_parameter_never_writes_the_file(tmp_path):
    ts.save_model(ts.create_model("mlp", in_features=6, hidden=(4,), num_classes=2), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    before = file_digest(weights)
    loaded = ts.load_model(tmp_path / "m", mmap=True)
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)  # copy-on-write: this process's pages only
    assert file_digest(weights) == before
    again = ts.load_model(tmp_path / "m", mmap=True)
    assert not torch.equal(next(again.parameters()), next(loaded.parameters()))


def test_a_damaged_file_is_refused_before_return(tmp_path):
    model = ts.create_model("mlp", in_features=64, hidden=(32,), num_classes=4)
    ts.save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data; the header (and its checksum in config.json) intact
    weights.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        ts.load_model(tmp_path / "m", mmap=True)
    assert ts.load_model(tmp_path / "m", mmap=True, verify=False) is not None  # the damage is in the data only


def test_non_persistent_buffers_are_recomputed_under_a_mapped_load(tmp_path):
    torch.manual_seed(0)
    model = registered_positions(length=5)
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m", mmap=True)
    assert torch.equal(loaded.position_ids, model.position_ids) and torch.equal(loaded.scales[0], model.scales[0])
    assert torch.equal(loaded(), model())
    assert inside(loaded.gain, mapped_ranges(tmp_path / "m" / "model.safetensors"))


def test_load_weights_mmap_maps_meta_tensors_and_casts_into_new_memory(tmp_path):
    src = ts.create_model("mlp", in_features=8, hidden=(8,), num_classes=3)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    with torch.device("meta"):
        same = ts.create_model("mlp", in_features=8, hidden=(8,), num_classes=3)
        half = ts.create_model("mlp", in_features=8, hidden=(8,), num_classes=3).to(torch.float64)
    ts.load_weights(same, path, mmap=True)
    report = ts.load_weights(half, path, mmap=True)
    ranges = mapped_ranges(path)
    assert snapshot(same) == snapshot(src)
    assert all(inside(t, ranges) for t in same.state_dict().values())
    assert report.casts and not any(inside(t, ranges) for t in half.state_dict().values())
    assert all(torch.equal(a.double(), b) for a, b in zip(src.state_dict().values(), half.state_dict().values()))


def test_the_default_loads_map_nothing(tmp_path):
    model = ts.create_model("resnet18", num_classes=3)
    ts.save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    kept = [ts.load_model(tmp_path / "m"), ts.read_weights(weights)]
    live = ts.create_model("resnet18", num_classes=3)
    ts.load_weights(live, weights)
    with torch.device("meta"):
        meta = ts.create_model("resnet18", num_classes=3)
    ts.load_weights(meta, weights)
    assert mapped_ranges(weights) == [] and kept


def test_a_refused_file_stays_unmapped(tmp_path):
    ts.save_model(ts.create_model("mlp", in_features=64, hidden=(32,), num_classes=4), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as err:
        ts.load_model(tmp_path / "m", mmap=True)
    assert err.value is not None and mapped_ranges(weights) == []  # the traceback still holds the frames
