"""Checkpoint memory and speed, side by side (issue 4's targets).

Each measurement runs in its own subprocess so peak RSS is clean; the results
are printed together as ratios:

- load_weights peak RSS growth vs torch.load + load_state_dict and
  safetensors.load_file + load_state_dict (model already built);
- load_weights time (checksums verified) vs ``cat file > /dev/null`` (warm cache);
- load_model total peak RSS above the interpreter's baseline;
- save_weights time and RSS growth vs safetensors.torch.save_file.

    python benchmarks/bench_checkpoint.py            # a 1 GiB model
    python benchmarks/bench_checkpoint.py --gib 0.1  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 1024**3
WIDTH = 8192  # one Linear(8192, 8192) = 256 MiB of float32


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


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


# child measurements: each prints one JSON line


def child(kind: str, d: Path, layers: int, width: int) -> dict:
    import torch
    import safetensors.torch as st

    import torchsmith as ts

    register(layers, width)
    model = None if kind in ("load_model",) else build(layers, width)
    if kind.startswith("save"):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
    base, _ = rss()
    reset_peak()
    t = time.perf_counter()
    if kind == "load_weights":
        ts.load_weights(model, d / "w.safetensors")
    elif kind == "torch_load":
        model.load_state_dict(torch.load(d / "w.pt", weights_only=True))
    elif kind == "torch_load_mmap":
        model.load_state_dict(torch.load(d / "w.pt", weights_only=True, mmap=True))
    elif kind == "safetensors_load":
        model.load_state_dict(st.load_file(d / "ref.safetensors"))
    elif kind == "load_model":
        model = ts.load_model(d / "model")
    elif kind == "save_weights":
        ts.save_weights(model, d / "out.safetensors")
    elif kind == "safetensors_save":
        st.save_file(model.state_dict(), d / "out_ref.safetensors")
    elif kind == "safetensors_save_fsync":  # the same durability as save_weights
        st.save_file(model.state_dict(), d / "out_ref.safetensors")
        fd = os.open(d / "out_ref.safetensors", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    elapsed = time.perf_counter() - t
    _, peak = rss()
    return {"kind": kind, "seconds": elapsed, "growth": peak - base, "peak": peak, "base": base}


def measure(kind: str, d: Path, layers: int, width: int, repeat: int = 1) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--dir", str(d), "--layers", str(layers), "--width", str(width)],
            check=True, capture_output=True, text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def measure_saves(d: Path, layers: int, width: int, rounds: int) -> dict:
    """Saves interleaved round by round, each after os.sync() (no writeback of an earlier
    write in its time) onto an existing file of the same size (both replace a checkpoint);
    the median round of each kind."""
    kinds = ("save_weights", "safetensors_save", "safetensors_save_fsync")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(rounds):
        for k in kinds if i % 2 == 0 else reversed(kinds):
            os.sync()
            runs[k].append(measure(k, d, layers, width))
    return {k: sorted(v, key=lambda r: r["seconds"])[len(v) // 2] for k, v in runs.items()}


def interpreter_baseline() -> int:
    code = "import torch, torchsmith, pathlib; s=pathlib.Path('/proc/self/status').read_text(); print([l for l in s.splitlines() if l.startswith('VmRSS')][0].split()[1])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) * 1024


def cat_seconds(path: Path, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0, help="model size in GiB (float32)")
    ap.add_argument("--save-rounds", type=int, default=3, help="interleaved rounds of the save measurements")
    ap.add_argument("--child")
    ap.add_argument("--dir")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--width", type=int, default=WIDTH)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.dir), args.layers, args.width)))
        return 0

    import torch
    import safetensors.torch as st

    import torchsmith as ts

    width = WIDTH if args.gib >= 0.25 else 2048
    layers = max(1, round(args.gib * GiB / (width * width * 4)))
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent) as tmp:
        d = Path(tmp)
        register(layers, width)
        with torch.device("meta"):
            model = ts.create_model("bench_mlp")
        model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        ts.save_weights(model, d / "w.safetensors")
        torch.save(model.state_dict(), d / "w.pt")
        st.save_file(model.state_dict(), d / "ref.safetensors")
        ts.save_model(model, d / "model")
        del model
        os.sync()  # flush the fixtures now, so no measured fsync waits behind their writeback

        cat = cat_seconds(d / "w.safetensors")
        r = {k: measure(k, d, layers, width, repeat=2 if k == "load_weights" else 1)
             for k in ("load_weights", "torch_load", "torch_load_mmap", "safetensors_load", "load_model")}
        r.update(measure_saves(d, layers, width, rounds=args.save_rounds))
        baseline = interpreter_baseline()

    mib = 1024**2
    print(f"model: {layers} x Linear({width}, {width}) float32 = {nbytes / GiB:.2f} GiB ({nbytes:,} bytes)")
    print(f"{'measurement':<44}{'seconds':>9}{'peak RSS growth':>18}{'x weights':>11}")
    for k, label in (
        ("load_weights", "torchsmith load_weights (verified)"),
        ("torch_load", "torch.load + load_state_dict"),
        ("torch_load_mmap", "torch.load(mmap=True) + load_state_dict"),
        ("safetensors_load", "safetensors load_file + load_state_dict"),
        ("load_model", "torchsmith load_model (total, from nothing)"),
        ("save_weights", "torchsmith save_weights (fsync, checksums)"),
        ("safetensors_save", "safetensors.torch.save_file"),
        ("safetensors_save_fsync", "safetensors.torch.save_file + fsync"),
    ):
        x = r[k]
        print(f"{label:<44}{x['seconds']:>9.3f}{x['growth'] / mib:>14.0f} MiB{x['growth'] / nbytes:>10.2f}x")
    print(f"{'cat file > /dev/null (warm)':<44}{cat:>9.3f}")
    print()
    print(f"load_weights time / cat:                       {r['load_weights']['seconds'] / cat:.2f}x   (target <= 3x, aim 1.5x)")
    print(f"load_weights RSS growth / weights:             {r['load_weights']['growth'] / nbytes:.3f}x (target <= 0.25x)")
    print(f"torch.load path RSS growth / weights:          {r['torch_load']['growth'] / nbytes:.3f}x")
    print(f"safetensors path RSS growth / weights:         {r['safetensors_load']['growth'] / nbytes:.3f}x")
    print(f"save_weights time / safetensors save_file:     {r['save_weights']['seconds'] / r['safetensors_save']['seconds']:.2f}x (target <= 1.5x)")
    print(f"save_weights time / (save_file + fsync):       {r['save_weights']['seconds'] / r['safetensors_save_fsync']['seconds']:.2f}x")
    print(f"save_weights RSS growth / weights:             {r['save_weights']['growth'] / nbytes:.3f}x (target <= 0.1x)")
    print(f"load_model peak RSS above baseline / weights: {(r['load_model']['peak'] - r['load_model']['base']) / nbytes:.3f}x (target <= 1.1x)")
    print(f"interpreter baseline (torch + torchsmith):     {baseline / mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
