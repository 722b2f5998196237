"""Distributed checkpoints (DCP) stay inside their directory, are tiled exactly and are bounded (issue 20 §1, §5).

Each hostile checkpoint is an honest one (``victim``) whose ``.metadata`` was edited with torch's own
classes and pickled again, as an attacker would, or whose files were replaced; ``other`` is a second
honest checkpoint of the same model with other values, which the edits point at. Every case runs
through ``load_distributed``, ``convert_checkpoint`` and the CLI's ``convert``, each in its own child
process under a memory cap and a timeout (a FIFO used to hang ``convert``): a load must be refused
with a ``TorchsmithError`` (the CLI: exit code 1, one line, no traceback), the model left as it was.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from reliability_tools import LONG, Child, limit_memory, record, run_child
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata, Metadata, MetadataIndex, TensorProperties, TensorStorageMetadata,
)

import torchsmith as ts

ENTRIES = ("load_distributed", "convert", "cli convert")
DATA = "__0_0.distcp"


# building hostile checkpoints


def _metadata(directory: Path) -> Metadata:
    return FileSystemReader(str(directory)).read_metadata()  # torch's own reader: these files are ours


def _write(directory: Path, metadata: object) -> None:
    (directory / ".metadata").write_bytes(pickle.dumps(metadata))


def _edit(edit):
    """A case: ``edit(metadata, directory, other)`` changes the metadata in place (returns nothing)."""

    def case(directory: Path, other: Path) -> None:
        md = _metadata(directory)
        edit(md, directory, other)
        _write(directory, md)

    return case


def _every_path(value):
    def edit(md, directory, other):
        for info in md.storage_data.values():
            info.relative_path = value(directory, other)

    return _edit(edit)


def _rekey(md, fqn: str, offsets: tuple, sizes: tuple) -> None:
    """Move ``fqn``'s only chunk to ``offsets`` / ``sizes`` (its storage entry follows it)."""
    entry = md.state_dict_metadata[fqn]
    key = next(k for k in md.storage_data if k.fqn == fqn)
    info = md.storage_data.pop(key)
    entry.chunks = [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))]
    md.storage_data[MetadataIndex(fqn, offsets)] = info


def _info(md, fqn: str) -> _StorageInfo:
    return next(v for k, v in md.storage_data.items() if k.fqn == fqn)


def _replace_data_by_link(directory: Path, other: Path) -> None:
    (directory / DATA).unlink()
    (directory / DATA).symlink_to(other / DATA)


def _metadata_link(directory: Path, other: Path) -> None:
    (directory / ".metadata").unlink()
    (directory / ".metadata").symlink_to(other / ".metadata")


def _fifo_data(directory: Path, other: Path) -> None:
    (directory / DATA).unlink()
    os.mkfifo(directory / DATA)


def _fifo_named(directory: Path, other: Path) -> None:
    os.mkfifo(directory / "pipe")
    _every_path(lambda d, o: "pipe")(directory, other)


def _overlap(md, directory, other):  # conv.bias (4,): a second chunk over its last two values, from the same bytes
    entry = md.state_dict_metadata["model.conv.bias"]
    entry.chunks.append(ChunkStorageMetadata(offsets=torch.Size([2]), sizes=torch.Size([2])))
    md.storage_data[MetadataIndex("model.conv.bias", (2,))] = _info(md, "model.conv.bias")


def _shared_bytes(md, directory, other):  # bn.bias read from bn.weight's bytes
    weight, bias = _info(md, "model.bn.weight"), _info(md, "model.bn.bias")
    bias.offset, bias.length = weight.offset, weight.length


def _blob_edit(change):
    """Append a changed copy of head.weight's stored entry to the data file and point the entry at it."""

    def case(directory: Path, other: Path) -> None:
        md = _metadata(directory)
        info = _info(md, "model.head.weight")
        data = (directory / DATA).read_bytes()
        blob = change(data[info.offset : info.offset + info.length])
        info.offset, info.length = len(data), len(blob)
        (directory / DATA).write_bytes(data + blob)
        _write(directory, md)

    return case


def _deflated(blob: bytes) -> bytes:
    """The same torch zip with every record compressed (a zip bomb's way in)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def _code(blob: bytes) -> bytes:
    out = io.BytesIO()
    torch.save({"x": _Payload()}, out)
    return out.getvalue()


def _raw(data: bytes):
    def case(directory: Path, other: Path) -> None:
        (directory / ".metadata").write_bytes(data)

    return case


def _set(attribute: str, value):
    return _edit(lambda md, d, o: setattr(md, attribute, value(md)))


def _props(fqn: str, **changes):
    def edit(md, directory, other):
        entry = md.state_dict_metadata[fqn]
        for k, v in changes.items():
            if k == "size":
                entry.size = v
            else:
                setattr(entry.properties, k, v)

    return _edit(edit)


def _transform(md, directory, other):
    for info in md.storage_data.values():
        info.transform_descriptors = ["stream.zstd"]


CASES = {
    # outside the directory
    "absolute relative_path": _every_path(lambda d, o: str(o / DATA)),
    "relative_path climbing with ..": _every_path(lambda d, o: os.path.relpath(o / DATA, d)),
    "relative_path a pathlib.Path": _every_path(lambda d, o: o / DATA),
    "data file a link out": _replace_data_by_link,
    ".metadata a link out": _metadata_link,
    "relative_path a FIFO": _fifo_named,
    "data file a FIFO": _fifo_data,
    # pieces that do not tile their tensor, or share bytes
    "declared larger than its chunks": _props("model.head.weight", size=torch.Size([6, 4])),
    "chunk smaller than its tensor": _edit(lambda md, d, o: _rekey(md, "model.head.weight", (0, 0), (2, 4))),
    "chunk offset past the tensor": _edit(lambda md, d, o: _rekey(md, "model.head.weight", (3, 0), (3, 4))),
    "overlapping chunks": _edit(_overlap),
    "two entries sharing bytes": _edit(_shared_bytes),
    "range past the end of the file": _edit(lambda md, d, o: setattr(_info(md, "model.head.weight"), "length", 10**6)),
    "range shorter than the chunk": _edit(lambda md, d, o: setattr(_info(md, "model.head.weight"), "length", 16)),
    # sizes and types that are not what they claim
    "negative size": _props("model.bn.weight", size=torch.Size([-1])),
    "2**40-element size": _props("model.head.weight", size=torch.Size([2**20, 2**20])),
    "torch.Size as dtype": _props("model.head.weight", dtype=torch.Size([1])),
    "list as state_dict_metadata": _set("state_dict_metadata", lambda md: list(md.state_dict_metadata.values())),
    "list as storage_data": _set("storage_data", lambda md: list(md.storage_data.values())),
    "compressed entries (stream.zstd)": _edit(_transform),
    # stored entries and the pickle itself
    "entry with a deflated zip record": _blob_edit(_deflated),
    "entry whose pickle runs code": _blob_edit(_code),
    "memo bomb (LONG_BINPUT 2**31)": _raw(b"\x80\x04]r\xff\xff\xff\x7f."),
    "set bomb (EMPTY_SET APPEND)": _raw(b"\x80\x04]" + b"\x8fa" * (4 * 2**20) + b"."),
    "dict bomb (EMPTY_DICT APPEND)": _raw(b"\x80\x04]" + b"}a" * (16 * 2**20) + b"."),
}


# loading them (in children)


class _Hang(Exception):
    pass


_RANG: list[bool] = []


def _alarm(signum, frame):
    _RANG.append(True)  # whatever the exception becomes on its way out (DCP wraps it), it was a hang
    raise _Hang("no answer within the time allowed (a hang)")


def load_all(cases: list[tuple[str, str]], entry: str, workdir: str, headroom: int, seconds: int) -> dict[str, dict]:
    """Every ``(name, directory)`` through one entry point, under a memory cap, each with an alarm (a FIFO
    used to hang): what each raised, what it returned, and whether the target model changed."""
    import signal

    from typer.testing import CliRunner

    from torchsmith.cli import app

    work = Path(workdir)
    warm = ts.save_distributed(TinyNet(), None, work / f"warm-{entry.replace(' ', '-')}")  # lazy imports, before the cap
    ts.load_distributed(TinyNet(), None, warm)
    ts.convert_checkpoint(warm, work / f"warm-{entry.replace(' ', '-')}.safetensors")
    CliRunner().invoke(app, ["convert", str(warm), str(work / f"warm-cli-{entry.replace(' ', '-')}.safetensors")])
    limit_memory(headroom)
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    for i, (name, directory) in enumerate(cases):
        out = work / f"out-{entry.replace(' ', '-')}-{i}.safetensors"
        result = {"entry": entry, "error": None, "torchsmith": False, "values": None, "message": ""}
        model = filled(TinyNet(), seed=98)
        before = snapshot(model)
        signal.alarm(seconds)
        try:
            if entry == "load_distributed":
                ts.load_distributed(model, None, directory)
                result["values"] = {f"model.{k}": v for k, v in snapshot(model).items()}
            elif entry == "convert":
                ts.convert_checkpoint(directory, out)
                result["values"] = {f"model.{k}": v for k, v in snapshot(ts.read_weights(out)).items()}
            else:
                done = CliRunner().invoke(app, ["convert", directory, str(out)])
                result["message"] = done.output[-600:]
                traceback = "Traceback" in done.output or not isinstance(done.exception, (SystemExit, type(None)))
                if done.exit_code == 0:
                    result["values"] = {f"model.{k}": v for k, v in snapshot(ts.read_weights(out)).items()}
                else:
                    result.update(error=f"exit code {done.exit_code}" + (" with a traceback" if traceback else ""))
                    result["torchsmith"] = done.exit_code == 1 and not traceback
        except BaseException as e:  # noqa: BLE001 - every outcome is a finding
            result.update(error=type(e).__name__, message=str(e)[:600], torchsmith=isinstance(e, ts.TorchsmithError))
        finally:
            signal.alarm(0)
        if _RANG:
            result.update(error="hang", torchsmith=False)
            _RANG.clear()
        result["unchanged"] = snapshot(model) == before
        results[name] = result
    return results


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    victim_model, other_model = filled(TinyNet(), seed=1), filled(TinyNet(), seed=2)
    victim = ts.save_distributed(victim_model, None, root / "victim")
    other = ts.save_distributed(other_model, None, root / "other")
    own = {f"model.{k}": v for k, v in snapshot(victim_model).items()}
    return root, victim, other, own


@pytest.fixture(scope="module")
def loads(honest) -> dict[str, dict[str, dict]]:
    """entry point -> case -> result; the honest victim is the case "honest"."""
    root, victim, other, _ = honest
    cases = [("honest", str(victim))]
    for i, (name, make) in enumerate(CASES.items()):
        directory = root / f"case-{i}" / "victim"
        directory.parent.mkdir()
        shutil.copytree(victim, directory)
        make(directory, other)
        cases.append((name, str(directory)))
    out = {}
    for entry in ENTRIES:
        child = Child(load_all, cases, entry, str(root), 512 * 2**20, 120)  # a hang detector: the 32 MiB dict bomb is walked in 7-35 s
        out[entry] = child.result(timeout=60 + 25 * len(cases))
    through = [f"{name} / {entry}: {r['error'] or 'loaded'}" for entry, rs in out.items() for name, r in rs.items() if name != "honest" and not r["torchsmith"]]
    record("hostile DCP checkpoints", cases=len(CASES), loads=len(CASES) * len(ENTRIES), through=len(through), examples=through[:8])
    return out


def test_an_honest_checkpoint_loads_through_every_entry(honest, loads):
    own = honest[3]
    for entry in ENTRIES:
        got = loads[entry]["honest"]
        assert got["error"] is None and got["values"] == own, got


@pytest.mark.parametrize("case", CASES)
def test_hostile_distributed_checkpoints_are_refused(loads, case):
    results = [loads[entry][case] for entry in ENTRIES]
    assert all(r["torchsmith"] for r in results), [(r["entry"], r["error"], r["message"][:300]) for r in results]
    assert all(r["unchanged"] for r in results), results


# many entries, under a 4 GB address space


def _many_entries(directory: Path, n: int) -> None:
    """A .metadata of ``n`` one-value tensors (torch's classes, pickled as torch does), all stored in one entry."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    blob = io.BytesIO()
    torch.save(torch.zeros(1), blob)
    props = TensorProperties(dtype=torch.float32)
    state, storage = {}, {}
    for i in range(n):
        fqn = f"model.t{i}"
        state[fqn] = TensorStorageMetadata(properties=props, size=torch.Size([1]), chunks=[ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([1]))])
        storage[MetadataIndex(fqn, (0,))] = _StorageInfo(relative_path=DATA, offset=0, length=len(blob.getvalue()))
    (directory / DATA).write_bytes(blob.getvalue())
    _write(directory, Metadata(state_dict_metadata=state, storage_data=storage))


def convert_under_a_cap(directory: str, out: str, cap: int) -> str:
    import resource

    ts.save_distributed(TinyNet(), None, Path(out).with_name("warm"))
    ts.convert_checkpoint(Path(out).with_name("warm"), Path(out).with_name("warm.safetensors"))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        ts.convert_checkpoint(directory, out)
        return "loaded"
    except ts.TorchsmithError as e:
        return f"refused: {e}"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def test_a_metadata_of_many_entries_is_refused_within_4_gb(tmp_path):
    """The audit's 300,000 entries exhausted a 4 GB cap; the default bound (100,000) refuses them first."""
    n = 300_000 if LONG else 120_000
    _many_entries(tmp_path / "many", n)
    got = run_child(convert_under_a_cap, str(tmp_path / "many"), str(tmp_path / "out.safetensors"), 4 * 2**30, timeout=600)
    record("DCP metadata entries", entries=n, metadata_bytes=(tmp_path / "many" / ".metadata").stat().st_size, result=got[:120])
    assert got.startswith("refused") and "max_dcp_entries" in got, got
