"""Train a zoo ResNet on real images, then transfer it to a new task: one process, DDP, FSDP2 or multi-node.

scikit-learn's digits (1,797 real 8x8 gray images of handwritten digits, shipped inside the package, so
nothing is downloaded) stand in for a dataset. No pretrained weights exist offline, so we make our own:

1. a zoo ``resnet18`` adapted to 1 input channel (``adapt_input_channels``) is trained on the 10 digits
   with shifted copies of the images and a one-cycle learning-rate schedule, and its test accuracy
   printed as ``accuracy 0.98x``;
2. transfer: the trained backbone is frozen (``freeze``), its head replaced (``replace_head``) for a
   2-class task (is the digit >= 5?), only the new head trained, accuracy printed the same way.

Both models are saved with ``save_model`` under ``--out`` (by rank 0); every rank writes a distributed
checkpoint (``save_distributed``) of model, optimizer and schedule; the loss/accuracy curves and the test
confusion matrix are saved as PNG files; and a fresh process loads both models and checks that it
reproduces the saved test predictions exactly.

    python examples/finetune_digits.py --out runs/digits
    torchrun --standalone --nproc_per_node 2 examples/finetune_digits.py --out runs/ddp
    torchrun --standalone --nproc_per_node 2 examples/finetune_digits.py --out runs/fsdp --strategy fsdp
    # two "hosts" (run each line in its own shell):
    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint localhost:29400 examples/finetune_digits.py --out runs/2n
    python examples/finetune_digits.py --check runs/digits      # what the fresh process does
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import torchsmith as ts

console = Console()
IMAGE_SIZE = 16  # the 8x8 digits upsampled: resnet18's stride-32 stem and stages keep a 1x1 map at the end
PREDICTIONS = "predictions.safetensors"
BASE_DIR, TRANSFER_DIR = "digits-resnet18", "digits-ge5-resnet18"


# data


def load_data(*, limit: int | None = None) -> dict[str, torch.Tensor]:
    """Train/test tensors: images (N, 1, 16, 16) normalised with the training set's mean and std, labels (N,)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    labels = torch.tensor(digits.target)  # (1797,)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, stratify=digits.target, random_state=0)
    mean, std = images[train_idx].mean(), images[train_idx].std()  # of the whole training split, even with a limit
    train_idx = train_idx[:limit] if limit else train_idx
    images = F.interpolate((images - mean) / std, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return {
        "train_x": images[train_idx], "train_y": labels[train_idx],  # (N, 1, 16, 16), (N,)
        "test_x": images[test_idx], "test_y": labels[test_idx],
    }  # fmt: skip


# models


def digits_model(weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A zoo resnet18 with 10 classes whose stem takes 1 channel; ``weights`` loaded when given."""
    model = ts.adapt_input_channels(ts.create_model("resnet18", num_classes=10), 1)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def transfer_model(model: nn.Module) -> nn.Module:
    """``model`` frozen (BatchNorm statistics fixed), then a new trainable 2-class head: in place, returned."""
    ts.freeze(model)
    return ts.replace_head(model, 2)


# process group


@dataclass
class Dist:
    """Where this process is: rank, world size, device; ``on`` when a process group runs (under torchrun)."""

    on: bool = False
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...): nccl on CUDA, gloo on CPU."""
    if "RANK" not in os.environ:
        return Dist()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(on=True, rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def wrap(model: nn.Module, strategy: str, d: Dist) -> nn.Module:
    """DDP (a full replica per rank, gradients all-reduced) or FSDP2 (``fully_shard``: parameters sharded)."""
    model = model.to(d.device)
    if not d.on:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):  # one all-gather per stage
        fully_shard(stage)
    return fully_shard(model)


def average_buffers(model: nn.Module, d: Dist) -> None:
    """Average BatchNorm running statistics over ranks (in place).

    DDP broadcasts rank 0's buffers before every forward; FSDP2 shards parameters only, so each rank's
    running statistics drift apart on its own batches, and a checkpoint would hold whichever rank's copy
    got written. Averaging them at the end of each epoch gives every rank (and every save) the same ones.
    """
    for buffer in model.buffers():
        if d.on and buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= d.world


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors on every rank, keys of the plain model (a collective under FSDP)."""
    return {k: v.cpu() for k, v in get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)).items()}


# training


@dataclass
class History:
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch, over all ranks
    accuracy: list[float] = field(default_factory=list)  # test accuracy after each epoch


def shift(x: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """Augmentation: each image (N, 1, H, W) moved by up to ``pixels`` each way, edges repeated (one 8x8 pixel)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")  # (N, 1, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n)).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])  # (N, 1, H, W)


def evaluate(model: nn.Module, x: torch.Tensor, *, batch: int = 512) -> torch.Tensor:
    """Logits (N, classes) in eval mode; every rank runs the whole (small) test set."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    model.train(was)
    return out.cpu()


def train(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    *,
    targets: torch.Tensor,
    test_targets: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    d: Dist,
    title: str,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, History]:
    """SGD with Nesterov momentum and a one-cycle schedule over the trainable parameters; global batch ``batch_size``."""
    dataset = TensorDataset(data["train_x"], targets)
    sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=max(1, batch_size // d.world), sampler=sampler)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    history = History()
    columns = (TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not d.main, transient=False) as bar:
        task = bar.add_task(title, total=epochs * len(loader), info="")
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            model.train()
            total = torch.zeros(2, device=d.device)  # (sum of losses, batches)
            for x, y in loader:
                x, y = shift(x).to(d.device), y.to(d.device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += torch.stack([loss.detach(), torch.ones((), device=d.device)])
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}")
            if d.on:
                dist.all_reduce(total)
                average_buffers(model, d)  # a no-op in effect under DDP, whose replicas hold rank 0's
            history.loss.append((total[0] / total[1]).item())
            accuracy = (evaluate(model, data["test_x"].to(d.device)).argmax(1) == test_targets).float().mean().item()
            history.accuracy.append(accuracy)
            bar.update(task, info=f"epoch {epoch + 1}/{epochs}  loss {history.loss[-1]:.3f}  test accuracy {accuracy:.3f}")
    return optimizer, schedule, history


# figures


def save_figures(out: Path, histories: dict[str, History], confusion: torch.Tensor) -> list[Path]:
    """Loss and accuracy per epoch for both tasks (curves.png) and the 10-class test confusion matrix (confusion.png)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        epochs = range(1, len(h.loss) + 1)
        ax_loss.plot(epochs, h.loss, marker="o", label=name)
        ax_acc.plot(epochs, h.accuracy, marker="o", label=name)
    ax_loss.set(title="training loss", xlabel="epoch", yscale="log")
    ax_acc.set(title="test accuracy", xlabel="epoch", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay(confusion.numpy(), display_labels=list(range(10))).plot(ax=ax, colorbar=False)
    ax.set_title("digits: test confusion matrix")
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close("all")
    return [out / "curves.png", out / "confusion.png"]


# the fresh process


def check(out: Path) -> bool:
    """Load both saved models and compare their test logits with the saved ones: exactly equal?"""
    data = load_data()
    saved = ts.read_weights(out / PREDICTIONS)
    ok = True
    for name in (BASE_DIR, TRANSFER_DIR):
        model = ts.load_model(out / name).eval()
        with torch.no_grad():
            logits = model(data["test_x"])
        same = torch.equal(logits, saved[name])
        ok &= same
        console.print(f"fresh process: {name}: {len(logits)} test predictions " + ("reproduced exactly" if same else f"DIFFER (max {(logits - saved[name]).abs().max():.3g})"))
    return ok


# main


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)  # small images: one thread per process wastes least CPU time
    d = setup()
    out = Path(args.out)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    data = load_data(limit=args.limit)
    test_y = data["test_y"]
    start = time.process_time()
    if d.main:
        mode = f"{args.strategy.upper()} on {d.world} processes ({dist.get_backend()})" if d.on else "one process"
        console.print(f"digits: {len(data['train_y'])} train / {len(test_y)} test images, resnet18 on {IMAGE_SIZE}x{IMAGE_SIZE}, {mode}")

    # 1. a zoo resnet18 taking 1 channel, trained on the 10 digits
    model = wrap(digits_model(), args.strategy, d)
    optimizer, schedule, h1 = train(
        model, data, targets=data["train_y"], test_targets=test_y, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, d=d, title="digits 0-9",
    )  # fmt: skip
    ts.save_distributed(model, optimizer, out / "dcp" / BASE_DIR, state={"schedule": schedule, "history": vars(h1)})
    weights = full_state_dict(model)
    plain = digits_model(weights)
    logits = evaluate(plain, data["test_x"])
    accuracy = (logits.argmax(1) == test_y).float().mean().item()
    if d.main:
        console.print(f"[bold]digits 0-9[/]: accuracy {accuracy:.3f}")

    # 2. transfer: the trained backbone frozen, a new 2-class head (digit >= 5), only the head trained
    transfer = wrap(transfer_model(plain), args.strategy, d)
    optimizer2, schedule2, h2 = train(
        transfer, data, targets=(data["train_y"] >= 5).long(), test_targets=(test_y >= 5).long(),
        epochs=args.transfer_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, d=d, title="digit >= 5",
    )  # fmt: skip
    ts.save_distributed(transfer, optimizer2, out / "dcp" / TRANSFER_DIR, state={"schedule": schedule2, "history": vars(h2)})
    head = transfer_model(digits_model())  # the same surgery on a plain model, then the trained weights
    head.load_state_dict(full_state_dict(transfer))
    logits2 = evaluate(head, data["test_x"])
    accuracy2 = (logits2.argmax(1) == (test_y >= 5)).float().mean().item()
    cpu = torch.tensor([time.process_time() - start])
    if d.on:
        dist.all_reduce(cpu)  # CPU seconds of all ranks together
    if d.main:
        console.print(f"[bold]digit >= 5 (frozen backbone, new head)[/]: accuracy {accuracy2:.3f}")
        ts.save_model(digits_model(weights), out / BASE_DIR)
        ts.save_model(head, out / TRANSFER_DIR)
        ts.save_weights({BASE_DIR: logits, TRANSFER_DIR: logits2}, out / PREDICTIONS)
        confusion = torch.zeros(10, 10, dtype=torch.long)
        confusion.index_put_((test_y, logits.argmax(1)), torch.ones_like(test_y), accumulate=True)  # (true, predicted)
        figures = save_figures(out, {"digits 0-9": h1, "digit >= 5": h2}, confusion)
        summary = {"accuracy": accuracy, "transfer_accuracy": accuracy2, "cpu_seconds": cpu.item(), "world_size": d.world,
                   "strategy": args.strategy if d.on else "single", "history": {"digits": vars(h1), "transfer": vars(h2)}}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"saved under {out}/: {BASE_DIR}/, {TRANSFER_DIR}/ (save_model), dcp/ (save_distributed), "
                      f"{', '.join(p.name for p in figures)}, {PREDICTIONS}; CPU time {cpu.item():.0f} s")  # fmt: skip
    if d.on:
        dist.barrier()
        dist.destroy_process_group()
    if d.main and not args.no_check:  # a fresh interpreter: nothing shared with this one
        return subprocess.run([sys.executable, __file__, "--check", str(out)]).returncode
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/digits", help="where models, checkpoints and figures go")
    p.add_argument("--epochs", type=int, default=12, help="epochs on the 10 digits")
    p.add_argument("--transfer-epochs", type=int, default=3, help="epochs for the new head")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="under torchrun: DDP or FSDP2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over ranks)")
    p.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--no-check", action="store_true", help="skip the fresh-process check")
    p.add_argument("--check", metavar="OUT", help="only load the models saved under OUT and compare predictions")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.check:
        return 0 if check(Path(args.check)) else 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
