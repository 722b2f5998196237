"""A header of a million tensors inside the default bounds no longer exhausts memory (issue 20 §5).

The audit's file: 101 MB, a million one-byte tensors with a checksum table, under ``max_header_bytes``
(100 MiB) and the old ``max_tensors`` (1,000,000); every entry point died with a raw ``MemoryError``
under a 4 GB address-space cap (each tensor costs about 2 KiB to parse, plan and report). The default
``max_tensors`` is now 300,000 (3 x a 671B mixture-of-experts checkpoint with FP8 scales): the file is
refused by its count before its JSON is parsed; and (long run) a file of exactly 300,000 tensors loads
through every entry point under the same cap.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

from ckpt_models import TinyNet
from reliability_tools import LONG, Child, record
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.checkpoint.checksums import HASH_NAME, tensor_hasher
from torchsmith.checkpoint.formats import META_CHECKSUMS, META_DIGEST, META_HASH
from torchsmith.checkpoint.safetensors_format import metadata_digest
from torchsmith.cli import app

CAP = 4 * 2**30
ENTRIES = ("inspect_checkpoint", "read_weights", "load_weights", "convert_checkpoint", "cli inspect")


def many_tensors(path: Path, n: int) -> Path:
    """``n`` one-byte tensors (``t0`` ... ``t{n-1}``) with torchsmith's checksum table, as save_weights writes them."""
    h = tensor_hasher("U8", (1,))
    h.update(b"\0")
    digest = h.hexdigest()  # every tensor holds the same byte
    meta = {META_HASH: HASH_NAME, META_CHECKSUMS: json.dumps({f"t{i}": digest for i in range(n)}, sort_keys=True, separators=(",", ":"))}
    meta[META_DIGEST] = metadata_digest(meta)
    header = {"__metadata__": meta, **{f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(n))
    return path


def load_under_cap(path: str, workdir: str, cap: int) -> dict[str, str]:
    """Each entry point on ``path`` with the address space capped at ``cap`` bytes: what it did."""
    warm = ts.save_weights(TinyNet(), Path(workdir) / "warm.safetensors")
    for entry in ENTRIES:  # lazy imports and one-time set-up before the cap
        _call(entry, warm, Path(workdir) / "warm-out.safetensors")
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    assert size < cap, f"the child already maps {size:,} bytes"
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = {}
    for entry in ENTRIES:
        try:
            _call(entry, Path(path), Path(workdir) / f"out-{entry.replace(' ', '-')}.safetensors")
            out[entry] = "loaded"
        except ts.TorchsmithError as e:
            out[entry] = f"refused: {e}"
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out[entry] = f"{type(e).__name__}: {e}"
    return out


def _call(entry: str, path: Path, out: Path) -> None:
    if entry == "inspect_checkpoint":
        ts.inspect_checkpoint(path)
    elif entry == "read_weights":
        ts.read_weights(path)
    elif entry == "load_weights":
        ts.load_weights(TinyNet(), path, strict=False)
    elif entry == "convert_checkpoint":
        ts.convert_checkpoint(path, out)
    else:
        done = CliRunner().invoke(app, ["inspect", str(path)])
        if done.exit_code == 1 and "error:" in done.output and "Traceback" not in done.output:
            raise ts.CheckpointError(done.output)
        if done.exit_code != 0:
            raise RuntimeError(f"exit code {done.exit_code}: {done.output[-300:]}")


def test_a_million_tensor_header_is_refused_before_it_is_parsed(tmp_path):
    path = many_tensors(tmp_path / "million.safetensors", 1_000_000)
    assert path.stat().st_size > 100 * 10**6 and path.stat().st_size - 8 - 1_000_000 < ts.Limits().max_header_bytes
    got = Child(load_under_cap, str(path), str(tmp_path), CAP).result(timeout=900)
    through = {k: v for k, v in got.items() if not (v.startswith("refused") and "max_tensors" in v)}
    record("a million tensors in 4 GB", file_bytes=path.stat().st_size, entries=len(got), through=len(through), examples=list(through.items())[:3])
    assert not through, through


def test_a_header_at_the_default_bound_loads_within_4_gb(tmp_path):
    """Long run only (a 30 MB header, each entry point a few seconds per 100,000 tensors)."""
    n = ts.Limits().max_tensors if LONG else 20_000
    path = many_tensors(tmp_path / "many.safetensors", n)
    got = Child(load_under_cap, str(path), str(tmp_path), CAP).result(timeout=3000)
    record("tensors at the default bound in 4 GB", tensors=n, file_bytes=path.stat().st_size, results=sorted(set(got.values())))
    assert all(v == "loaded" for v in got.values()), got
