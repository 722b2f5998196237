"""Checkpoint load and save speed and memory against the peer paths and the machine's floors, side by side
(issues 4, 9, 14 and 23).

Loads: every round is one child process that runs every path once (the order
reversed every other round), each on a warm page cache, each with its own
peak-RSS reading (VmHWM reset before it starts). A path's time is the median
of its rounds (benchmarks/_common.py: the one statistic of every benchmark).
The peers load into the same resident model as ``load_weights``:

- ``torch.load`` (plain and ``mmap=True``) + ``load_state_dict``;
- ``safetensors.torch.load_file`` + ``load_state_dict``;
- ``safetensors.safe_open`` with a per-key copy (the low-memory path), and
  with ``backend="pread"`` when the installed safetensors has it;
- ``cat file > /dev/null``: the bytes read once, nothing else.

Floors measured in the same rounds: the checksum pass alone and the copy pass alone (what a verified
load into a live model must do, one after the other), the first touch of fresh memory (what any load
into new tensors pays). Cold rounds (``--cold-rounds``) evict every file from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)``) before each path, so the disk sets the pace; ``cat`` of the
evicted file is the disk's own floor there.

Saves: each save a child process after ``os.sync()``, interleaved, median.

    python benchmarks/bench_checkpoint.py            # a 1 GiB model
    python benchmarks/bench_checkpoint.py --gib 0.1  # quick check

Every target is printed last, as a ratio with PASS or FAIL.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, order, record, spread

GiB = 1024**3
MiB = 1024**2
WIDTH = 8192  # one Linear(8192, 8192) = 256 MiB of float32

LOADS = {  # kind -> label
    "load_weights": "torchsmith load_weights (verified)",
    "load_weights_sharded": "torchsmith load_weights, 4 shards (verified)",
    "load_weights_unverified": "torchsmith load_weights(verify=False)",
    "load_model": "torchsmith load_model (meta build + read)",
    "load_model_mmap": "torchsmith load_model(mmap=True) (verified)",
    "load_model_mmap_unverified": "torchsmith load_model(mmap=True, verify=False)",
    "hash_pass": "floor: checksum pass alone",
    "copy_pass": "floor: copy pass alone (preadv into the model)",
    "torch_load_mmap": "torch.load(mmap=True) + load_state_dict",
    "torch_load": "torch.load + load_state_dict",
    "safetensors_load_file": "safetensors load_file + load_state_dict",
    "safe_open_copy": "safetensors safe_open, per-key copy",
    "safe_open_pread_copy": 'safe_open(backend="pread"), per-key copy',
    "cat": "cat file > /dev/null",
    "first_touch": "fresh memory: first touch of that many bytes",
    "meta_assign": "meta build + load_file + assign=True",
}
COLD = ("load_weights", "load_weights_unverified", "safe_open_copy", "safetensors_load_file", "cat")
PEERS = ("torch_load_mmap", "torch_load", "safetensors_load_file", "safe_open_copy", "safe_open_pread_copy")
SAVES = {
    "save_weights": "torchsmith save_weights (fsync, checksums)",
    "safetensors_save": "safetensors.torch.save_file",
    "safetensors_save_fsync": "safetensors.torch.save_file + fsync",
}


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def evict(d: Path) -> None:
    """Drop every file under ``d`` from the page cache (they were synced: nothing dirty stays)."""
    for f in d.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def register(layers: int, width: int) -> None:
    """A plain MLP builder, so load_model can rebuild it (on the meta device)."""
    from torch import nn

    import torchsmith as ts

    if "bench_mlp" not in ts.list_models("bench_mlp"):
        ts.register_model(lambda: nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]), name="bench_mlp")


def build(layers: int, width: int):
    import torch
    from torch import nn

    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # resident, like a model that was just built
    return model


def has_pread_backend(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt", backend="pread"):
            return True
    except (TypeError, ValueError):
        return False


# the child: one round of loads, or one save


def load_paths(d: Path, model, nbytes: int) -> dict:
    import torch
    import safetensors.torch as st
    from safetensors import safe_open

    import torchsmith as ts
    from torchsmith.checkpoint.sources import open_source

    def per_key_copy(**kw) -> None:
        sd = model.state_dict()
        with safe_open(d / "ref.safetensors", "pt", **kw) as f, torch.no_grad():
            for k in f.keys():
                sd[k].copy_(f.get_tensor(k))

    def first_touch() -> None:
        torch.empty(nbytes, dtype=torch.uint8).fill_(1)

    def hash_pass() -> None:
        src = open_source(d / "w.safetensors")
        src.verify(src.keys())

    def copy_pass() -> None:
        sd = model.state_dict()
        open_source(d / "w.safetensors").read_many(list(sd.items()), verify=False)

    def meta_assign():
        with torch.device("meta"):
            fresh = ts.create_model("bench_mlp")
        fresh.load_state_dict(st.load_file(d / "ref.safetensors"), assign=True)
        return fresh

    return {
        "load_weights": lambda: ts.load_weights(model, d / "w.safetensors"),
        "load_weights_sharded": lambda: ts.load_weights(model, d / "sharded.safetensors.index.json"),
        "load_weights_unverified": lambda: ts.load_weights(model, d / "w.safetensors", verify=False),
        "load_model": lambda: ts.load_model(d / "model"),
        "load_model_mmap": lambda: ts.load_model(d / "model", mmap=True),
        "load_model_mmap_unverified": lambda: ts.load_model(d / "model", mmap=True, verify=False),
        "hash_pass": hash_pass,
        "copy_pass": copy_pass,
        "meta_assign": meta_assign,
        "torch_load_mmap": lambda: model.load_state_dict(torch.load(d / "w.pt", weights_only=True, mmap=True)),
        "torch_load": lambda: model.load_state_dict(torch.load(d / "w.pt", weights_only=True)),
        "safetensors_load_file": lambda: model.load_state_dict(st.load_file(d / "ref.safetensors")),
        "safe_open_copy": per_key_copy,
        "safe_open_pread_copy": lambda: per_key_copy(backend="pread"),
        "cat": lambda: subprocess.run(["cat", str(d / "w.safetensors")], stdout=subprocess.DEVNULL, check=True),
        "first_touch": first_touch,
    }


def child_loads(kinds: list[str], d: Path, layers: int, width: int, cold: bool) -> list[dict]:
    register(layers, width)
    model = build(layers, width)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    paths = load_paths(d, model, nbytes)
    out = []
    for kind in kinds:
        gc.collect()
        if cold:
            evict(d)
        base, _ = rss()
        reset_peak()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, t = time.process_time(), time.perf_counter()
        result = paths[kind]()
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        _, peak = rss()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        del result
        out.append({"kind": kind, "seconds": elapsed, "cpu": cpu, "growth": peak - base})
    return out


def child_save(kind: str, d: Path, layers: int, width: int) -> dict:
    import torch
    import safetensors.torch as st

    import torchsmith as ts

    model = build(layers, width)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    base, _ = rss()
    reset_peak()
    t = time.perf_counter()
    if kind == "save_weights":
        ts.save_weights(model, d / "out.safetensors")
    else:
        st.save_file(model.state_dict(), d / "out_ref.safetensors")
        if kind == "safetensors_save_fsync":  # the same durability as save_weights
            fd = os.open(d / "out_ref.safetensors", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elapsed = time.perf_counter() - t
    _, peak = rss()
    return {"kind": kind, "seconds": elapsed, "growth": peak - base}


def run_child(*args: str) -> object:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# the parent


def verdict(text: str, value: float, limit: float, inputs: str, *, fmt: str = "{:.2f}x") -> bool:
    ok = value <= limit
    print(f"  {'PASS' if ok else 'FAIL'}  {text:<62}{fmt.format(value):>8}  (target <= {fmt.format(limit)})   {inputs}")
    return record(f"{text.strip()} <= {fmt.format(limit)}", ok, fmt.format(value))


def per_round_worst(runs: dict[str, list[dict]], ours: str, peers: list[str]) -> float:
    """The largest per-round ratio of ``ours`` to the fastest of ``peers`` in that round."""
    ratios = []
    for i, mine in enumerate(runs[ours]):
        best = min(runs[p][i]["seconds"] for p in peers if len(runs[p]) > i)
        ratios.append(mine["seconds"] / best)
    return max(ratios)


def targets(r: dict[str, dict], c: dict[str, dict] | None, runs: dict[str, list[dict]], nbytes: int) -> list[bool]:
    """Print every target of issue 23 (and the earlier ones still held) as PASS / FAIL with its inputs."""
    s = {k: v["seconds"] for k, v in r.items()}
    peers = [k for k in PEERS if k in s]
    fastest = min(peers, key=s.get)
    out = []
    print(f"targets (fastest peer: {LOADS[fastest]}, {s[fastest]:.3f} s)")
    floor = s["hash_pass"] + s["copy_pass"]
    cpu = {k: v["cpu"] for k, v in r.items() if "cpu" in v}
    out.append(verdict("1 warm: load_weights / (hash pass + copy pass)", s["load_weights"] / floor, 1.1,
                       f"{s['load_weights']:.3f} / ({s['hash_pass']:.3f} + {s['copy_pass']:.3f}); CPU seconds "
                       f"{cpu['load_weights'] / (cpu['hash_pass'] + cpu['copy_pass']):.2f}x"))
    out.append(verdict("1 warm: load_weights(verify=False) / fastest peer", s["load_weights_unverified"] / s[fastest], 1.05,
                       f"{s['load_weights_unverified']:.3f} / {s[fastest]:.3f}; worst round "
                       f"{per_round_worst(runs, 'load_weights_unverified', peers):.2f}x; CPU seconds "
                       f"{cpu['load_weights_unverified'] / cpu[fastest]:.2f}x"))
    out.append(verdict("  sharded load_weights / (hash pass + copy pass)", s["load_weights_sharded"] / floor, 1.1,
                       f"{s['load_weights_sharded']:.3f} / {floor:.3f}"))
    out.append(verdict("  load_weights peak RSS growth / weights", r["load_weights"]["growth"] / nbytes, 0.05,
                       f"{r['load_weights']['growth'] / MiB:.0f} MiB", fmt="{:.3f}x"))
    if c is not None:
        cs = {k: v["seconds"] for k, v in c.items()}
        out.append(verdict("2 cold: load_weights / cat", cs["load_weights"] / cs["cat"], 1.1,
                           f"{cs['load_weights']:.3f} / {cs['cat']:.3f} (disk {nbytes / cs['cat'] / 1e9:.2f} GB/s)"))
        out.append(verdict("2 cold: load_weights peak RSS growth / weights", c["load_weights"]["growth"] / nbytes, 0.05,
                           f"{c['load_weights']['growth'] / MiB:.0f} MiB", fmt="{:.3f}x"))
        print(f"        (cold, for reference: verify=False {cs['load_weights_unverified'] / cs['cat']:.2f}x cat, "
              f"safetensors load_file {cs['safetensors_load_file'] / cs['cat']:.2f}x, safe_open copy {cs['safe_open_copy'] / cs['cat']:.2f}x)")
    lm_floor = s["first_touch"] + s["load_weights"]
    out.append(verdict("3 load_model / (first touch + load_weights)", s["load_model"] / lm_floor, 1.15,
                       f"{s['load_model']:.3f} / ({s['first_touch']:.3f} + {s['load_weights']:.3f})"))
    out.append(verdict("3 load_model(mmap=True) / meta + load_file + assign", s["load_model_mmap"] / s["meta_assign"], 1.1,
                       f"{s['load_model_mmap']:.3f} / {s['meta_assign']:.3f}"))
    print(f"        (load_model(mmap=True, verify=False) / the same peer: {s['load_model_mmap_unverified'] / s['meta_assign']:.2f}x; "
          f"load_model(mmap=True) / (peer + hash pass): {s['load_model_mmap'] / (s['meta_assign'] + s['hash_pass']):.2f}x; "
          f"the peer checks nothing and touches no page)")
    out.append(verdict("  save_weights / safetensors save_file", s["save_weights"] / s["safetensors_save"], 1.5,
                       f"{s['save_weights']:.3f} / {s['safetensors_save']:.3f}"))
    return out


def fixtures(d: Path, layers: int, width: int) -> int:
    import torch
    import safetensors.torch as st

    import torchsmith as ts

    register(layers, width)
    with torch.device("meta"):
        model = ts.create_model("bench_mlp")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ts.save_weights(model, d / "w.safetensors")
    ts.save_weights(model, d / "sharded.safetensors", max_shard_size=nbytes // 4 + MiB)  # 4 shards
    torch.save(model.state_dict(), d / "w.pt")
    st.save_file(model.state_dict(), d / "ref.safetensors")
    ts.save_model(model, d / "model")
    os.sync()  # flush the fixtures now, so no measured fsync waits behind their writeback
    return nbytes


def measure_loads(d: Path, layers: int, width: int, rounds: int, kinds: list[str], cold: bool = False) -> dict[str, list[dict]]:
    common = ["--dir", str(d), "--layers", str(layers), "--width", str(width)] + (["--cold"] if cold else [])
    run_child("--loads", ",".join(kinds), *common)  # warm-up round: every file in the page cache
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(rounds):
        for r in run_child("--loads", ",".join(order(kinds, i)), *common):
            runs[r["kind"]].append(r)
    return runs


def measure_saves(d: Path, layers: int, width: int, rounds: int) -> dict[str, list[dict]]:
    """Each save after os.sync() (no writeback of an earlier write in its time), onto an existing file."""
    runs: dict[str, list[dict]] = {k: [] for k in SAVES}
    for i in range(rounds):
        for k in order(list(SAVES), i):
            os.sync()
            runs[k].append(run_child("--save", k, "--dir", str(d), "--layers", str(layers), "--width", str(width)))
    return runs


def interpreter_baseline() -> int:
    code = "import torch, torchsmith, pathlib; s=pathlib.Path('/proc/self/status').read_text(); print([l for l in s.splitlines() if l.startswith('VmRSS')][0].split()[1])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) * 1024


def report(runs: dict[str, list[dict]], labels: dict[str, str], nbytes: int) -> dict[str, dict]:
    """Print one line per path (median seconds, spread, GB/s, CPU seconds, peak RSS growth); return the medians."""
    med = {}
    print(f"{'path':<46}{'median s':>9}{'spread':>8}{'GB/s':>7}{'CPU s':>7}{'peak RSS growth':>17}{'x weights':>10}")
    for k, label in labels.items():
        if k not in runs or not runs[k]:
            continue
        secs = [r["seconds"] for r in runs[k]]
        m = {"seconds": median(secs), "growth": median([r["growth"] for r in runs[k]])}
        m["cpu"] = median([r["cpu"] for r in runs[k]]) if "cpu" in runs[k][0] else float("nan")
        med[k] = m
        print(
            f"{label:<46}{m['seconds']:>9.3f}{spread(secs):>7.0%} {nbytes / m['seconds'] / 1e9:>6.2f}{m['cpu']:>7.2f}"
            f"{m['growth'] / MiB:>13.0f} MiB{m['growth'] / nbytes:>9.3f}x"
        )
    return med


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0, help="model size in GiB (float32)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the load measurements")
    ap.add_argument("--save-rounds", type=int, default=3, help="interleaved rounds of the save measurements")
    ap.add_argument("--cold-rounds", type=int, default=3, help="interleaved rounds on a cold page cache (0: none)")
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loads")
    ap.add_argument("--save")
    ap.add_argument("--dir")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--width", type=int, default=WIDTH)
    args = ap.parse_args()
    if args.loads:
        print(json.dumps(child_loads(args.loads.split(","), Path(args.dir), args.layers, args.width, args.cold)))
        return 0
    if args.save:
        print(json.dumps(child_save(args.save, Path(args.dir), args.layers, args.width)))
        return 0

    import torch

    width = WIDTH if args.gib >= 0.25 else 2048
    layers = max(1, round(args.gib * GiB / (width * width * 4)))
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent) as tmp:
        d = Path(tmp)
        nbytes = fixtures(d, layers, width)
        kinds = [k for k in LOADS if k != "safe_open_pread_copy" or has_pread_backend(d / "ref.safetensors")]
        loads = measure_loads(d, layers, width, args.rounds, kinds)
        colds = measure_loads(d, layers, width, args.cold_rounds, list(COLD), cold=True) if args.cold_rounds else {}
        saves = measure_saves(d, layers, width, args.save_rounds)
        baseline = interpreter_baseline()

    import safetensors

    print(
        f"model: {layers} x Linear({width}, {width}) float32 = {nbytes / GiB:.2f} GiB ({nbytes:,} bytes); "
        f"torch {torch.__version__}, safetensors {safetensors.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"loads: median of {args.rounds} interleaved rounds, warm page cache; spread = (max - min) / median")
    r = report(loads, LOADS, nbytes)
    if colds:
        print(f"cold loads: median of {args.cold_rounds} interleaved rounds, every file evicted from the page cache before each path")
        c = report(colds, {k: LOADS[k] for k in COLD}, nbytes)
    print(f"saves: median of {args.save_rounds} interleaved rounds, each after os.sync()")
    r.update(report(saves, SAVES, nbytes))
    print(f"interpreter baseline (torch + torchsmith): {baseline / MiB:.0f} MiB; load average {os.getloadavg()[0]:.2f} (2 CPUs: above 1, other work shares them)")
    print()
    results = targets(r, c if colds else None, loads, nbytes)
    print(f"{sum(results)} of {len(results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
