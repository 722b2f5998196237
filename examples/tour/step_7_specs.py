"""Step 7 - specs: the tutorial's compositions and its U-Net as data, built, checked, saved and rebuilt.

The tutorial composes layers by hand and computes every input width itself. Here each composition
is a YAML spec in examples/specs/: a named and a positional sequential, a list, a dict, and the U-Net
as a graph whose node names give the zoo U-Net's state-dict keys. Each is validated, built ("auto"
widths inferred on the meta device), summarized, and saved under out/specs/ as config.json (the spec)
+ model.safetensors, which load_model rebuilds with no code.

Run alone: python examples/tour/step_7_specs.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

import torchsmith as ts
from torchsmith.spec import output_shapes

console = Console()
SPECS = Path(__file__).resolve().parents[1] / "specs"
OUT = Path("out") / "specs"


def specs_table(save: bool = True) -> Table:
    """Each spec of examples/specs built: its model class, parameters, output shape and FLOPs."""
    table = Table(title="the tutorial's compositions as specs (examples/specs/*.yaml)")
    for col in ("spec", "model", "parameters", "output", "FLOPs"):
        table.add_column(col, justify="right" if col in ("parameters", "FLOPs") else "left")
    for name in ("conv_stack", "conv_stack_positional", "mlp", "mlp_list", "mlp_dict", "unet"):
        path = SPECS / f"{name}.yaml"
        model = ts.build(path)
        flops = ts.summary(model, input_size=yaml.safe_load(path.read_text())["input"]).total_flops
        table.add_row(
            name,
            type(model).__name__,
            f"{sum(p.numel() for p in model.parameters()):,}",
            "x".join(map(str, output_shapes(path))),
            f"{flops / 1e9:.2f} G" if flops >= 1e9 else f"{flops / 1e6:.2f} M",
        )
        if save:
            ts.save_model(model, OUT / name)
    return table


def tables() -> list:
    """What this step prints as tables (tests/test_examples.py checks they fit 80 columns)."""
    return [specs_table(save=False), ts.summary(ts.build(SPECS / "conv_stack.yaml"), input_size=(1, 3, 224, 224))]


def main() -> None:
    console.print(specs_table())
    console.print(f"saved each to {OUT}/<name> (config.json holds the spec)")
    console.print(ts.summary(ts.build(SPECS / "conv_stack.yaml"), input_size=(1, 3, 224, 224)))  # the tutorial's stack

    # the U-Net spec is the zoo's U-Net: its weights load with no renaming and give the same outputs
    spec_unet = ts.load_model(OUT / "unet").eval()  # rebuilt from config.json alone
    zoo = ts.create_model("unet").eval()
    spec_unet.load_state_dict(zoo.state_dict())
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (1, 3, 50, 37)]:  # 50x37 is not a multiple of 16
            x = torch.rand(shape)
            same = torch.equal(spec_unet(x), zoo(x))
            console.print(f"unet.yaml vs create_model('unet') on {shape}: identical outputs = {same}")

    # mistakes are listed all at once, each with its path and a suggestion
    try:
        ts.build("layers:\n  conv1: {Conv2d: [x, 20, 5]}\n  relu1: Relu\n")
    except ts.SpecError as e:
        console.print(f"[bold]a bad spec:[/] {e}", highlight=False)


if __name__ == "__main__":
    main()
