"""Workers for tests/test_distributed.py: real process groups (gloo, a FileStore rendezvous, no fixed ports).

A tiny classifier (Linear-BatchNorm-ReLU-Linear) trained with SGD + Nesterov + a one-cycle schedule on
fixed random data, sharded by a DistributedSampler; DDP or FSDP2 (``fully_shard``). Each run records every
step's loss on every rank, and can save a DCP checkpoint after given epochs and resume from one.

A worker ends its process with ``os._exit`` (see :func:`train_worker`): after FSDP2 has run, torch's DTensor
caches keep the device mesh, and through it the gloo process group, alive past ``destroy_process_group``,
so gloo's threads (two ``pt_gloo_runloop``, one ``gloo_tcp_loop``) still run when the process exits, and
tearing them down in the interpreter's finalization sometimes aborted a worker under load ("terminate
called without an active exception", SIGABRT). DDP frees its group in ``destroy_process_group``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import torchsmith as ts

EPOCHS, BATCH = 4, 16


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def tiny_optimizer(model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)  # (N, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # (N,) three classes
    return TensorDataset(x, y)


def wrap(model: nn.Module, strategy: str) -> nn.Module:
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0])
    fully_shard(model[3])
    return fully_shard(model)


def full_references(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Whole weights and momentum buffers gathered by torch's full_state_dict path (not DCP)."""
    options = StateDictOptions(full_state_dict=True)
    out = {f"model.{k}": v.detach().cpu().clone() for k, v in get_model_state_dict(model, options=options).items()}
    for fqn, state in get_optimizer_state_dict(model, opt, options=options)["state"].items():
        out[f"momentum.{fqn}"] = state["momentum_buffer"].detach().cpu().clone()
    return out


def train_worker(rank: int, world: int, store: str, strategy: str, out: str, start: int, save_after: list[int], resume: str | None) -> None:
    """Train epochs ``start..EPOCHS-1``; save a DCP under ``out/epoch<k>`` after each epoch k in ``save_after``.

    Never returns: the process ends with ``os._exit`` once everything it wrote is closed, exit code 0, or 1
    after printing the traceback to stderr (``mp.spawn`` reports "exited with exit code 1"). A normal exit
    would finalize the interpreter with gloo's threads still running (module docstring).
    """
    code = 1
    try:
        _train(rank, world, store, strategy, out, start, save_after, resume)
        code = 0
    except BaseException:  # noqa: BLE001 - reported here: the process ends below without unwinding further
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _train(rank: int, world: int, store: str, strategy: str, out: str, start: int, save_after: list[int], resume: str | None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        data = dataset()
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(data, batch_size=BATCH // world, sampler=sampler)
        model = wrap(tiny_model(), strategy)
        opt, schedule = tiny_optimizer(model, EPOCHS * len(loader))
        progress = {"epoch": 0}
        if resume:
            ts.load_distributed(model, opt, resume, state={"schedule": schedule, "progress": progress})
            assert progress["epoch"] == start, progress
        losses = []
        for epoch in range(start, EPOCHS):
            sampler.set_epoch(epoch)
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                losses.append(loss.item())
            for buffer in model.buffers():  # BatchNorm statistics: the same on every rank (FSDP2 does not sync them)
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer /= world
            if epoch + 1 in save_after:
                progress["epoch"] = epoch + 1
                ts.save_distributed(model, opt, Path(out) / f"epoch{epoch + 1}", state={"schedule": schedule, "progress": progress})
        references = full_references(model, opt)
        if rank == 0:
            ts.save_weights(references, Path(out) / "final-reference.safetensors")
        (Path(out) / f"losses-rank{rank}.json").write_text(json.dumps(losses))
        dist.barrier()  # no rank tears its gloo connections down while the other still uses them (SIGABRT seen)
    finally:
        dist.destroy_process_group()
