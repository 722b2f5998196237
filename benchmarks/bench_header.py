"""Header costs: a 100,000-tensor safetensors header (about what a 671B mixture-of-experts checkpoint
with FP8 scales holds), parsed and planned against a model, side by side with safetensors' own parser.

Interleaved rounds in one process; prints the medians and the ratios, then the target of issue 23 with
PASS / FAIL: the whole ``load_weights`` (verified) at most 1.5x safetensors' own ``safe_open`` + a
per-key copy into the same model, on the same file.
"Plan" is everything load_weights does before reading data: parse, validate, match keys, check shapes.

    python benchmarks/bench_header.py              # 100,000 tensors
    python benchmarks/bench_header.py --tensors 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import record
from safetensors import safe_open
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint._gc import gc_paused
from torchsmith.checkpoint.safetensors_format import SafetensorsFile
from torchsmith.checkpoint.sources import open_source
from torchsmith.checkpoint.weights import _plan


@gc_paused()  # as load_weights runs it
def parse_and_plan(model: nn.Module, path: Path) -> None:
    """Everything load_weights does before it reads data: parse, validate, match keys, check shapes."""
    _plan(open_source(path), model, "auto")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sd = {f"layers.{i // 8}.experts.{i % 8}.w": torch.zeros(1, dtype=torch.float16) for i in range(args.tensors)}
    model = nn.Module()
    for i, (k, t) in enumerate(sd.items()):
        model.register_buffer(f"b{i}", t.clone())
    with tempfile.TemporaryDirectory() as tmp:
        path = ts.save_weights(sd, Path(tmp) / "many.safetensors")
        flat = ts.save_weights({f"b{i}": t for i, t in enumerate(sd.values())}, Path(tmp) / "flat.safetensors")
        times: dict[str, list[float]] = {
            "ours: parse": [],
            "safetensors: safe_open + keys": [],
            "ours: parse + plan": [],
            "ours: load_weights (plan + read)": [],
            "safetensors: safe_open + per-key copy": [],
        }

        def per_key_copy() -> None:
            msd = model.state_dict()
            with safe_open(str(flat), "pt") as f, torch.no_grad():
                for k in f.keys():
                    msd[k].copy_(f.get_tensor(k))

        for i in range(args.rounds):
            if i % 2:  # the two loads in turn, the order reversed every other round
                t = time.perf_counter()
                per_key_copy()
                times["safetensors: safe_open + per-key copy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            SafetensorsFile(path)
            times["ours: parse"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with safe_open(str(path), "pt") as f:
                list(f.keys())
            times["safetensors: safe_open + keys"].append(time.perf_counter() - t)
            t = time.perf_counter()
            parse_and_plan(model, flat)
            times["ours: parse + plan"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ts.load_weights(model, flat)
            times["ours: load_weights (plan + read)"].append(time.perf_counter() - t)
            if not i % 2:
                t = time.perf_counter()
                per_key_copy()
                times["safetensors: safe_open + per-key copy"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<40} {v:8.3f} s   ({args.tensors:,} tensors, median of {args.rounds})")
    print(f"ratio parse ours / safetensors: {med['ours: parse'] / med['safetensors: safe_open + keys']:.2f}")
    ours, peer = med["ours: load_weights (plan + read)"], med["safetensors: safe_open + per-key copy"]
    ok = ours / peer <= 1.5
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'PASS' if ok else 'FAIL'}  4 many small tensors: load_weights / safe_open + per-key copy  {ours / peer:.2f}x  "
          f"(target <= 1.50x)   {ours:.3f} / {peer:.3f}")
    record("4 many small tensors: load_weights / safe_open + per-key copy <= 1.50x", ok, f"{ours / peer:.2f}x")


if __name__ == "__main__":
    main()
