"""Our safetensors code against the `safetensors` package, both ways, on generated files.

Every file the package writes reads identically with ours, and every file we write reads identically
with the package: the same keys, dtypes, shapes, bits and metadata. Tensors cover every dtype of the
format this torch has (bool, float16, bfloat16, float8, unsigned, complex), 0-d and empty shapes, and
every bit pattern (NaN payloads, infinities, negative zero), drawn as raw bytes.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import torchsmith as ts
from torchsmith.checkpoint.formats import DTYPES
from torchsmith.checkpoint.safetensors_format import SafetensorsFile
from helpers import bits

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 4), max_size=3)  # [] is 0-d; a 0 anywhere is empty


@st.composite
def tensors(draw) -> torch.Tensor:
    name = draw(st.sampled_from(sorted(DTYPES)))
    dtype, shape = DTYPES[name], draw(shapes)
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool).reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)


keys = st.text(min_size=1, max_size=12).filter(lambda k: k != "__metadata__")
state_dicts = st.dictionaries(keys, tensors(), min_size=1, max_size=6)
metadata = st.dictionaries(st.text(max_size=10).filter(lambda k: not k.startswith("torchsmith.")), st.text(max_size=20), max_size=3)


def assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for k, t in expected.items():
        assert got[k].dtype == t.dtype, k
        assert tuple(got[k].shape) == tuple(t.shape), k
        assert bits(got[k]) == bits(t), k


@SETTINGS
@given(sd=state_dicts, meta=metadata)
def test_files_the_package_writes_read_identically_with_ours(sd, meta):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "theirs.safetensors"
        save_file(sd, path, metadata=meta or None)
        assert_identical(ts.read_weights(path), sd)
        st_file = SafetensorsFile(path)
        assert st_file.metadata == meta and st_file.checksum_status == "absent"
        assert {k: (list(s), dt) for k, s, dt in ts.inspect_checkpoint(path).entries} == {
            k: (list(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in sd.items()
        }


@SETTINGS
@given(sd=state_dicts, meta=metadata)
def test_files_we_write_read_identically_with_the_package(sd, meta):
    with tempfile.TemporaryDirectory() as d:
        path = ts.save_weights(sd, Path(d) / "ours.safetensors", metadata=meta)
        with safe_open(path, "pt") as f:
            theirs = {k: f.get_tensor(k) for k in f.keys()}
            their_meta = f.metadata() or {}
        assert_identical(theirs, sd)
        assert {k: v for k, v in their_meta.items() if not k.startswith("torchsmith.")} == meta
        assert_identical(ts.read_weights(path), sd)  # and with ours, checksums verified
