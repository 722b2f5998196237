"""Shared machinery of the reliability suite (tests/test_reliability_*.py).

- ``LONG`` / ``scale(fast, long)``: ``make test`` runs the fast counts; ``make faults`` and
  ``make fuzz`` set ``TORCHSMITH_LONG=1`` for the long ones.
- ``record(name, **figures)``: figures printed at the end of the run (tests/conftest.py), copied
  into docs/reliability.md.
- ``run_child`` / ``start_child``: run a function of this module in a fresh process (forked from a
  server that has torch and torchsmith imported, so a child starts in milliseconds), with a hard
  timeout; the child may lower its own address-space limit with ``limit_memory``.

This module is imported by those children, so it must not import pytest.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import resource
import time
import traceback
from pathlib import Path

import torch
from ckpt_models import TinyNet, filled  # importing it registers ckpt_tiny, in children too
from helpers import snapshot

import torchsmith as ts

LONG = os.environ.get("TORCHSMITH_LONG", "") not in ("", "0")
FIGURES: dict[str, dict] = {}


def scale(fast, long):
    """The fast count in ``make test``, the long one under ``TORCHSMITH_LONG=1``."""
    return long if LONG else fast


def record(name: str, **figures) -> None:
    """Keep figures for the end-of-run summary (``reliability figures`` section)."""
    FIGURES[name] = {"mode": "long" if LONG else "fast", **figures}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.perf_counter() - self.start, 2)


# child processes


_CTX = None


def context():
    """A forkserver context whose server has torch, torchsmith and this module imported."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "torchsmith", "reliability_tools"])
    return _CTX


def _call(conn, target, args):
    torch.set_num_threads(1)
    try:
        conn.send(("ok", target(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Child:
    """A process running ``target(*args)``; ``result(timeout)`` returns its value or raises."""

    def __init__(self, target, *args):
        ctx = context()
        self.conn, child_conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_call, args=(child_conn, target, args), daemon=True)
        self.process.start()
        child_conn.close()

    def result(self, timeout: float):
        try:
            if not self.conn.poll(timeout):
                raise AssertionError(f"child {self.process.name} gave no answer within {timeout}s (hang?)")
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise AssertionError(f"child {self.process.name} died with exit code {self.process.exitcode}") from None
        finally:
            self.stop()
        if status == "error":
            raise AssertionError(f"child {self.process.name} raised:\n{value}")
        return value

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


def start_child(target, *args) -> Child:
    return Child(target, *args)


def run_child(target, *args, timeout: float = 120):
    return Child(target, *args).result(timeout)


def limit_memory(headroom: int) -> int:
    """Cap this process's address space at its current size plus ``headroom`` bytes; returns the cap.

    Checks the cap works: an allocation of twice ``headroom`` must now fail (memory the allocator
    already holds can serve part of a single ``headroom``-sized one).
    """
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = size + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        bytearray(2 * headroom)
    except MemoryError:
        return cap
    raise AssertionError(f"RLIMIT_AS={cap} did not stop an allocation of {2 * headroom} bytes")


# files


def temporaries(path: Path) -> list[str]:
    """Names of the atomic-write temporaries of ``path`` in its directory."""
    prefix = f".{path.name}.tmp-"
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(prefix))


def forge(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors-like file with the given header (JSON-encoded unless bytes) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + raw + data)
    return path


def generation_weights(gen: int, nbytes: int, data: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A state dict whose every byte is determined by ``gen``: a complete file is self-consistent."""
    if data is None:
        data = torch.empty(nbytes // 4, dtype=torch.float32)
    data.fill_(float(gen))
    return {"gen": torch.tensor([gen], dtype=torch.int64), "data": data}


def check_generation(path: Path) -> int:
    """Load ``path`` with checksums verified, check it is one complete generation, return it."""
    sd = ts.read_weights(path)
    gen = int(sd["gen"][0])
    if not bool((sd["data"] == float(gen)).all()):
        raise AssertionError(f"{path}: generation {gen} but the data holds other values (a torn file)")
    return gen


# child workers (run in forked processes)


def save_forever(path: str, nbytes: int, first_gen: int, ready) -> None:
    """Save generation after generation to ``path`` until killed."""
    data = torch.empty(nbytes // 4, dtype=torch.float32)
    gen = first_gen
    ready.set()
    while True:
        ts.save_weights(generation_weights(gen, nbytes, data), path)
        gen += 1


def save_n(path: str, nbytes: int, first_gen: int, n: int, start) -> int:
    """Save ``n`` generations to ``path`` once ``start`` is set; returns how many were saved."""
    data = torch.empty(nbytes // 4, dtype=torch.float32)
    start.wait(60)
    for gen in range(first_gen, first_gen + n):
        ts.save_weights(generation_weights(gen, nbytes, data), path)
    return n


def load_until(path: str, stop, limit: int) -> dict:
    """Load ``path`` in a loop until ``stop`` is set; every failure is recorded, not raised."""
    loads, gens, failures = 0, set(), []
    while not stop.is_set() and loads < limit:
        try:
            gens.add(check_generation(Path(path)))
        except BaseException as e:  # noqa: BLE001 - every failure is a finding
            failures.append(f"{type(e).__name__}: {e}")
        loads += 1
    return {"loads": loads, "generations": len(gens), "failures": failures[:20], "failed": len(failures)}


def save_model_until(directory: str, first_gen: int, stop) -> int:
    """``save_model`` generation after generation into ``directory`` until ``stop``; returns how many.

    The config's ``scale`` and every weight equal the generation number.
    """
    gen = first_gen
    while not stop.is_set():
        model = ts.create_model("ckpt_tiny", width=64, scale=float(gen))
        with torch.no_grad():
            for t in model.state_dict().values():
                t.fill_(gen)
        ts.save_model(model, directory)
        gen += 1
    return gen - first_gen


def load_models_until(directory: str, stop, limit: int) -> dict:
    """``load_model`` in a loop; a load must be one generation (config and weights alike), never an error."""
    loads, gens, failures = 0, set(), []
    while not stop.is_set() and loads < limit:
        try:
            model = ts.load_model(directory)
            gen = model.scale
            if not all(bool((t == gen).all()) for t in model.state_dict().values()):
                raise AssertionError(f"config of generation {gen}, weights of another")
            gens.add(gen)
        except BaseException as e:  # noqa: BLE001 - every failure is a finding
            failures.append(f"{type(e).__name__}: {e}")
        loads += 1
    return {"loads": loads, "generations": len(gens), "failures": failures[:20], "failed": len(failures)}


def damage_source():
    """The model the damage tests save (seed 99); their target models hold other values (seed 98)."""
    return filled(TinyNet(width=16), seed=99)


def _warm_up() -> None:
    """Run every entry point once on a good file, so lazy one-time set-up happens before the memory cap."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        directory = ts.save_model(ts.create_model("ckpt_tiny", width=16), Path(d) / "m")
        ts.load_model(directory)
        for suffix in (".safetensors", ".pt"):
            path = ts.save_weights(damage_source(), Path(d) / f"w{suffix}")
            ts.read_weights(path)
            ts.inspect_checkpoint(path)


def load_damaged(cases: list[tuple[str, str]], headroom: int) -> list[dict]:
    """Load each ``(path, entry)`` under a memory cap; report what each raised and what it did to its target.

    ``entry``: ``load_weights`` (into a TinyNet(width=16) holding other values), ``read_weights``,
    ``inspect``, ``load_model``. ``unchanged``: the target is byte for byte as before;
    ``original``: what was loaded equals the undamaged file's content.
    """
    original = snapshot(damage_source().state_dict())
    _warm_up()
    limit_memory(headroom)
    out = []
    for path, entry in cases:
        model = filled(TinyNet(width=16), seed=98)
        before = snapshot(model.state_dict())
        result = {"path": path, "entry": entry, "error": None, "message": "", "torchsmith": False, "original": False}
        try:
            if entry == "load_weights":
                ts.load_weights(model, path)
                result["original"] = snapshot(model.state_dict()) == original
            elif entry == "read_weights":
                result["original"] = snapshot(ts.read_weights(path)) == original
            elif entry == "inspect":
                ts.inspect_checkpoint(path)
                result["original"] = True  # checksums verified: nothing to compare
            elif entry == "load_model":
                result["original"] = snapshot(ts.load_model(path).state_dict()) == original
            else:
                raise ValueError(entry)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result.update(error=type(e).__name__, message=str(e), torchsmith=isinstance(e, ts.TorchsmithError))
        result["unchanged"] = snapshot(model.state_dict()) == before
        out.append(result)
    return out


@contextlib.contextmanager
def tiny_tmpfs(directory: Path, size: str = "1m"):
    """Mount a tmpfs of ``size`` on ``directory`` (root only); yields False when that is not possible."""
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, timeout=30)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


# fuzzing (run in a child under a memory cap; hypothesis reports a failing example in the traceback)


def _fuzz_settings(n: int):
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _only_torchsmith_errors(call, model=None) -> bool:
    """Run ``call``; True when it succeeded, False on a TorchsmithError (the model unchanged); anything else escapes."""
    before = snapshot(model.state_dict()) if model is not None else None
    try:
        call()
        return True
    except ts.TorchsmithError:
        if model is not None and snapshot(model.state_dict()) != before:
            raise AssertionError("a failed load changed the model") from None
        return False


def _header_strategies(valid: bytes):
    from hypothesis import strategies as st

    from torchsmith.checkpoint.formats import DTYPES

    ints = st.one_of(st.integers(-3, 64), st.integers(-(2**64), 2**64), st.sampled_from([2**31, 2**32 - 1, 2**62, 2**63 - 1]))
    shape = st.one_of(st.lists(ints, max_size=3), st.text(max_size=3), st.none())
    offsets = st.one_of(st.lists(ints, min_size=2, max_size=2), st.lists(ints, max_size=3), st.floats(), st.none())
    dtype = st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4))
    entry = st.fixed_dictionaries({"dtype": dtype, "shape": shape, "data_offsets": offsets}) | st.dictionaries(
        st.sampled_from(["dtype", "shape", "data_offsets", "x"]), ints | dtype, max_size=4
    )
    digest = st.text("0123456789abcdef", min_size=15, max_size=17)
    meta_value = st.one_of(
        st.text(max_size=20),
        st.dictionaries(st.text(max_size=4), digest, max_size=3).map(json.dumps),
        st.just('{"a": "0123456789abcdef"}'),
    )
    metadata = st.dictionaries(
        st.sampled_from(["torchsmith.hash", "torchsmith.checksums", "torchsmith.aliases", "note"]),
        meta_value | st.just("xxh3-64") | st.integers(),
        max_size=4,
    )
    names = st.sampled_from(["a", "b", "conv.weight", "__metadata__"]) | st.text(max_size=4)
    header = st.dictionaries(names, entry | metadata | ints, max_size=4).map(lambda h: json.dumps(h).encode())
    structured = st.tuples(header, st.binary(max_size=64), st.none() | st.integers(0, 2**64 - 1))
    raw = st.tuples(st.binary(max_size=300), st.binary(max_size=64), st.none())
    edits = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=4)
    mutated = st.tuples(edits, st.integers(0, len(valid))).map(lambda e: _mutate(valid, *e))
    return st.one_of(raw, structured, mutated)


def _mutate(valid: bytes, edits, cut: int) -> tuple[bytes, bytes, int]:
    data = bytearray(valid)
    for pos, value in edits:
        data[pos] = value
    data = bytes(data[: max(cut, 9)])
    return data[8:], b"", int.from_bytes(data[:8], "little")


def fuzz_headers(n: int, workdir: str, headroom: int) -> dict:
    """``n`` hypothesis examples of safetensors bytes through read_weights, inspect and load_weights."""
    from hypothesis import given

    work = Path(workdir)
    valid = ts.save_weights(damage_source(), work / "valid.safetensors").read_bytes()
    counts = {"examples": 0, "loaded": 0}
    _warm_up()
    limit_memory(headroom)

    @_fuzz_settings(n)
    @given(_header_strategies(valid))
    def run(example):
        header, data, length = example
        path = forge(work / "f.safetensors", header, data, length=length)
        counts["examples"] += 1
        model = filled(TinyNet(width=16), seed=98)
        ok = _only_torchsmith_errors(lambda: ts.read_weights(path))
        _only_torchsmith_errors(lambda: ts.inspect_checkpoint(path))
        _only_torchsmith_errors(lambda: ts.load_weights(model, path), model)
        counts["loaded"] += ok

    run()
    return counts


def fuzz_configs(n: int, workdir: str, headroom: int) -> dict:
    """``n`` hypothesis examples of config.json contents through load_model."""
    from hypothesis import given
    from hypothesis import strategies as st

    directory = ts.save_model(ts.create_model("ckpt_tiny"), Path(workdir) / "m")
    base_text = (directory / "config.json").read_text()
    base = json.loads(base_text)
    counts = {"examples": 0, "loaded": 0}
    _warm_up()
    limit_memory(headroom)
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
    kwargs = st.dictionaries(
        st.sampled_from(["width", "classes", "tie", "act_layer", "scale", "x"]),
        values | st.integers(-2, 64) | st.sampled_from([{"$layer": "relu"}, {"$layer": "nope"}, {"$dtype": "float16"}]),
        max_size=4,
    )
    field = st.sampled_from(["name", "kwargs", "checksums", "format", "format_version", "weights"])
    docs = st.one_of(
        values,
        st.tuples(field, values).map(lambda fv: {**base, fv[0]: fv[1]}),
        kwargs.map(lambda k: {**base, "kwargs": k}),
    ).map(json.dumps)
    edits = st.lists(st.tuples(st.integers(0, len(base_text) - 1), st.characters()), min_size=1, max_size=4)
    mutated = edits.map(lambda e: _edit_text(base_text, e))

    @_fuzz_settings(n)
    @given(docs | mutated | st.binary(max_size=64))
    def run(text):
        (directory / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        counts["examples"] += 1
        counts["loaded"] += _only_torchsmith_errors(lambda: ts.load_model(directory))

    run()
    return counts


def _edit_text(text: str, edits) -> str:
    chars = list(text)
    for pos, ch in edits:
        chars[pos] = ch
    return "".join(chars)


def _odd_tensor(kind: str, n: int):
    """A tensor of a kind torch files can hold and torchsmith must refuse or load cleanly."""
    base = torch.arange(max(n, 1), dtype=torch.float32)
    return {
        "plain": lambda: base,
        "half": lambda: base.half(),
        "int8": lambda: base.to(torch.int8),
        "bool": lambda: base > 1,
        "complex128": lambda: base.to(torch.complex128),
        "complex64": lambda: base.to(torch.complex64),
        "float8": lambda: base.to(torch.float8_e4m3fn),
        "meta": lambda: torch.empty(n, device="meta"),
        "sparse": lambda: base.to_sparse(),
        "quantized": lambda: torch.quantize_per_tensor(base, 0.1, 0, torch.quint8),
        "nested": lambda: torch.nested.nested_tensor([base, base[:1]]),
        "expanded": lambda: base[:1].expand(2**20),
        "view": lambda: base[1:],
        "transposed": lambda: base.reshape(1, -1).t(),
        "scalar": lambda: torch.tensor(3.0),
        "empty": lambda: torch.empty(0, 5),
    }[kind]()


def fuzz_torch_objects(n: int, workdir: str, headroom: int) -> dict:
    """``n`` hypothesis examples of torch files (real tensors of every kind, keys of every type, nesting)
    through read_weights, inspect and load_weights: only TorchsmithError escapes, the model unchanged."""
    import warnings

    from hypothesis import given
    from hypothesis import strategies as st

    warnings.filterwarnings("ignore")
    work = Path(workdir)
    counts = {"examples": 0, "loaded": 0}
    _warm_up()
    limit_memory(headroom)
    kinds = st.sampled_from(["plain", "half", "int8", "bool", "complex128", "complex64", "float8", "meta", "sparse",
                             "quantized", "nested", "expanded", "view", "transposed", "scalar", "empty"])
    tensors = st.builds(_odd_tensor, kinds, st.integers(0, 64))
    keys = st.one_of(st.sampled_from(["conv.weight", "embed.weight", "head.weight", "module.bn.bias", "torchsmith", "state_dict"]),
                     st.text(max_size=6), st.integers(-3, 3), st.none(), st.tuples(st.integers(0, 2)))
    leaves = tensors | st.integers() | st.text(max_size=4) | st.none()
    objects = st.recursive(leaves, lambda c: st.dictionaries(keys, c, max_size=4) | st.lists(c, max_size=3), max_leaves=10)
    top = st.one_of(
        st.dictionaries(keys, tensors, max_size=6),
        st.builds(lambda sd, info: {"state_dict": sd, "torchsmith": info}, st.dictionaries(keys, tensors, max_size=4),
                  st.fixed_dictionaries({"hash": st.just("xxh3-64") | st.text(max_size=3),
                                         "checksums": st.text(max_size=20) | st.just('{"a": "0123456789abcdef"}') | objects,
                                         "metadata": objects})),
        objects,
    )

    @_fuzz_settings(n)
    @given(top)
    def run(obj):
        path = work / "f.pt"
        torch.save(obj, path)
        counts["examples"] += 1
        model = filled(TinyNet(width=16), seed=98)
        ok = _only_torchsmith_errors(lambda: ts.read_weights(path))
        _only_torchsmith_errors(lambda: ts.inspect_checkpoint(path))
        _only_torchsmith_errors(lambda: ts.load_weights(model, path, strict=False), model)
        counts["loaded"] += ok

    run()
    return counts
