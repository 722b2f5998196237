"""Step 5 - whole models that survive surgery: build, change, save, load in a fresh process, same outputs.

A user's real sequence: build a model, change it (gray-scale input, a new
head, frozen BatchNorm, folded for inference), save it, and rebuild it later
with no code. Every change torchsmith makes is recorded as a JSON step;
``save_model`` writes the steps and first checks that they rebuild exactly this
model; ``load_model`` replays them on the meta device and reads the weights.
A second Python process (nothing shared but the directory) gives bitwise the
same outputs. A change made by hand is refused at save time, naming where.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import torchsmith as ts

console = Console()

# what the fresh process runs: load the directory, run the saved input, save the output
FRESH = """
import sys, torch, torchsmith as ts
from safetensors.torch import load_file, save_file
model = ts.load_model(sys.argv[1])
x = load_file(sys.argv[2])["x"].clone()  # fresh memory: BLAS rounding can depend on alignment
with torch.no_grad():
    save_file({"y": model.eval()(x).contiguous()}, sys.argv[3])
print(type(model.bn1).__name__, model.conv1.weight.requires_grad, model.layer4[0].conv1.weight.requires_grad,
      model.conv1.in_channels, model.fc.out_features)
"""


def main() -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = ts.create_model("resnet18")
        # the surgery chain: each call changes the model in place, returns it, and records a step
        model = ts.adapt_input_channels(model, 1)  # gray-scale images
        model = ts.replace_head(model, 5)  # five classes
        model = ts.freeze(model, exclude=["layer4", "fc"], bn="frozen")  # fine-tune layer4 + head only
        model = ts.fold_batchnorm(model.eval())  # frozen BatchNorm folded into the convs
        console.print("[bold]recorded steps[/]")
        for step in ts.model_config(model)["steps"]:
            shown = {k: (f"{len(v)} pairs" if k == "pairs" else v) for k, v in step.items()}
            console.print(f"  {json.dumps(shown)}", highlight=False)

        ts.save_model(model, tmp / "gray5")
        x = torch.randn(2, 1, 64, 64)  # (B, 1, H, W)
        save_file({"x": x}, tmp / "x.safetensors")
        out = subprocess.run(
            [sys.executable, "-c", FRESH, str(tmp / "gray5"), str(tmp / "x.safetensors"), str(tmp / "y.safetensors")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        with torch.no_grad():
            y = model.eval()(x)
        same = torch.equal(load_file(tmp / "y.safetensors")["y"], y)
        bn1, conv1_trains, layer4_trains, chans, classes = out.stdout.split()
        console.print(f"fresh process rebuilt: bn1 {bn1}, conv1 trains {conv1_trains}, layer4 trains {layer4_trains}, "
                      f"{chans} input channel, {classes} outputs; [bold]bitwise-equal outputs: {same}[/]")  # fmt: skip
        assert same

        # a change torchsmith cannot describe is refused before anything is written
        by_hand = ts.create_model("resnet18")
        by_hand.layer1[0].relu = nn.GELU()
        try:
            ts.save_model(by_hand, tmp / "by_hand")
        except ts.UnsaveableModelError as e:
            console.print(f"\n[bold red]refused:[/] {str(e)[:230]}...", highlight=False)
        console.print(f"written anyway: {(tmp / 'by_hand').exists()}")
        ts.replace_module(by_hand, "layer1.0.relu", ts.create_layer("GELU"))  # described: saves and reloads
        ts.save_model(by_hand, tmp / "by_hand")
        console.print(f"with create_layer('GELU'): saved, reloads as {type(ts.load_model(tmp / 'by_hand').layer1[0].relu).__name__}")


if __name__ == "__main__":
    main()
