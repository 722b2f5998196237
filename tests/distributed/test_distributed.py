"""save_distributed / load_distributed under real 2-process gloo groups: DDP and FSDP2, resharding, resume.

Each strategy trains a tiny classifier once on 2 ranks (4 epochs, DCP saved after epochs 2 and 4, every
step's loss recorded); references come from torch's own full_state_dict gathering, not from DCP.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import EPOCHS, dataset, tiny_model, tiny_optimizer, train_worker
from torch import nn

import torchsmith as ts
from torchsmith.checkpoint.dcp import DCPReader, read_dcp
from helpers import DOCS, cloned_state as snapshot

WORLD = 2


def spawn(tmp, strategy: str, out, *, start: int = 0, save_after=(), resume=None) -> None:
    store = tmp / f"store-{len(list(tmp.iterdir()))}"
    mp.spawn(train_worker, args=(WORLD, str(store), strategy, str(out), start, list(save_after), resume), nprocs=WORLD, join=True)


def losses(out) -> list[list[float]]:
    return [json.loads((out / f"losses-rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def uninterrupted(request, tmp_path_factory):
    """One 2-rank run of all epochs, saving DCP checkpoints after epochs 2 and 4 on the way."""
    tmp = tmp_path_factory.mktemp(request.param)
    out = tmp / "run"
    out.mkdir()
    spawn(tmp, request.param, out, save_after=(2, EPOCHS))
    return request.param, tmp, out


def test_resume_continues_the_same_loss_curve(uninterrupted):
    strategy, tmp, full = uninterrupted
    resumed = tmp / "resumed"
    resumed.mkdir()
    spawn(tmp, strategy, resumed, start=2, resume=str(full / "epoch2"))
    whole, tail = losses(full), losses(resumed)
    steps_per_epoch = len(whole[0]) // EPOCHS
    assert len(tail[0]) == 2 * steps_per_epoch > 0
    for rank in range(WORLD):  # bit for bit: same weights, momentum, schedule and data order
        assert tail[rank] == whole[rank][2 * steps_per_epoch :]
    a = ts.read_weights(full / "final-reference.safetensors")
    b = ts.read_weights(resumed / "final-reference.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_rank_checkpoint_loads_into_one_plain_process(uninterrupted):
    strategy, _, full = uninterrupted
    reference = ts.read_weights(full / "final-reference.safetensors")
    model = tiny_model()
    opt, schedule = tiny_optimizer(model, 100)
    progress = {"epoch": 0}
    ts.load_distributed(model, opt, full / f"epoch{EPOCHS}", state={"schedule": schedule, "progress": progress})
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[f"model.{key}"]), key
    names = dict(enumerate(n for n, _ in model.named_parameters()))
    for index, state in opt.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], reference[f"momentum.{names[index]}"])
    assert progress == {"epoch": EPOCHS}
    assert schedule.last_epoch == len(losses(full)[0])  # one rank's steps = the optimizer's steps
    # and the consolidated file (`torchsmith convert`) holds the same weights
    consolidated = read_dcp(full / f"epoch{EPOCHS}")
    assert consolidated.keys() == model.state_dict().keys()
    assert all(torch.equal(consolidated[k], reference[f"model.{k}"]) for k in consolidated)
    if strategy == "fsdp":  # the 2-D weights really were written as one shard per rank
        meta = DCPReader(full / f"epoch{EPOCHS}").read_metadata().state_dict_metadata
        assert len(meta["model.0.weight"].chunks) == WORLD
        assert sorted(p.name for p in (full / f"epoch{EPOCHS}").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


# one process: the same functions without a process group


def trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = tiny_model()
    opt, schedule = tiny_optimizer(model, 10)
    x, y = dataset().tensors
    torch.manual_seed(seed)
    for _ in range(3):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        schedule.step()
        opt.zero_grad()
    return model, opt, schedule


def test_round_trip_in_one_process(tmp_path):
    model, opt, schedule = trained()
    ts.save_distributed(model, opt, tmp_path / "ck", state={"schedule": schedule, "progress": {"epoch": 7, "best": 0.5}})
    again = tiny_model()
    opt2, schedule2 = tiny_optimizer(again, 10)
    progress = {"epoch": 0, "best": 0.0}
    ts.load_distributed(again, opt2, tmp_path / "ck", state={"schedule": schedule2, "progress": progress})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.equal(opt.state_dict()["state"][0]["momentum_buffer"], opt2.state_dict()["state"][0]["momentum_buffer"])
    assert schedule2.state_dict() == schedule.state_dict() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert progress == {"epoch": 7, "best": 0.5}


def test_a_model_that_does_not_fit_is_refused_whole_and_left_alone(tmp_path):
    model, opt, _ = trained()
    ts.save_distributed(model, opt, tmp_path / "ck")
    wider = nn.Sequential(nn.Linear(6, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 3), nn.Linear(3, 3))
    before = snapshot(wider)
    with pytest.raises(ts.IncompatibleCheckpointError) as info:
        ts.load_distributed(wider, None, tmp_path / "ck")
    message = str(info.value)
    assert "missing from the checkpoint (model.4.weight, model.4.bias)" in message
    assert "model.0.weight: checkpoint (32, 6), here (40, 6)" in message and "Nothing was loaded" in message
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())
    with pytest.raises(ts.IncompatibleCheckpointError, match="missing from the checkpoint"):
        ts.load_distributed(tiny_model(), None, tmp_path / "ck", state={"progress": {"epoch": 0}})


def test_not_a_checkpoint_and_a_damaged_one(tmp_path):
    with pytest.raises(ts.CheckpointError, match="not a distributed checkpoint: it does not exist"):
        ts.load_distributed(tiny_model(), None, tmp_path / "nowhere")
    other = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    with pytest.raises(ts.CheckpointError, match="optimizer holds tensors that are not parameters of this Sequential"):
        ts.save_distributed(tiny_model(), other, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    model, _, _ = trained()
    ts.save_distributed(model, None, tmp_path / "ck")
    data = tmp_path / "ck" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    fresh = tiny_model()
    before = snapshot(fresh)
    with pytest.raises(ts.CorruptCheckpointError, match=r"__0_0\.distcp'?, which has"):  # cut short: refused before reading
        ts.load_distributed(fresh, None, tmp_path / "ck")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # read into copies first


class Payload:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickled_code_in_an_entry_is_refused_unless_trusted(tmp_path):
    sentinel = tmp_path / "ran"
    ts.save_distributed(tiny_model(), None, tmp_path / "ck", state={"extra": {"obj": Payload(sentinel)}})
    with pytest.raises(ts.UnsafeCheckpointError, match=r"'extra.obj' is a pickle .*posix.system"):
        ts.load_distributed(tiny_model(), None, tmp_path / "ck", state={"extra": {"obj": None}})
    assert not sentinel.exists()
    ts.load_distributed(tiny_model(), None, tmp_path / "ck", state={"extra": {"obj": None}}, trusted=True)
    assert sentinel.exists()  # trusted=True is torch's own behaviour: it unpickles (and here runs) the payload


def test_metadata_naming_other_globals_is_refused(tmp_path):
    ts.save_distributed(tiny_model(), None, tmp_path / "ck")
    sentinel = tmp_path / "ran"
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(Payload(sentinel)))
    for call in (lambda: ts.load_distributed(tiny_model(), None, tmp_path / "ck"), lambda: read_dcp(tmp_path / "ck")):
        with pytest.raises(ts.UnsafeCheckpointError, match="names posix.system, which is not part of DCP metadata"):
            call()
    from typer.testing import CliRunner

    from torchsmith.cli import app

    result = CliRunner().invoke(app, ["convert", str(tmp_path / "ck"), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 1 and "not part of DCP metadata" in result.output and "--trusted" in result.output
    assert not sentinel.exists() and not (tmp_path / "out.safetensors").exists()
    (tmp_path / "ck" / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ts.CorruptCheckpointError, match="not readable DCP metadata"):
        read_dcp(tmp_path / "ck")


def test_the_docs_page_examples_run():
    import doctest
    from pathlib import Path

    page = DOCS / "distributed.md"
    result = doctest.testfile(str(page), module_relative=False)
    assert result.failed == 0 and result.attempted >= 10
