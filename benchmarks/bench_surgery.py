"""optimize_for_inference and feature extraction against the plain eager model, side by side.

ResNet-50, batch 8, 224x224, 2 threads, inference mode. Each candidate runs in
turn, round after round; a candidate's time is its best round. Prints ratios:

- speed-up of ``optimize_for_inference(model)`` over the eager model (target >= 1.3x);
- time of ``extract_features(model, ["layer4"])`` / the plain forward up to layer4 (target <= 1.03);
- time of ``extract_features(model, ["layer2"])`` / the full forward (target <= 0.5).

Run: ``.venv/bin/python benchmarks/bench_surgery.py [--rounds 5]``
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from torchsmith import create_model, extract_features, optimize_for_inference


def best_times(candidates: dict, x: torch.Tensor, rounds: int) -> dict[str, float]:
    times = {name: float("inf") for name in candidates}
    with torch.inference_mode():
        for fn in candidates.values():  # warm-up
            fn(x)
        for _ in range(rounds):
            for name, fn in candidates.items():
                start = time.perf_counter()
                fn(x)
                times[name] = min(times[name], time.perf_counter() - start)
    return times


def _torchscript_frozen(model: torch.nn.Module, x: torch.Tensor):
    """The reference the issue names: torch.jit.optimize_for_inference(freeze(script(model))), warmed up."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("resnet50").eval()
    x = torch.randn(args.batch, 3, 224, 224)
    last = extract_features(model, ["layer4"])
    stage2 = extract_features(model, ["layer2"])
    fast = optimize_for_inference(copy.deepcopy(model))  # in place, as all surgery: the copy is optimized
    candidates = {
        "eager": model,
        "optimized": fast,
        "optimized, extract layer2": extract_features(fast, ["layer2"]),
        "forward_features": model.forward_features,
        f"extract layer4 ({last.strategy})": last,
        f"extract layer2 ({stage2.strategy})": stage2,
    }
    compiled = optimize_for_inference(copy.deepcopy(model), compile=True)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(x)  # compile once, outside the timed rounds
    compile_seconds = time.perf_counter() - start
    candidates["optimized, compile=True"] = compiled
    scripted = _torchscript_frozen(model, x)
    if scripted is not None:
        candidates["torchscript frozen (reference)"] = scripted
    t = best_times(candidates, x, args.rounds)
    print(f"resnet50, batch {args.batch}, 224x224, {args.threads} threads, best of {args.rounds} rounds (torch {torch.__version__})")
    for name, seconds in t.items():
        print(f"  {name:<28} {seconds * 1000:8.1f} ms")
    layer4, layer2 = t[f"extract layer4 ({last.strategy})"], t[f"extract layer2 ({stage2.strategy})"]
    print(f"optimize_for_inference speed-up: {t['eager'] / t['optimized']:.2f}x   (target >= 1.3x)")
    print(f"optimize_for_inference(compile=True): {t['eager'] / t['optimized, compile=True']:.2f}x   (aim 1.7x; first call compiles: {compile_seconds:.0f} s)")
    if scripted is not None:
        print(f"  TorchScript's frozen optimisation (reference): {t['eager'] / t['torchscript frozen (reference)']:.2f}x")
    print(f"extract layer4 / forward_features: {layer4 / t['forward_features']:.3f}   (target <= 1.03)")
    print(f"extract layer4 / full forward:     {layer4 / t['eager']:.3f}")
    print(f"extract layer2 / full forward:     {layer2 / t['eager']:.3f}   (target <= 0.5)")
    print(f"  same, both optimized:            {t['optimized, extract layer2'] / t['optimized']:.3f}")


if __name__ == "__main__":
    main()
