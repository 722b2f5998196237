"""Fuzzing the spec reader and builder: only TorchsmithError escapes, nothing is imported, no file is
opened but the one a spec string names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchsmith as ts
from helpers import ROOT

NAMES = ["Conv2d", "Linear", "ReLU", "BatchNorm2d", "Flatten", "Dropout", "Sequential", "ModuleList", "ModuleDict", "Graph",
         "DoubleConv", "concat", "add", "crop_like", "interpolate", "mlp", "resnet18", "LSTM", "Upsample", "Embedding",
         "os.system", "__import__", "Module", "torch.nn.Linear"]
KEYS = NAMES + ["layers", "graph", "model", "input", "name", "repeat", "from", "args", "nodes", "inputs", "outputs",
                "in_features", "out_features", "in_channels", "kernel_size", "dim", "conv1", "a", "b", "x.y", "training",
                "forward", "graph_nodes", "_modules", "x-anchor"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(-2, 2, allow_nan=False), st.sampled_from(["auto", "input", "a", "b", "conv1"]),
    st.sampled_from(NAMES), st.text(max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), inner, max_size=4)),
    max_leaves=24,
)
shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4)
specs = st.fixed_dictionaries(
    {},
    optional={
        "layers": values,
        "graph": st.fixed_dictionaries({"nodes": st.dictionaries(st.sampled_from(KEYS), values, max_size=5)}, optional={"outputs": values, "inputs": values}),
        "model": values,
        "input": st.one_of(shapes, values),
        "name": values,
    },
)

_WATCH: dict = {"on": False, "opened": [], "imported": []}


def _audit(event: str, args: tuple) -> None:
    if not _WATCH["on"]:
        return
    if event == "open":
        _WATCH["opened"].append(args[0])
    elif event == "import":
        _WATCH["imported"].append(args[0])


sys.addaudithook(_audit)


def _build_watched(spec, named: str | None = None) -> None:
    before = set(sys.modules)
    _WATCH.update(on=True, opened=[], imported=[])
    try:
        ts.build(spec, device="meta")
    except ts.TorchsmithError:
        pass
    finally:
        _WATCH["on"] = False
    new = set(sys.modules) - before
    assert not new, f"the spec imported {sorted(new)}"
    allowed = set() if named is None else {named, os.fspath(Path(named))}
    opened = [p for p in _WATCH["opened"] if not isinstance(p, int) and os.fspath(p) not in allowed]
    assert not opened, f"the spec opened {opened}"


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """Import and run once what valid specs use, so the fuzz sees only what a spec itself causes."""
    for spec in ROOT.glob("examples/specs/*.yaml"):
        ts.build(spec, device="meta")
    for name in NAMES:
        for args in (None, [3], [3, 4], [3, 4, 3], {"args": [3, 4]}):
            for spec in ({"layers": [{name: args}]}, {"input": [2, 3, 8, 8], "layers": [{name: args}]},
                         {"input": [2, 3], "graph": {"nodes": {"a": {name: args}, "b": {name: args, "from": ["a", "input"]}}}}):
                try:
                    ts.build(spec, device="meta")
                except ts.TorchsmithError:
                    pass
    try:
        ts.build("not a file.yaml")
    except ts.TorchsmithError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs)
def test_any_dict_spec_raises_only_torchsmith_errors(spec):
    _build_watched(spec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_any_yaml_text_spec_raises_only_torchsmith_errors(spec):
    _build_watched(yaml.safe_dump(spec))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_string_opens_at_most_the_file_it_names(text):
    if "\x00" in text:  # a NUL can name no file; it must still be a clean SpecError
        named = None
    else:
        named = text
    _build_watched(text, named=named)


def test_the_watch_sees_imports_and_opens(tmp_path):
    """The fuzz checks can fail: reading a named file is seen as an open of that file only."""
    spec = tmp_path / "s.yaml"
    spec.write_text("layers: [ReLU]\n")
    fresh = next(m for m in ("tabnanny", "pyclbr", "mailbox", "wave", "shelve") if m not in sys.modules)  # stdlib, unused here
    _WATCH.update(on=True, opened=[], imported=[])
    ts.build(spec)
    __import__(fresh)
    _WATCH["on"] = False
    del sys.modules[fresh]
    assert str(spec) in [os.fspath(p) for p in _WATCH["opened"] if not isinstance(p, int)]
    assert fresh in _WATCH["imported"]
    _build_watched(spec, named=str(spec))
    with pytest.raises(AssertionError, match="opened"):
        _build_watched(spec, named=None)
