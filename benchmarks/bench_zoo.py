"""Forward speed of the zoo against the straightforward implementations users run today.

Side by side in one process, interleaved rounds (benchmarks/_common.py), median of the rounds,
eval mode, no_grad, 2 threads. Baselines (tests/reference_models.py): torchvision's
ResNet and FPN backbone as written there, and the tutorial's U-Net.

    python benchmarks/bench_zoo.py [--batch 8] [--runs 5] [--only resnet50]

Prints ms per batch, images/s and the ratio ours/baseline (target <= 1.03).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import interleaved, median, record, spread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_models import TutorialUNet, TVBackboneWithFPN, tv_resnet  # noqa: E402

from torchsmith import create_model  # noqa: E402

CASES = {
    "resnet18": (lambda: tv_resnet("resnet18"), 224),
    "resnet50": (lambda: tv_resnet("resnet50"), 224),
    "resnet152": (lambda: tv_resnet("resnet152"), 224),
    "resnet50_fpn": (lambda: TVBackboneWithFPN("resnet50"), 224),
    "unet": (TutorialUNet, 256),
}


def bench(name: str, batch: int, runs: int) -> dict[str, list[float]]:
    make_baseline, size = CASES[name]
    ours, base = create_model(name).eval(), make_baseline().eval()
    x = torch.randn(batch, 3, size, size)

    def call(model):
        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    return interleaved({"ours": call(ours), "base": call(base)}, rounds=runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.runs} interleaved rounds")
    print(f"{'model':<14}{'ours ms':>10}{'base ms':>10}{'spread':>8}{'ours img/s':>12}{'ratio':>8}   (target <= 1.03)")
    for name in args.only:
        times = bench(name, args.batch, args.runs)
        ours, base = median(times["ours"]), median(times["base"])
        noise = max(spread(times["ours"]), spread(times["base"]))
        print(f"{name:<14}{ours * 1e3:>10.1f}{base * 1e3:>10.1f}{noise:>7.0%} {args.batch / ours:>12.1f}{ours / base:>8.3f}")
        record(f"zoo {name} forward / baseline <= 1.03", ours / base <= 1.03, f"{ours / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
