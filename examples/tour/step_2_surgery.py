"""Step 2 - surgery: modifying a pretrained ResNet-50, done right (heads, freezing, extra inputs, features, speed).

The tutorial's section 4 on our resnet50: its head change that changes nothing,
fixed; its named classifier; an edit that would break the model, refused with
the model as it was; its image + extra-input model; freezing all but layer2-4
with a report; intermediate features by nested name; and the
inference speed-up of ``optimize_for_inference``, printed as a ratio.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

import torchsmith as ts

console = Console()


def speed_up(model: nn.Module, fast: nn.Module, x: torch.Tensor, rounds: int = 3) -> float:
    """Best-of-rounds time of ``model`` over ``fast``, run side by side."""
    best = {id(model): float("inf"), id(fast): float("inf")}
    with torch.inference_mode():
        model(x), fast(x)  # warm-up
        for _ in range(rounds):
            for m in (model, fast):
                start = time.perf_counter()
                m(x)
                best[id(m)] = min(best[id(m)], time.perf_counter() - start)
    return best[id(model)] / best[id(fast)]


def features_table(backbone: nn.Module, x: torch.Tensor) -> Table:
    """Features by nested name: the output names, the nodes they come from, their shapes."""
    body = ts.extract_features(backbone.eval(), {"layer2": "c3", "layer3.1.conv2": "mid", "layer4": "c5"})
    table = Table("output", "node", "shape", title=f"extract_features (strategy: {body.strategy})")
    for (node, name), y in zip(body.return_nodes.items(), body(x).values()):
        table.add_row(name, node, str(tuple(y.shape)))
    return table


def tables() -> list:
    """What this step prints as tables (tests/test_examples.py checks they fit 80 columns)."""
    backbone = ts.freeze(ts.create_model("resnet50"), exclude=["layer2", "layer3", "layer4"])
    return [features_table(backbone, torch.randn(1, 3, 224, 224))]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    x = torch.randn(1, 3, 224, 224)  # (B, 3, H, W)
    model = ts.create_model("resnet50").eval()

    # 1. the tutorial's "20 classes": setting an attribute changes the printout, not the layer
    broken = copy.deepcopy(model)
    broken.fc.out_features = 20
    console.print(f"fc.out_features = 20  -> output {tuple(broken(x).shape)}  [red](still 1000 wide)[/]")
    ts.replace_head(model, 20)
    console.print(f"replace_head(model, 20) -> output {tuple(model(x).shape)}, model.num_classes = {model.num_classes}")

    # 2. a named classifier in place of fc
    classifier = nn.Sequential(OrderedDict(
        fc1=nn.Linear(2048, 128), relu=nn.ReLU(), dropout=nn.Dropout(0.5), fc2=nn.Linear(128, 10), output=nn.Softmax(dim=1),
    ))  # fmt: skip
    ts.replace_module(model, "fc", classifier)
    probs = model(x)
    console.print(f"named classifier: {list(model.fc._modules)} -> {tuple(probs.shape)}, rows sum to {probs.sum(1).item():.3f}")

    # 2b. an edit that leaves the model unable to run is refused, naming the layer, and rolled back
    try:
        ts.replace_module(model, "layer4.2.conv3", nn.Conv2d(512, 1024, 1, bias=False))  # bn3 expects 2048
    except ts.SurgeryError as err:
        console.print(f"replace_module of the wrong width: [red]refused[/] ({escape(str(err).split(': ', 1)[1])})")
    console.print(f"  layer4.2.conv3 still {model.layer4[2].conv3.out_channels} channels; output {tuple(model(x).shape)}")

    # 3. image + one extra scalar per sample
    both = ts.add_inputs(ts.create_model("resnet50"), extra_features=1, num_classes=10).eval()
    out = both(torch.randn(2, 3, 224, 224), torch.tensor([0.3, 1.7]))
    console.print(f"add_inputs: forward(image (2, 3, 224, 224), extra (2,)) -> {tuple(out.shape)} logits")

    # 4. freeze everything but layer2-4, BatchNorm statistics kept
    backbone = ts.create_model("resnet50")
    ts.freeze(backbone, exclude=["layer2", "layer3", "layer4"])  # in place, returns the model
    console.print(str(ts.freeze_report(backbone)))

    # 5. features by nested name, and their shapes without computing anything
    console.print(features_table(backbone, x))
    info = ts.feature_info(backbone, (1, 3, 224, 224))
    console.print("feature_info on meta: " + ", ".join(f"{f.module} {f.channels}ch/{f.stride}" for f in info))

    # 6. inference: Conv+BN folded, channels-last
    reference = ts.create_model("resnet50").eval()
    fast = ts.optimize_for_inference(copy.deepcopy(reference))  # in place: the copy is what changes
    batch = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        y, y_fast = reference(batch), fast(batch)
    error = ((y - y_fast).abs().max() / y.abs().max()).item()
    ratio = speed_up(reference, fast, batch)
    console.print(f"optimize_for_inference: [bold]{ratio:.2f}x[/] faster at batch 4 (relative error {error:.1e})")


if __name__ == "__main__":
    main()
