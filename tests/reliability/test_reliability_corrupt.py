"""Corrupt input: truncations, bit flips and forged headers.

Every damaged file is loaded in a child process whose address space is capped a little above its
size at start (``HEADROOM``), with a timeout: a crash, a hang or an allocation anywhere near what a
forged header claims fails the test. Each load must raise a ``TorchsmithError`` naming the file and
the problem and leave the target model byte for byte unchanged, or (for damage in bytes that carry
no meaning, such as zip padding) load exactly the original content.
"""

from __future__ import annotations

import random
from collections import Counter
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from reliability_tools import Timer, damage_source, forge, load_damaged, record, run_child, scale

import torchsmith as ts
from torchsmith.checkpoint.formats import META_DIGEST
from torchsmith.checkpoint.limits import Limits
from torchsmith.checkpoint.safetensors_format import SafetensorsFile, metadata_digest

HEADROOM = 64 * 2**20  # far below what the forged headers claim, far above the few-KiB files
TRUNCATIONS = scale(200, None)  # None: every length
FLIPS = scale(200, 4000)


def _saved(tmp_path: Path, suffix: str) -> tuple[Path, bytes]:
    path = ts.save_weights(damage_source(), tmp_path / f"original{suffix}")
    return path, path.read_bytes()


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of tensor data: safetensors entries, or the data records of a torch zip."""
    if path.suffix == ".safetensors":
        return [(e.begin, e.end) for e in SafetensorsFile(path).entries.values()]
    raw = path.read_bytes()
    ranges = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename:
                name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
                begin = info.header_offset + 30 + name_len + extra_len
                ranges.append((begin, begin + info.file_size))
    return ranges


def _in(ranges, offset: int) -> bool:
    return any(b <= offset < e for b, e in ranges)


def _check(results: list[dict], *, names_file: bool = True) -> dict[str, int]:
    """Every load raised a TorchsmithError naming the file and left the model alone, or loaded the original."""
    outcome = {"refused": 0, "harmless": 0, "errors": dict(Counter(r["error"] for r in results if r["error"]))}
    for r in results:
        if r["error"] is None:
            assert r["original"], f"{r['path']} ({r['entry']}) loaded damaged content without an error"
            outcome["harmless"] += 1
            continue
        assert r["torchsmith"], f"{r['path']} ({r['entry']}): {r['error']} escaped: {r['message']}"
        assert r["unchanged"], f"{r['path']} ({r['entry']}): the model changed before the error"
        if names_file:
            assert Path(r["path"]).name in r["message"], r
        outcome["refused"] += 1
    return outcome


def _entries(i: int) -> list[str]:
    """load_weights for every case; every third one also through read_weights and inspect."""
    return ["load_weights", "read_weights", "inspect"] if i % 3 == 0 else ["load_weights"]


# truncation


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncation_at_every_kind_of_length(tmp_path, suffix):
    path, data = _saved(tmp_path, suffix)
    if TRUNCATIONS is None:
        lengths = list(range(len(data)))
    else:  # half spread over the first 1 KiB (length field, header), half over the rest (data)
        head = min(1024, len(data) // 2)
        lengths = sorted(set(range(0, head, max(1, head // (TRUNCATIONS // 2))))
                         | set(range(head, len(data), max(1, (len(data) - head) // (TRUNCATIONS // 2)))))
    cases = []
    for n in lengths:
        cut = tmp_path / f"cut{n}{suffix}"
        cut.write_bytes(data[:n])
        cases += [(str(cut), entry) for entry in _entries(n)]
    with Timer() as timer:
        results = run_child(load_damaged, cases, HEADROOM, timeout=600)
    outcome = _check(results)
    assert outcome["harmless"] == 0  # a cut file never loads
    if suffix == ".safetensors":
        assert all(r["error"] == "CorruptCheckpointError" for r in results)
    record(f"truncation {suffix}", file_bytes=len(data), lengths=len(lengths), loads=len(cases), **outcome, seconds=timer.seconds)


# bit flips


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_single_bit_flips_are_caught(tmp_path, suffix):
    path, data = _saved(tmp_path, suffix)
    ranges = _data_ranges(path)
    assert ranges
    rng = random.Random(5)
    flips = [(rng.randrange(len(data)), rng.randrange(8)) for _ in range(FLIPS)]
    cases, in_data = [], set()
    for i, (offset, bit) in enumerate(flips):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << bit
        flipped = tmp_path / f"flip{i}{suffix}"
        flipped.write_bytes(bytes(damaged))
        cases += [(str(flipped), entry) for entry in _entries(i)]
        if _in(ranges, offset):
            in_data.add(str(flipped))
    with Timer() as timer:
        results = run_child(load_damaged, cases, HEADROOM, timeout=600)
    outcome = _check(results)
    data_results = [r for r in results if r["path"] in in_data]
    assert data_results and all(r["error"] == "ChecksumError" for r in data_results), [
        (r["path"], r["error"]) for r in data_results if r["error"] != "ChecksumError"
    ][:5]
    record(
        f"bit flips {suffix}",
        file_bytes=len(data),
        flips=len(flips),
        flips_in_data=len(in_data),
        loads=len(cases),
        **outcome,
        seconds=timer.seconds,
    )


# forged headers


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _checksummed(header: dict, checksums: object, hash_name: str = "xxh3-64", **meta) -> dict:
    """A header with torchsmith's metadata, its metadata checksum correct (so the check under test is reached)."""
    meta = {"torchsmith.hash": hash_name, "torchsmith.checksums": checksums, **meta}
    return {"__metadata__": {**meta, META_DIGEST: metadata_digest(meta)}, **header}


DEEP = b"[" * 100_000 + b"]" * 100_000
FORGED = {
    # name: (header, data, length field or None, expected words in the message)
    "empty file": (b"", b"", -1, "shorter than the 8-byte header length"),
    "huge length": (b"{}", b"", 2**62, "max_header_bytes"),
    "largest length": (b"{}", b"", 2**64 - 1, "max_header_bytes"),
    "length over the limit": (b"{}", b"", Limits().max_header_bytes + 1, "max_header_bytes"),
    "length past the end": (b"{}", b"\0" * 16, 100, "runs past the end"),
    "offsets out of range": ({"a": _entry()}, b"\0" * 4, None, "outside the 4 data bytes"),
    "negative offsets": ({"a": _entry(offsets=(-8, 0))}, b"\0" * 8, None, "outside the 8 data bytes"),
    "reversed offsets": ({"a": _entry(offsets=(8, 0))}, b"\0" * 8, None, "outside the 8 data bytes"),
    "float offsets": ({"a": _entry(offsets=(0.0, 8.0))}, b"\0" * 8, None, "expected [begin, end]"),
    "overlapping": ({"a": _entry(), "b": _entry(shape=(1,), offsets=(4, 8))}, b"\0" * 8, None, "tensors 'a' and 'b' overlap"),
    "gap": ({"a": _entry(shape=(1,), offsets=(4, 8))}, b"\0" * 8, None, "unused bytes"),
    "trailing bytes": ({"a": _entry()}, b"\0" * 12, None, "bytes after the last tensor"),
    "unknown dtype": ({"a": _entry(dtype="Q7")}, b"\0" * 8, None, "unknown dtype 'Q7'"),
    "shape larger than offsets": ({"a": _entry(shape=(3,))}, b"\0" * 8, None, "needs 12 bytes but its offsets span 8"),
    "astronomic shape": ({"a": _entry(shape=(2**62, 2**62))}, b"\0" * 8, None, "beyond what any tensor can hold"),
    "shape with a zero": ({"a": _entry(shape=(2**64, 0), offsets=(0, 0))}, b"", None, "beyond what any tensor can hold"),
    "negative shape": ({"a": _entry(shape=(-2,))}, b"\0" * 8, None, "non-negative"),
    "shape not a list": ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
    "missing field": ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "must have exactly"),
    "duplicate tensor": (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 8, None, "duplicate key 'a'"),
    "duplicate field": (b'{"a": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 8, None, "duplicate key 'dtype'"),
    "not JSON": (b"{oops", b"", None, "not valid JSON"),
    "not UTF-8": (b'{"\xff\xfe": 1}', b"", None, "not UTF-8"),
    "JSON list": (b"[1, 2]", b"", None, "JSON list"),
    "deeply nested": (DEEP, b"", None, "nested too deeply"),
    "metadata not strings": ({"__metadata__": {"k": 1}, "a": _entry()}, b"\0" * 8, None, "__metadata__ must map strings"),
    "checksums not JSON": (_checksummed({"a": _entry()}, "{oops"), b"\0" * 8, None, "metadata is not valid JSON"),
    "checksums nested": (_checksummed({"a": _entry()}, DEEP.decode()), b"\0" * 8, None, "nested too deeply"),
    "checksums not hex": (_checksummed({"a": _entry()}, '{"a": "zz"}'), b"\0" * 8, None, "16 hex digits"),
    "checksums for other names": (_checksummed({"a": _entry()}, '{"b": "0123456789abcdef"}'), b"\0" * 8, None, "disagree on names"),
    "checksum key damaged": ({"__metadata__": {"torchsmith.hash": "xxh3-64", "torchsmith.checksuls": "{}"}, "a": _entry()}, b"\0" * 8, None, "torchsmith.checksums is missing"),
    "unknown hash": (_checksummed({"a": _entry()}, '{"a": "0123456789abcdef"}', "md0"), b"\0" * 8, None, "this version knows"),
    "wrong checksum": (_checksummed({"a": _entry()}, '{"a": "0123456789abcdef"}'), b"\0" * 8, None, "Checksum mismatch"),
    "alias to nothing": ({"__metadata__": {"torchsmith.aliases": '{"b": "zz"}'}, "a": _entry()}, b"\0" * 8, None, "aliases must map"),
}


def test_forged_headers_name_the_problem_without_allocating(tmp_path):
    cases, expected = [], {}
    for i, (name, (header, data, length, words)) in enumerate(FORGED.items()):
        path = tmp_path / f"forged{i}.safetensors"
        if length == -1:
            path.write_bytes(header)
        else:
            forge(path, header, data, length=length)
        expected[str(path)] = (name, words)
        cases += [(str(path), entry) for entry in ("load_weights", "read_weights", "inspect")]
    results = run_child(load_damaged, cases, HEADROOM, timeout=300)
    _check(results)
    for r in results:
        name, words = expected[r["path"]]
        if r["entry"] == "load_weights" and r["error"] == "IncompatibleCheckpointError":
            continue  # keys checked against the model before the data: a TorchsmithError, model unchanged
        assert r["error"] in ("CorruptCheckpointError", "ChecksumError"), (name, r)
        assert words in r["message"], (name, r["message"])
    record("forged headers", kinds=len(FORGED), loads=len(cases), all_refused=all(r["error"] for r in results))


def test_memory_cap_really_stops_large_allocations():
    """The control for the cap above: a child under it cannot allocate HEADROOM bytes (limit_memory checks)."""
    from reliability_tools import limit_memory

    assert run_child(limit_memory, HEADROOM, timeout=60) > HEADROOM


def test_damaged_whole_model_directories(tmp_path):
    directory = ts.save_model(ts.create_model("ckpt_tiny", width=16), tmp_path / "m")
    weights = (directory / "model.safetensors").read_bytes()
    config = (directory / "config.json").read_bytes()
    variants = {
        "cut weights": (weights[: len(weights) // 2], config),
        "flipped weights": (weights[:-3] + bytes([weights[-3] ^ 4]) + weights[-2:], config),
        "cut config": (weights, config[: len(config) // 2]),
        "nested config": (weights, DEEP),
        "binary config": (weights, b"\xff\xfe\x00"),
    }
    cases = []
    for i, (w, c) in enumerate(variants.values()):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(w)
        (d / "config.json").write_bytes(c)
        cases.append((str(d), "load_model"))
    results = run_child(load_damaged, cases, HEADROOM, timeout=120)
    for name, r in zip(variants, results):
        assert r["torchsmith"] and r["error"] in ("CorruptCheckpointError", "ChecksumError"), (name, r)
        assert f"d{list(variants).index(name)}" in r["message"], (name, r["message"])


def test_damaged_shard_index(tmp_path):
    index = ts.save_weights(damage_source(), tmp_path / "model.safetensors", max_shard_size=1000)
    good = index.read_text()
    variants = {
        "nested": DEEP.decode(),
        "aliases not JSON": good.replace('"total_size"', '"torchsmith.aliases": "{oops", "total_size"'),
        "aliases to a list": good.replace('"total_size"', '"torchsmith.aliases": {"x": []}, "total_size"'),
        "shard outside": good.replace("model-00001-of", "../model-00001-of"),
    }
    for name, text in variants.items():
        index.write_text(text)
        with pytest.raises(ts.CorruptCheckpointError, match="model.safetensors.index.json"):
            ts.load_weights(damage_source(), index)


# focused cases the flips found


def test_a_damaged_tensor_name_in_a_torch_file_is_caught(tmp_path):
    """Pickle stores each name once (memoised); the checksum table, a JSON string, holds it a second time."""
    path, data = _saved(tmp_path, ".pt")
    at = data.index(b"embed.weight")
    path.write_bytes(data[: at + 11] + b"|" + data[at + 12 :])
    with pytest.raises(ts.CorruptCheckpointError, match="Bad CRC-32 for file 'archive/data.pkl'"):
        ts.read_weights(path)  # the pickle record's CRC catches it first now


def test_a_torch_zip_claiming_several_disks_is_corrupt_not_a_crash(tmp_path):
    path, data = _saved(tmp_path, ".pt")
    at = data.rindex(b"PK\x06\x07")  # zip64 end-of-directory locator: signature, disk, offset, total disks
    path.write_bytes(data[: at + 16] + (2).to_bytes(4, "little") + data[at + 20 :])
    with pytest.raises(ts.CorruptCheckpointError, match="original.pt"):
        ts.read_weights(path)


def test_small_messages_name_the_right_thing(tmp_path):
    """The overlap names both tensors; a rejected entry adds no "unused bytes"; a refused load says nothing was checked."""
    path = forge(tmp_path / "o.safetensors", {"a": _entry(), "b": _entry(shape=(1,), offsets=(4, 8))}, b"\0" * 8)
    with pytest.raises(ts.CorruptCheckpointError, match="tensors 'a' and 'b' overlap"):
        ts.read_weights(path)
    path = forge(tmp_path / "r.safetensors", {"a": _entry(dtype="Q7", shape=(1,), offsets=(0, 4)), "b": _entry(shape=(1,), offsets=(4, 8))}, b"\0" * 8)
    with pytest.raises(ts.CorruptCheckpointError) as info:
        ts.read_weights(path)
    assert "unknown dtype 'Q7'" in str(info.value) and "unused bytes" not in str(info.value)
    saved = ts.save_weights(damage_source(), tmp_path / "w.safetensors")
    with pytest.raises(ts.IncompatibleCheckpointError) as info:
        ts.load_weights(torch.nn.Linear(2, 2), saved)
    assert "present, not checked (nothing was loaded)" in str(info.value) and "0 tensors" not in str(info.value)
