"""save_distributed / load_distributed / convert on peer models (one process; the 2-process runs are in tests/)."""

import pytest
import torch
from models import BY_NAME

import torchsmith as ts

PEERS = ["tv.mobilenet_v3_large", "timm.efficientnet_b0", "hf.gpt2", "hf.t5"]


def stepped(peer):
    """A peer model and an AdamW after one step on unit gradients: weights and optimizer state differ from a fresh build."""
    model = peer.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return model, opt


@pytest.mark.parametrize("name", PEERS)
def test_round_trip_and_convert(name, tmp_path):
    peer = BY_NAME[name]
    model, opt = stepped(peer)
    ts.save_distributed(model, opt, tmp_path / "ckpt", state={"progress": {"step": 1}})
    fresh = peer.build()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    progress = {"step": 0}
    ts.load_distributed(fresh, fresh_opt, tmp_path / "ckpt", state={"progress": progress})
    expected = model.state_dict()
    assert progress == {"step": 1}
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    names = {id(p): n for n, p in model.named_parameters()}
    fresh_by_name = dict(fresh.named_parameters())
    for p, state in opt.state.items():
        loaded = fresh_opt.state[fresh_by_name[names[id(p)]]]
        assert torch.equal(loaded["exp_avg"], state["exp_avg"]) and torch.equal(loaded["exp_avg_sq"], state["exp_avg_sq"])
    args, kwargs = peer.example()
    with torch.no_grad():
        a, b = model(*args, **kwargs), fresh(*args, **kwargs)
    a, b = (a.logits, b.logits) if hasattr(a, "logits") else (a, b)
    assert torch.equal(a, b)
    # one consolidated file that load_weights takes (tied weights, e.g. GPT-2's embedding and head, included)
    ts.convert_checkpoint(tmp_path / "ckpt", tmp_path / "model.safetensors")
    other = peer.build()
    report = ts.load_weights(other, tmp_path / "model.safetensors")
    assert not report.missing and not report.unexpected
    assert all(torch.equal(v, expected[k]) for k, v in other.state_dict().items())
