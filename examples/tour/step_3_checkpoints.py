"""Step 3 - checkpoints: wrapped models, whole models without pickle, and a refused malicious file.

The tutorial strips ``module.`` by string replacement and pickles whole
models. Here: a DataParallel checkpoint and a torch.compile checkpoint load
into a plain model with a report of what happened; a whole model is saved as
config.json + model.safetensors and rebuilt on the meta device; a pickle
that would run a shell command is refused without running it; a tied
output layer left out of the file is reported as tied, not missing; and a
tiny file that asks for far more memory than it holds is refused before
anything is allocated, naming the bound that refused it (``torchsmith.Limits``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import torchsmith as ts

console = Console()


class Payload:
    """What an attacker puts in a checkpoint: unpickling it runs a shell command."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = ts.create_model("resnet18", num_classes=10)

        # 1. multi-GPU training saves 'module.'-prefixed keys; torch.compile saves '_orig_mod.'
        ts.save_weights(nn.DataParallel(model), tmp / "dataparallel.pt")
        ts.save_weights(torch.compile(model).state_dict(), tmp / "compiled.safetensors")
        for name in ("dataparallel.pt", "compiled.safetensors"):
            plain = ts.create_model("resnet18", num_classes=10)
            report = ts.load_weights(plain, tmp / name)
            console.print(str(report).replace(str(tmp) + "/", ""), highlight=False)
            assert torch.equal(plain.fc.weight, model.fc.weight)

        # 2. a whole model, no pickle: config.json says how to build it, the weights are safetensors
        ts.save_model(model, tmp / "resnet18-run")
        console.print("\n[bold]save_model[/] wrote " + ", ".join(sorted(p.name for p in (tmp / "resnet18-run").iterdir())))
        console.print((tmp / "resnet18-run" / "config.json").read_text().strip(), highlight=False)
        again = ts.load_model(tmp / "resnet18-run")
        x = torch.randn(1, 3, 64, 64)  # (B, C, H, W)
        same = torch.equal(again.eval()(x), model.eval()(x))
        console.print(f"load_model: rebuilt on the meta device, weights assigned; same outputs: {same}")

        # 3. a malicious pickle is refused, and the command inside it never runs
        sentinel = tmp / "you-were-hacked"
        torch.save({"fc.weight": torch.zeros(10, 512), "x": Payload(sentinel)}, tmp / "malicious.pt")
        try:
            ts.load_weights(model, tmp / "malicious.pt")
        except ts.UnsafeCheckpointError as e:
            console.print(f"\n[bold red]refused:[/] {str(e).replace(str(tmp) + '/', '')}", highlight=False)
        console.print(f"payload ran: {sentinel.exists()}")

        # 4. a tied output layer the file leaves out (transformers' save_pretrained does) is tied, not missing
        lm = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50, bias=False))
        lm[1].weight = lm[0].weight  # (50, 8), one tensor under two names
        ts.save_weights({"0.weight": lm[0].weight}, tmp / "lm.safetensors")
        fresh = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50, bias=False))
        fresh[1].weight = fresh[0].weight
        report = ts.load_weights(fresh, tmp / "lm.safetensors")  # strict, and ok
        console.print("\n" + str(report).replace(str(tmp) + "/", ""), highlight=False)

        # 5. 16 overlapping views of one 4 MiB storage: a 4 MiB file that loads as 64 MiB of tensors
        base = torch.arange(2**20, dtype=torch.float32)
        torch.save({f"v{i}": base[i * 1000 :] for i in range(16)}, tmp / "views.pt")
        try:
            ts.read_weights(tmp / "views.pt")
        except ts.CorruptCheckpointError as e:
            console.print(f"\n[bold red]refused:[/] {str(e).replace(str(tmp) + '/', '')}", highlight=False)
        views = ts.read_weights(tmp / "views.pt", limits=ts.Limits(max_expansion=16))  # a file you trust
        console.print(f"with limits=Limits(max_expansion=16): {len(views)} tensors loaded")


if __name__ == "__main__":
    main()
