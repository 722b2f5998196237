"""Bounds on what a checkpoint may ask for (``torchsmith.Limits``): each refuses before allocating or
building, names itself and the option that raises it, and the option really raises it, on every
entry point (library and CLI).

Each case makes a real file that one bound refuses when set just below what the file needs (so
the files stay small), then loads the same file with the bound raised (or at its default).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from hypothesis import example, given
from hypothesis import strategies as st
from reliability_tools import record
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith import Limits
from torchsmith.checkpoint.limits import FLOORS
from torchsmith.models_io import whole
from torchsmith.cli import app


def safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open  # the reference reader

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def _header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")  # the format's first 8 bytes


def _repeated_views(tmp_path: Path) -> tuple[Path, int, int]:
    """A torch file of 16 overlapping views of one 4 MiB storage: (path, bytes on disk, bytes once loaded)."""
    base = torch.arange(2**20, dtype=torch.float32)
    views = {f"v{i}": base[i * 1000 :] for i in range(16)}  # each a different view: each loads as its own tensor
    path = tmp_path / "views.pt"
    torch.save(views, path)
    return path, path.stat().st_size, sum(v.numel() * 4 for v in views.values())


def _cases(tmp_path: Path) -> dict:
    """bound -> (path, a value of the bound that refuses the file, one that admits it)."""
    single = ts.save_weights(filled(TinyNet(), seed=1), tmp_path / "single.safetensors")
    (tmp_path / "sharded").mkdir()
    index = ts.save_weights(filled(TinyNet(), seed=2), tmp_path / "sharded" / "w.safetensors", max_shard_size=400)
    mlp = ts.create_model("mlp", in_features=3, hidden=[4] * 30, num_classes=2)  # about 40 config values
    directory = ts.save_model(mlp, tmp_path / "run")
    views, size, loaded = _repeated_views(tmp_path)
    tensors = len(safetensors_keys(single))
    modules, parameters = sum(1 for _ in mlp.modules()), sum(p.numel() for p in mlp.parameters())
    dcp = ts.save_distributed(filled(TinyNet(), seed=3), None, tmp_path / "dcp")
    entries = len(TinyNet().state_dict())  # one stored piece per tensor (one rank)
    return {
        "max_header_bytes": (single, _header_length(single) - 1, _header_length(single)),
        "max_tensors": (single, tensors - 1, tensors),
        "max_json_bytes": (index, index.stat().st_size - 1, index.stat().st_size),
        "max_config_bytes": (directory, (directory / "config.json").stat().st_size - 1, Limits().max_config_bytes),
        "max_config_values": (directory, 30, 100),
        "max_config_depth": (directory, 2, 3),  # [kwargs, steps] > kwargs > hidden: 3 deep
        "max_expansion": (views, (loaded - 16 * 2**20) / size * 0.99, (loaded - 16 * 2**20) / size * 1.01),
        "max_modules": (directory, modules - 1, modules),
        "max_parameters": (directory, parameters - 1, parameters),
        "max_dcp_entries": (dcp, entries - 1, entries),
    }


def _load(path: Path, limits: Limits | None):
    if (path / "config.json").exists():
        return ts.load_model(path, limits=limits)
    if (path / ".metadata").exists():  # a distributed checkpoint
        return ts.convert_checkpoint(path, path.with_name("consolidated.safetensors"), limits=limits)
    return ts.read_weights(path, limits=limits)


@pytest.mark.parametrize("bound", [f.name for f in dataclasses.fields(Limits)])
def test_each_bound_refuses_names_itself_and_the_option_raises_it(tmp_path, bound):
    path, below, enough = _cases(tmp_path)[bound]
    if bound == "max_expansion":  # the default (2x) already refuses these views: the file is the attack
        assert Limits().max_expansion < below
        with pytest.raises(ts.CorruptCheckpointError, match="max_expansion"):
            ts.read_weights(path)
    with pytest.raises(ts.CheckpointError) as info:
        _load(path, Limits(**{bound: below}))
    message = str(info.value)
    assert bound in message and f"--limit {bound}=" in message and "Limits(" in message, message
    _load(path, Limits(**{bound: enough}))  # raised just enough: loads
    record(f"limit {bound}", refused_at=below, loads_at=enough)


def test_tensor_names_spelt_with_json_escapes_are_counted_too(tmp_path):
    """The count before parsing looks for the literal "data_offsets"; keys spelt with escapes are counted after."""
    entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'.replace("data_offsets", "data\\u005foffsets")
    raw = ("{" + ",".join(f'"t{i}":{entry}' for i in range(5)) + "}").encode()
    path = tmp_path / "escaped.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    assert b'"data_offsets"' not in raw and len(ts.read_weights(path)) == 5  # valid JSON, five empty tensors
    with pytest.raises(ts.CorruptCheckpointError, match="max_tensors"):
        ts.read_weights(path, limits=Limits(max_tensors=4))


def test_a_refused_load_leaves_the_model_as_it_was(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=3), tmp_path / "w.safetensors")
    model = filled(TinyNet(), seed=4)
    before = snapshot(model)
    with pytest.raises(ts.CorruptCheckpointError, match="max_header_bytes"):
        ts.load_weights(model, path, limits=Limits(max_header_bytes=16))
    assert snapshot(model) == before
    ts.load_weights(model, path)
    assert snapshot(model) == snapshot(filled(TinyNet(), seed=3))


def test_a_huge_config_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """A 0.6 MB config.json asking for a 200,000-layer MLP (with a valid self-checksum: it is not
    authentication) is refused by max_config_values; nothing is built."""
    directory = ts.save_model(ts.create_model("mlp", in_features=3, hidden=[4], num_classes=2), tmp_path / "run")
    doc = json.loads((directory / "config.json").read_text())
    doc["kwargs"]["hidden"] = [1] * 200_000
    doc["checksums"]["config.json"]["xxh3-64"] = whole._config_digest(doc)
    (directory / "config.json").write_text(json.dumps(doc))
    built = []
    monkeypatch.setattr(whole, "build_from_config", lambda *a, **k: built.append(a))
    with pytest.raises(ts.CorruptCheckpointError, match="max_config_values"):
        ts.load_model(directory)
    assert built == []


def test_the_cli_takes_limit_options(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=5), tmp_path / "w.safetensors")
    runner = CliRunner()
    n = _header_length(path)
    for command in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "out.pt")], ["diff", str(path), str(path)]):
        refused = runner.invoke(app, [*command, "--limit", f"max_header_bytes={n - 1}"])
        assert refused.exit_code == 1 and "max_header_bytes" in refused.output, (command, refused.output)
        admitted = runner.invoke(app, [*command, "--limit", f"max_header_bytes={n}", "--limit", "max_expansion=3"])
        assert admitted.exit_code == 0, (command, admitted.output)
    bad = runner.invoke(app, ["inspect", str(path), "--limit", "max_bytes=5"])
    assert bad.exit_code == 2 and "max_header_bytes" in bad.output  # usage error, listing the real names


def test_limits_are_per_call_and_per_thread(tmp_path):
    path = ts.save_weights(filled(TinyNet(), seed=6), tmp_path / "w.safetensors")
    with pytest.raises(ts.CorruptCheckpointError):
        ts.read_weights(path, limits=Limits(max_header_bytes=16))
    ts.read_weights(path)  # the default again after the refused call


# the parser behind --limit (issue 20 §8: Arabic-Indic digits, max-tensors=, max_expansion=1e-300 were accepted)

NAMES = [f for f in Limits.__dataclass_fields__]
FLOAT_NAMES = {f.name for f in dataclasses.fields(Limits) if f.type in (float, "float")}


def _admissible(name: str):
    """Values of ``name`` the constructor takes: at least its floor."""
    if name in FLOAT_NAMES:
        return st.floats(min_value=FLOORS[name], max_value=1e6, allow_nan=False).map(lambda v: round(v, 3)).filter(lambda v: v >= FLOORS[name])
    return st.integers(min_value=int(FLOORS[name]), max_value=2**62)


@given(st.lists(st.sampled_from(NAMES), unique=True).flatmap(lambda names: st.fixed_dictionaries({n: _admissible(n) for n in names})))
def test_parse_agrees_with_the_constructor(values):
    items = [f"{k}={v}" for k, v in values.items()]
    assert Limits.parse(items) == Limits(**values)


@given(st.text(max_size=30))
@example("max_expansion=nan")
@example("max_tensors=1e3")
@example("max_tensors=\u0665\u0660\u0660")  # Arabic-Indic 500
@example("max-tensors=5")
@example("max_expansion=1e-300")
@example(" max_tensors=5")
@example("max_tensors=+5")
@example("max_tensors=" + "9" * 5000)
@example("max_tensors=\uff15")  # a full-width 5
@example("max_expansion=0.5")  # below the floor: nothing would load
@example("max_header_bytes=1")
@example("max_config_values=1")
def test_parse_accepts_only_documented_names_and_ascii_digits(text):
    name, sep, value = text.partition("=")
    try:
        parsed = Limits.parse([text])
    except ts.CheckpointError:
        return
    assert sep and name in NAMES, text  # the name exactly as documented (no dash spelling, no spaces)
    assert re.fullmatch(r"[0-9_]+(\.[0-9]+)?" if name in FLOAT_NAMES else r"[0-9_]+", value), text  # ASCII digits
    assert getattr(parsed, name) >= FLOORS[name]


@given(st.sampled_from(NAMES), st.text(st.characters(categories=["Nd"]), min_size=1, max_size=6).filter(lambda t: not t.isascii()))
def test_digits_of_other_scripts_are_refused(name, digits):
    with pytest.raises(ts.CheckpointError, match="digits 0-9"):
        Limits.parse([f"{name}={digits}"])


@given(st.sampled_from(NAMES), st.data())
def test_a_bound_below_its_floor_is_refused_and_the_floor_is_accepted(name, data):
    floor = FLOORS[name]
    below = data.draw(st.floats(min_value=1e-300, max_value=floor, exclude_max=True) if name in FLOAT_NAMES else st.integers(1, int(floor) - 1) if floor > 1 else st.just(0))
    with pytest.raises(ts.CheckpointError, match=name):
        Limits(**{name: below})
    assert getattr(Limits(**{name: floor}), name) == floor
    assert getattr(Limits.parse([f"{name}={floor:g}"]), name) == floor


@pytest.mark.parametrize("bad", [{"max_expansion": 0}, {"max_expansion": float("nan")}, {"max_expansion": float("inf")}, {"max_header_bytes": -1}, {"max_config_depth": 2.5}, {"max_json_bytes": True}, {"max_expansion": "2"}])
def test_nonsense_limits_are_refused(bad):
    with pytest.raises(ts.CheckpointError, match=next(iter(bad))):
        Limits(**bad)


# a config that asks for more than the weights hold


class Table(torch.nn.Module):
    """A parameter and a non-persistent buffer sized by one keyword: load_model builds it for real."""

    def __init__(self, *, length: int = 4):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(length))  # (length,)
        self.register_buffer("index", torch.arange(length), persistent=False)  # (length,), in no checkpoint


@ts.register_model(name="limits_table")
def _table(*, length: int = 4) -> Table:
    return Table(length=length)


def test_a_config_larger_than_its_weights_allocates_nothing(tmp_path, monkeypatch):
    """A valid (re-checksummed) config.json asking for 10**9 values against 4 in the weights: refused
    after the meta build, before the real build that non-persistent buffers need."""
    directory = ts.save_model(ts.create_model("limits_table"), tmp_path / "run")
    assert isinstance(ts.load_model(directory), Table)  # the honest directory loads
    doc = json.loads((directory / "config.json").read_text())
    doc["kwargs"]["length"] = 10**9
    doc["checksums"]["config.json"]["xxh3-64"] = whole._config_digest(doc)
    (directory / "config.json").write_text(json.dumps(doc))
    devices = []
    real_build = whole.build_from_config

    def recording(config, *, device="meta"):
        devices.append(str(device))
        return real_build(config, device=device)

    monkeypatch.setattr(whole, "build_from_config", recording)
    with pytest.raises(ts.IncompatibleCheckpointError, match="weight"):
        ts.load_model(directory)
    assert devices == ["meta"]  # never built for real


ODD_LIMITS = [
    "max_expansion=nan", "max_tensors=1e3", "max_tensors=\u0665\u0660\u0660", "max-tensors=5", "max_expansion=1e-300",
    " max_tensors=5", "max_tensors=+5", "max_tensors=" + "9" * 5000, "max_tensors=\uff15", "max_expansion=0.5",
    "max_header_bytes=1", "max_config_values=1",
]


def test_the_audits_odd_limit_values_are_refused():
    accepted = []
    for text in ODD_LIMITS:
        try:
            Limits.parse([text])
            accepted.append(text[:40])
        except ts.CheckpointError:
            pass
    record("--limit parsing", odd_values=len(ODD_LIMITS), accepted=len(accepted), examples=accepted[:4])
    assert not accepted, accepted
