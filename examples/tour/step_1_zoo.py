"""Step 1 - the zoo: list models, pretrained weights, a ResNet-152 + FPN backbone, the tutorial's U-Net.

Run alone: python examples/tour/step_1_zoo.py
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

import torchsmith
from torchsmith.pretrained import cache_path

console = Console()


def fpn_table(fpn) -> Table:
    """The backbone's outputs on one 224x224 image: level, shape, stride."""
    with torch.no_grad():
        feats = fpn(torch.randn(1, 3, 224, 224))
    title = "resnet152_fpn on a 1x3x224x224 image"
    table = Table(title=title, min_width=len(title))
    for col in ("level", "shape", "stride"):
        table.add_column(col)
    for info, (level, t) in zip(fpn.feature_info, feats.items()):
        table.add_row(level, "x".join(map(str, t.shape)), str(info.stride))
    return table


def tables() -> list:
    """What this step prints as tables (tests/test_examples.py checks they fit 80 columns)."""
    return [fpn_table(torchsmith.create_model("resnet152_fpn").eval())]


def pretrained() -> None:
    """torchvision's weights for resnet18, when the torch hub cache has them (the tour runs offline too)."""
    weights = torchsmith.get_weights("resnet18")  # the default, what pretrained=True picks
    file = cache_path(weights)
    console.print(f"\n[bold]pretrained weights[/]: {', '.join(torchsmith.list_pretrained('resnet*'))}")
    if not file.is_file():
        console.print(
            f"{weights.name} ({weights.meta['file_size_mb']} MB, {weights.meta['acc@1']}% top-1) is not in the torch hub "
            f"cache ({file}). `torchsmith fetch resnet18` downloads it there (verified), or copy it from a machine "
            f"that has it; this step then builds [bold]create_model('resnet18', pretrained=True)[/]."
        )
        return
    model = torchsmith.create_model("resnet18", pretrained=True).eval()  # from the cache: nothing downloaded
    cfg = torchsmith.data_config(model)
    console.print(f"resnet18 with {weights.name} from {file}; preprocessing: {cfg}")
    ramp = torch.linspace(0, 1, 224)
    image = torch.stack([ramp.expand(224, 224), ramp.expand(224, 224).T, 1 - ramp.expand(224, 224)])  # (3, H, W)
    x = ((image - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None])[None]
    with torch.no_grad():
        top = model(x).softmax(-1)[0].topk(3)
    guesses = ", ".join(f"{weights.categories[i]} {p:.0%}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
    console.print(f"its top 3 for a colour ramp (no real image here): {guesses}")


def main() -> None:
    names = torchsmith.list_models()
    console.print(f"[bold]{len(names)} registered models:[/] {', '.join(names)}")
    pretrained()

    # the tutorial's detection backbone, in one line (frozen BN, layer2-4 trainable)
    fpn = torchsmith.create_model("resnet152_fpn").eval()
    console.print(fpn_table(fpn))
    trainable = sum(p.numel() for p in fpn.parameters() if p.requires_grad)
    console.print(f"parameters: {sum(p.numel() for p in fpn.parameters()):,} ({trainable:,} trainable)")

    # the tutorial's U-Net, exactly; and sizes the tutorial's code crashes on
    unet = torchsmith.create_model("unet").eval()
    console.print(f"\n[bold]unet[/]: {sum(p.numel() for p in unet.parameters()):,} parameters")
    with torch.no_grad():
        for shape in [(2, 3, 256, 256), (1, 3, 100, 150)]:
            y = unet(torch.rand(*shape))
            console.print(f"  in {tuple(shape)} -> out {tuple(y.shape)}, values in [{y.min():.3f}, {y.max():.3f}] (sigmoid)")

    # recorded constructor arguments: a model can be rebuilt from config
    model = torchsmith.create_model("resnet50", num_classes=20)
    console.print(f"\nresnet50(num_classes=20) remembers how it was built: {torchsmith.model_config(model)}")


if __name__ == "__main__":
    main()
