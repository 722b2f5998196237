"""Hostile pickles: every loading entry point refuses them, and a sentinel file proves nothing ran.

Payloads run a command through ``__reduce__`` (os.system, exec, eval, subprocess), reach
``os.system`` indirectly (``pkgutil.resolve_name``, ``importlib.import_module`` + ``getattr``), or
call it with protocol 0's ``INST``.
Each is stored as a raw pickle, inside a torch zip file (and a legacy torch file), and as a pickled
whole model. A control test loads every file with a plain unpickler to prove each payload is live.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, about our payloads


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


def _call_pickle(lookup: bytes, sentinel: Path) -> bytes:
    """A protocol-2 pickle that gets a callable through ``lookup`` opcodes, then calls it with a touch command."""
    command = f"touch {sentinel}".encode()
    return b"\x80\x02" + lookup + b"(X" + len(command).to_bytes(4, "little") + command + b"tR."


def _str(s: str) -> bytes:
    return b"X" + len(s).to_bytes(4, "little") + s.encode()


def payloads(sentinel_dir: Path) -> dict[str, bytes]:
    """name -> pickle bytes that creates ``sentinel_dir/<name>`` when unpickled."""
    names = ("os_system", "exec", "eval", "subprocess", "pkgutil", "importlib", "inst")
    s = {name: sentinel_dir / name for name in names}
    out = {
        "os_system": pickle.dumps({"w": Reduce(os.system, f"touch {s['os_system']}")}, protocol=2),
        "exec": pickle.dumps({"w": Reduce(exec, _touch(s["exec"]))}, protocol=4),  # STACK_GLOBAL + memo
        "eval": pickle.dumps([Reduce(eval, _touch(s["eval"]))], protocol=0),  # text GLOBAL
        "subprocess": pickle.dumps({"w": Reduce(subprocess.call, ["touch", str(s["subprocess"])])}, protocol=2),
        # resolve_name('os:system')('touch ...'): the callable itself comes out of a REDUCE
        "pkgutil": _call_pickle(b"cpkgutil\nresolve_name\n(" + _str("os:system") + b"tR", s["pkgutil"]),
        # getattr(import_module('os'), 'system')('touch ...')
        "importlib": _call_pickle(
            b"cbuiltins\ngetattr\n(cimportlib\nimport_module\n(" + _str("os") + b"tR" + _str("system") + b"tR",
            s["importlib"],
        ),
        # protocol 0 INST: imports os.system and calls it with the marked arguments, in one opcode
        "inst": b"(S'touch " + str(s["inst"]).encode() + b"'\nios\nsystem\n.",
    }
    return out


def _torch_zip_with(pickle_bytes: bytes, path: Path) -> Path:
    """A real torch zip file (torch.save of a tensor dict) whose data.pkl is replaced by ``pickle_bytes``."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return path


class PoisonedModel(TinyNet):
    """A whole model that carries a payload in an attribute (what torch.save(model) would pickle)."""


def hostile_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    sentinels = tmp_path / "sentinels"
    sentinels.mkdir()
    files: dict[str, Path] = {}
    for name, raw in payloads(sentinels).items():
        (tmp_path / f"{name}.pkl").write_bytes(raw)
        files[f"{name} raw .pkl"] = tmp_path / f"{name}.pkl"
        (tmp_path / f"{name}_raw.pt").write_bytes(raw)
        files[f"{name} raw .pt"] = tmp_path / f"{name}_raw.pt"
        files[f"{name} torch zip"] = _torch_zip_with(raw, tmp_path / f"{name}_zip.pt")
    evil = Reduce(os.system, f"touch {sentinels / 'whole_model'}")
    model = PoisonedModel()
    model.payload = evil
    torch.save(model, tmp_path / "whole_model.pt")
    files["whole model (zip)"] = tmp_path / "whole_model.pt"
    torch.save({"w": torch.ones(2), "evil": evil}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    files["legacy torch file"] = tmp_path / "legacy.pt"
    weights_dir = tmp_path / "hf_dir"
    weights_dir.mkdir()
    (weights_dir / "pytorch_model.bin").write_bytes((tmp_path / "os_system_zip.pt").read_bytes())
    files["directory with pytorch_model.bin"] = weights_dir
    return sentinels, files


def _entry_points(tmp_path: Path):
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 1, (args, result.output)
        raise ts.UnsafeCheckpointError(result.stderr)  # the CLI prints the same refusal

    out = tmp_path / "out.safetensors"
    return {
        "load_weights": lambda p: ts.load_weights(TinyNet(), p),
        "read_weights": lambda p: ts.read_weights(p),
        "load_model": lambda p: ts.load_model(p),
        "inspect_checkpoint": lambda p: ts.inspect_checkpoint(p),
        "diff_checkpoints": lambda p: ts.diff_checkpoints(p, "ckpt_tiny"),
        "convert_checkpoint": lambda p: ts.convert_checkpoint(p, out),
        "cli inspect": lambda p: cli("inspect", p),
        "cli convert": lambda p: cli("convert", p, out),
        "cli diff": lambda p: cli("diff", "ckpt_tiny", p),
    }


def test_hostile_pickles_are_refused_by_every_entry_point(tmp_path):
    from reliability_tools import record

    sentinels, files = hostile_files(tmp_path)
    entry_points = _entry_points(tmp_path)
    refused = 0
    for kind, path in files.items():
        for entry, call in entry_points.items():
            if entry == "load_model" and path.is_dir():
                continue  # a directory is a save_model directory for load_model: see the next test
            with pytest.raises(ts.UnsafeCheckpointError) as info:
                call(path)
            msg = " ".join(str(info.value).split())  # the CLI wraps lines
            assert "Refused to load" in msg and "Nothing was executed" in msg and "--trusted" in msg, (kind, entry, msg)
            refused += 1
    assert sorted(p.name for p in sentinels.iterdir()) == []
    assert not (tmp_path / "out.safetensors").exists()
    record("hostile pickles", files=len(files), entry_points=len(entry_points), refusals=refused, sentinels_created=0)


def test_load_model_on_a_directory_with_a_pickle_inside(tmp_path):
    sentinels, files = hostile_files(tmp_path)
    with pytest.raises(ts.CheckpointError, match="no config.json"):
        ts.load_model(files["directory with pytorch_model.bin"])
    (files["directory with pytorch_model.bin"] / "config.json").write_text("{}")
    (files["directory with pytorch_model.bin"] / "model.safetensors").write_bytes(files["os_system torch zip"].read_bytes())
    with pytest.raises(ts.CorruptCheckpointError):
        ts.load_model(files["directory with pytorch_model.bin"])
    assert list(sentinels.iterdir()) == []


def test_the_refusal_names_what_the_pickle_wanted(tmp_path):
    _, files = hostile_files(tmp_path)
    wanted = {
        "os_system raw .pkl": "posix.system",
        "exec torch zip": "builtins.exec",
        "eval raw .pt": "builtins.eval",
        "subprocess torch zip": "subprocess.call",
        "pkgutil torch zip": "pkgutil.resolve_name",
        "importlib raw .pkl": "importlib.import_module",
        "inst torch zip": "os.system",
        "whole model (zip)": "test_reliability_pickles.PoisonedModel",
        "legacy torch file": "posix.system",
    }
    for kind, name in wanted.items():
        with pytest.raises(ts.UnsafeCheckpointError, match=name.replace(".", r"\.")):
            ts.read_weights(files[kind])


def test_control_every_payload_is_live(tmp_path):
    """Unpickled without protection, each file does create its sentinel: the refusals above mean something."""
    sentinels, files = hostile_files(tmp_path)
    for kind, path in files.items():
        if path.is_dir():
            continue
        if path.suffix == ".pkl":
            with contextlib.suppress(Exception):
                pickle.loads(path.read_bytes())
        else:
            with contextlib.suppress(Exception):
                torch.load(path, weights_only=False)
    made = sorted(p.name for p in sentinels.iterdir())
    assert made == ["eval", "exec", "importlib", "inst", "os_system", "pkgutil", "subprocess", "whole_model"]


def test_trusted_really_unpickles(tmp_path):
    sentinels, files = hostile_files(tmp_path)
    with pytest.raises(ts.CheckpointError):  # runs the payload, then finds no model
        ts.load_model(files["os_system torch zip"], trusted=True)
    assert (sentinels / "os_system").exists()


# torchsmith's own allow-list, on top of torch's


def _frame_summary_file(tmp_path: Path, target: Path) -> Path:
    """A torch zip whose pickle calls traceback.FrameSummary(target, 1, "x"): building it reads ``target``."""
    pkl = b"\x80\x02}X\x01\x00\x00\x00fctraceback\nFrameSummary\n(" + _str(str(target)) + b"K\x01" + _str("x") + b"tRs."
    return _torch_zip_with(pkl, tmp_path / "frame.pt")


def load_with_frame_summary_allowed(path: str) -> str:
    """In a child: put FrameSummary on torch's list (as importing torch.distributed once did), then load."""
    import traceback

    torch.serialization.add_safe_globals([traceback.FrameSummary])
    try:
        ts.read_weights(path)
    except ts.TorchsmithError as e:
        return f"{type(e).__name__}: {e}"
    return "loaded"


def test_globals_torch_allows_but_weights_do_not_need_are_refused(tmp_path):
    from reliability_tools import run_child

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would hang: the child's timeout catches that
    path = _frame_summary_file(tmp_path, fifo)
    outcome = run_child(load_with_frame_summary_allowed, str(path), timeout=60)
    assert outcome.startswith("UnsafeCheckpointError") and "traceback.FrameSummary" in outcome, outcome


def test_a_compressed_record_is_refused_without_inflating(tmp_path):
    """A zip bomb: data.pkl deflated from 64 MiB of one byte; the refusal reads only the directory."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("/data.pkl"):
                dst.writestr(info.filename, src.read(info) + b"\0" * 2**26, compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(ts.CorruptCheckpointError, match="is compressed"):
        ts.read_weights(bomb)
