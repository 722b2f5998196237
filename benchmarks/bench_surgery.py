"""optimize_for_inference and feature extraction against the plain eager model, and against the machine's peak.

ResNet-50, batch 8, 224x224, 2 threads, inference mode. Every candidate runs
once per round, interleaved (benchmarks/_common.py); a candidate's time is the
median of its rounds. A large ``torch.mm`` on the same threads runs in the same
rounds: its GFLOP/s is the machine's measured fp32 peak, and each variant's
achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the eager
model) is printed as a share of it. For each variant a profile splits its time
into FLOP-heavy kernels (convolution, matmul) and the rest (memory-bound
BatchNorm / ReLU / add / pooling, per-op overhead): that is what limits it.

Prints:

- the speed-up of ``optimize_for_inference(model)`` over eager (target >= 1.3x);
- the share of peak of each variant (``compile=True``: hold >= 80%, aim 85%);
- ``extract_features(model, ["layer4"])`` / the plain forward up to layer4 (target <= 1.03);
- ``extract_features(model, ["layer2"])`` / the full forward (target <= 0.5);
- int8 (``optimize_for_inference(dtype="int8", calibration=...)``, needs torchao): its speed-up over the
  best fp32 variant (target >= 1.6x), and its top-1 agreement with the float model on the test set of
  ``examples/finetune_digits.py`` (target >= 99%), the digits model trained here first (about a minute).

Run: ``.venv/bin/python benchmarks/bench_surgery.py [--rounds 7] [--no-int8]``; PASS / FAIL per target at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
import warnings

import torch
from _common import interleaved, median, record, spread
from torch.utils.flop_counter import FlopCounterMode

from torchsmith import create_model, extract_features, optimize_for_inference

HEAVY = ("conv", "mm", "linear", "matmul", "gemm")  # op names whose time is FLOPs (aten, mkldnn, Inductor)


def _torchscript_frozen(model: torch.nn.Module, x: torch.Tensor):
    """The reference: torch.jit.optimize_for_inference(freeze(script(model))), warmed up."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))
            for _ in range(3):  # the profiling executor optimises after a few runs
                scripted(x)
        return scripted
    except Exception as exc:  # TorchScript is deprecated; the reference is optional
        print(f"(TorchScript reference unavailable: {type(exc).__name__})")
        return None


def int8_variant(model: torch.nn.Module, x: torch.Tensor):
    """The int8 resnet50, compiled, or None with the reason (torchao missing). Its weights are random, so
    its top-1 agreement is not a measure of anything: the digits model below is checked instead."""
    try:
        from torchsmith.surgery.quantize import quantize_int8

        return quantize_int8(copy.deepcopy(model), [x], min_agreement=0.0), ""
    except Exception as exc:  # noqa: BLE001 - reported as the target's failure
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def digits_agreement(epochs: int) -> tuple[float, float, int]:
    """Train the digits model of examples/finetune_digits.py, quantize it on training batches, and return
    (top-1 agreement int8 vs float on the test set, float test accuracy, test images)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "finetune_digits.py"
    spec = importlib.util.spec_from_file_location("finetune_digits", path)
    ex = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ex  # its dataclasses look their module up there
    spec.loader.exec_module(ex)
    torch.manual_seed(0)
    data = ex.load_data()
    model = ex.digits_model()
    with _quiet_stderr():
        ex.train(model, data, targets=data["train_y"], test_targets=data["test_y"], epochs=epochs, lr=0.1,
                 batch_size=64, seed=0, d=ex.Dist(), title="digits (for int8)")  # fmt: skip
    model.eval()
    calibration = [data["train_x"][i : i + 64] for i in range(0, 256, 64)]
    int8 = optimize_for_inference(model, dtype="int8", calibration=calibration)
    with torch.inference_mode():
        ref, got = model(data["test_x"]), int8(data["test_x"])
    accuracy = (ref.argmax(1) == data["test_y"]).float().mean().item()
    return (ref.argmax(1) == got.argmax(1)).float().mean().item(), accuracy, len(ref)


def matmul_peak(n: int) -> tuple[callable, float]:
    """A torch.mm of two n x n fp32 matrices, and its FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def count_flops(model, x) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile_split(fn, x) -> tuple[float, float, int, float]:
    """One profiled call: (share of time in FLOP-heavy kernels, seconds in them, ops, share in opaque graph ops)."""
    with torch.inference_mode():
        fn(x)
        with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    heavy = sum(e.self_cpu_time_total for e in events if any(h in e.key.lower() for h in HEAVY))
    # TorchScript runs its oneDNN convolutions inside the graph: their time is the self time of "forward"
    opaque = sum(e.self_cpu_time_total for e in events if e.key == "forward")
    ops = sum(e.count for e in events if "::" in e.key or e.key.startswith(("cpp_", "graph_")))
    if not total:
        return 0.0, 0.0, ops, 0.0
    return heavy / total, heavy / 1e6, ops, opaque / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 variant and the digits agreement")
    parser.add_argument("--digits-epochs", type=int, default=8, help="epochs of the digits model checked for int8 agreement")
    parser.add_argument("--mm", type=int, nargs="+", default=[2048, 4096], help="sizes of the square torch.mm whose best rate is the peak")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("resnet50").eval()
    x = torch.randn(args.batch, 3, 224, 224)
    last = extract_features(model, ["layer4"])
    stage2 = extract_features(model, ["layer2"])
    fast = optimize_for_inference(copy.deepcopy(model))  # in place, as all surgery: the copy is optimized
    variants = {"eager": model, "optimize_for_inference": fast}
    compiled = optimize_for_inference(copy.deepcopy(model), compile=True)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(x)  # compile once, outside the timed rounds
    compile_seconds = time.perf_counter() - start
    variants["optimize_for_inference(compile=True)"] = compiled
    int8_reason = "--no-int8"
    if not args.no_int8:
        int8, int8_reason = int8_variant(model, x)
        if int8 is not None:
            with torch.inference_mode():
                int8(x)  # compile once
            variants["optimize_for_inference(dtype='int8')"] = int8
    scripted = _torchscript_frozen(model, x)
    if scripted is not None:
        variants["TorchScript frozen (reference)"] = scripted
    others = {
        "optimized, extract layer2": extract_features(fast, ["layer2"]),
        "forward_features": model.forward_features,
        f"extract layer4 ({last.strategy})": last,
        f"extract layer2 ({stage2.strategy})": stage2,
    }
    mms = {f"torch.mm {n}x{n}": matmul_peak(n) for n in args.mm}
    candidates = {**{name: mm for name, (mm, _) in mms.items()}, **variants, **others}

    def run(fn):
        def call():
            with torch.inference_mode():
                fn() if fn in mm_fns else fn(x)

        return call

    mm_fns = [mm for mm, _ in mms.values()]
    times = interleaved({name: run(fn) for name, fn in candidates.items()}, rounds=args.rounds)
    t = {name: median(v) for name, v in times.items()}
    peak_name = max(mms, key=lambda name: mms[name][1] / t[name])  # the best of the sizes: the machine's peak
    peak = mms[peak_name][1] / t[peak_name]
    flops = count_flops(model, x)

    print(
        f"resnet50, batch {args.batch}, 224x224, {args.threads} threads, median of {args.rounds} interleaved rounds "
        f"(torch {torch.__version__}); spread = (max - min) / median"
    )
    print(f"machine's fp32 matmul peak (the best of {', '.join(mms)}, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s ({peak_name})")
    print(f"work per forward (torch.utils.flop_counter, eager model): {flops / 1e9:.1f} GFLOP")
    print(f"{'candidate':<40}{'ms':>9}{'spread':>8}{'GFLOP/s':>9}{'of peak':>9}{'vs eager':>10}")
    for name in candidates:
        secs = t[name]
        rate = (mms[name][1] if name in mms else flops) / secs
        shown = name in variants or name.startswith("torch.mm")
        print(
            f"{name:<40}{secs * 1e3:>9.1f}{spread(times[name]):>7.0%} "
            + (f"{rate / 1e9:>8.1f}{rate / peak:>9.0%}" if shown else f"{'':>8}{'':>9}")
            + (f"{t['eager'] / secs:>9.2f}x" if name in variants else "")
        )

    print()
    print("what limits each variant (one profiled call: time in convolution/matmul kernels vs the rest)")
    for name, fn in variants.items():
        heavy_share, heavy_seconds, ops, opaque = profile_split(fn, x)
        share = flops / t[name] / peak
        if opaque > 0.5:
            verdict = "not split: its convolutions run inside the frozen graph, out of the profiler's sight"
        else:
            verdict = (
                f"{1 - heavy_share:.0%} of its time outside conv/matmul kernels (memory-bound BatchNorm/ReLU/add/"
                f"pooling, and per-op overhead over {ops} ops); the conv/matmul kernels alone run at "
                f"{flops / heavy_seconds / peak:.0%} of peak"
            )
        print(f"  {name:<38} {share:>4.0%} of peak: {verdict}")
    print("  (a variant at the kernels' own share has no overhead left to remove; below it, the time outside them is the limit;")
    print("   oneDNN's convolutions can beat torch.mm's rate a little, so a share can pass 100%)")

    layer4, layer2 = t[f"extract layer4 ({last.strategy})"], t[f"extract layer2 ({stage2.strategy})"]
    share = {name: flops / t[name] / peak for name in variants}
    print()
    print("targets")
    print(f"  optimize_for_inference speed-up over eager:          {t['eager'] / t['optimize_for_inference']:.2f}x   (target >= 1.3x)")
    print(f"  optimize_for_inference share of peak:                {share['optimize_for_inference']:.0%}")
    comp = share["optimize_for_inference(compile=True)"]
    print(f"  optimize_for_inference(compile=True) share of peak:  {comp:.0%}   (hold >= 80%, aim 85%; first call compiles: {compile_seconds:.0f} s)")
    print(f"  optimize_for_inference(compile=True) speed-up:       {t['eager'] / t['optimize_for_inference(compile=True)']:.2f}x")
    if scripted is not None:
        print(f"  TorchScript frozen (reference) share of peak:        {share['TorchScript frozen (reference)']:.0%}  ({t['eager'] / t['TorchScript frozen (reference)']:.2f}x eager)")
    print(f"  eager share of peak:                                 {share['eager']:.0%}")
    print(f"  extract layer4 / forward_features: {layer4 / t['forward_features']:.3f}   (target <= 1.03)")
    print(f"  extract layer4 / full forward:     {layer4 / t['eager']:.3f}")
    print(f"  extract layer2 / full forward:     {layer2 / t['eager']:.3f}   (target <= 0.5)")
    print(f"    same, both optimized:            {t['optimized, extract layer2'] / t['optimize_for_inference']:.3f}")
    speedup = t["eager"] / t["optimize_for_inference"]
    record("optimize_for_inference speed-up over eager >= 1.3x", speedup >= 1.3, f"{speedup:.2f}x")
    record("extract layer4 / forward_features <= 1.03", layer4 / t["forward_features"] <= 1.03, f"{layer4 / t['forward_features']:.3f}")
    record("extract layer2 / full forward <= 0.5", layer2 / t["eager"] <= 0.5, f"{layer2 / t['eager']:.3f}")

    def verdict(text: str, ok: bool, shown: str) -> bool:
        print(f"  {'PASS' if ok else 'FAIL'}  {text:<58}{shown}")
        return record(text, ok, shown.split("  (")[0])

    print()
    print(f"targets of issue 23 (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    results = [verdict("fp32 compile=True share of the matmul peak >= 90%", comp >= 0.9, f"{comp:.0%}")]
    fp32 = [n for n in variants if "int8" not in n and n != "eager"]
    best = min(fp32, key=lambda n: t[n])
    name8 = "optimize_for_inference(dtype='int8')"
    if name8 in t:
        speedup = t[best] / t[name8]
        results.append(verdict("int8 speed-up over the best fp32 variant >= 1.6x", speedup >= 1.6,
                               f"{speedup:.2f}x  ({t[name8] * 1e3:.1f} ms vs {best} {t[best] * 1e3:.1f} ms; "
                               f"{t['optimize_for_inference(compile=True)'] / t[name8]:.2f}x compile=True)"))
        try:
            agreement, accuracy, n = digits_agreement(args.digits_epochs)
            results.append(verdict("int8 top-1 agreement with fp32, digits test set >= 99%", agreement >= 0.99,
                                   f"{agreement:.1%} of {n} images (float model's accuracy {accuracy:.1%})"))
        except Exception as exc:  # noqa: BLE001 - e.g. refused below 99% on its calibration data
            results.append(verdict("int8 top-1 agreement with fp32, digits test set >= 99%", False,
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
    else:
        results.append(verdict("int8 speed-up over the best fp32 variant >= 1.6x", False, f"not measured: {int8_reason}"))
    print(f"{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
