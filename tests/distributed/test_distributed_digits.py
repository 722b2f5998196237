"""examples/finetune_digits.py under torchrun: FSDP2 on 2 processes, and DDP over two single-process "nodes".

Short runs (64 training images, one epoch per task): what is checked is the plumbing, against references
computed here: predictions from the models in a fresh process, the labels from scikit-learn, the
consolidated DCP against rank 0's whole-model save. `make demo-distributed` runs the full versions.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app
from helpers import ROOT

SCRIPT = ROOT / "examples" / "finetune_digits.py"
QUICK = ["--epochs", "1", "--transfer-epochs", "1", "--limit", "64", "--batch-size", "32"]
sys.path.insert(0, str(SCRIPT.parent))
import finetune_digits  # noqa: E402


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def accuracies(output: str) -> list[float]:
    return [float(a) for a in re.findall(r"accuracy (\d\.\d{3})\n", output)]


def labels() -> torch.Tensor:
    return finetune_digits.load_data()["test_y"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    cmd = torchrun("--standalone", "--nproc_per_node", "2", str(SCRIPT), "--out", str(out), "--strategy", "fsdp", *QUICK)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_fsdp_run_prints_saves_and_reproduces(fsdp_run):
    out, stdout = fsdp_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "fsdp"
    y = labels()
    logits = ts.read_weights(out / "predictions.safetensors")
    expected = [
        (logits["digits-resnet18"].argmax(1) == y).float().mean().item(),
        (logits["digits-ge5-resnet18"].argmax(1) == (y >= 5)).float().mean().item(),
    ]
    assert accuracies(stdout) == [round(a, 3) for a in expected]  # both tasks, in the `accuracy 0.xyz` form
    assert stdout.count("predictions reproduced exactly") == 2  # the script's own fresh process
    for name in ("curves.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the models load here too (a third process) and give the saved logits bit for bit
    x = finetune_digits.load_data()["test_x"]
    for name in ("digits-resnet18", "digits-ge5-resnet18"):
        with torch.no_grad():
            assert torch.equal(ts.load_model(out / name).eval()(x), logits[name])
    transfer = ts.load_model(out / "digits-ge5-resnet18")  # saved after adapt_input_channels, freeze, replace_head
    assert not transfer.conv1.weight.requires_grad and transfer.fc.weight.requires_grad and transfer.conv1.in_channels == 1
    # every rank wrote its shard: resnet18's 2-D+ weights are split in two
    assert sorted(p.name for p in (out / "dcp" / "digits-resnet18").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_convert_consolidates_the_two_rank_checkpoint(fsdp_run, tmp_path):
    out, _ = fsdp_run
    runner = CliRunner()
    target = tmp_path / "digits.safetensors"
    result = runner.invoke(app, ["convert", str(out / "dcp" / "digits-resnet18"), str(target), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["inspect", str(target), "--json"]).stdout)
    whole = ts.read_weights(out / "digits-resnet18" / "model.safetensors")  # rank 0's gathered save_model
    assert info["tensors"] == len(whole) and info["checksums"] == "verified"
    model = finetune_digits.digits_model()
    report = ts.load_weights(model, target)
    assert not report.missing and not report.unexpected
    assert all(torch.equal(v, whole[k]) for k, v in model.state_dict().items())


def test_two_rank_transfer_checkpoint_resumes_in_one_process(fsdp_run):
    out, _ = fsdp_run
    model = finetune_digits.transfer_model(finetune_digits.digits_model())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=2)
    ts.load_distributed(model, optimizer, out / "dcp" / "digits-ge5-resnet18", state={"schedule": schedule})
    whole = ts.read_weights(out / "digits-ge5-resnet18" / "model.safetensors")
    assert all(torch.equal(v, whole[k]) for k, v in model.state_dict().items())
    assert [p.shape for p in optimizer.param_groups[0]["params"]] == [(2, 512), (2,)]  # only the new head trains
    assert all(optimizer.state[p]["momentum_buffer"].abs().sum() > 0 for p in optimizer.param_groups[0]["params"])
    assert schedule.last_epoch == 2  # one epoch of 64 images, global batch 32


def test_two_nodes_train_together(tmp_path):
    port = free_port()
    out = tmp_path / "two-nodes"
    cmd = torchrun(
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
        "--rdzv-id", f"digits-{port}", str(SCRIPT), "--out", str(out), "--no-check", *QUICK,
    )  # fmt: skip
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT) for _ in range(2)]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"
    printed = [o for o in outputs if "accuracy" in o]
    assert len(printed) == 1  # the global rank 0, on whichever node it landed
    assert "DDP on 2 processes (gloo)" in " ".join(printed[0].split())
    assert len(accuracies(printed[0])) == 2
    assert sorted(p.name for p in (out / "dcp" / "digits-resnet18").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    with torch.no_grad():
        logits = ts.load_model(out / "digits-resnet18").eval()(finetune_digits.load_data()["test_x"])
    assert torch.equal(logits, ts.read_weights(out / "predictions.safetensors")["digits-resnet18"])
