"""Checkpoints on torchvision, timm and transformers models, against the peers' own loaders.

References: ``load_state_dict`` of the same weights (every model of the matrix), transformers'
``save_pretrained`` / ``from_pretrained`` (tied weights), and a model built normally (meta loads).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from models import BY_NAME, models
from torch import nn

import torchsmith as ts


# helpers


def nudge(model: nn.Module, seed: int) -> nn.Module:
    """Move every stored value off its current one, differently per seed (small: BatchNorm variances stay positive)."""
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(1e-3 * (seed + 1))
            elif k.endswith("num_batches_tracked"):
                t.add_(seed + 1)
    return model


def every_tensor(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict plus the buffers it leaves out (non-persistent ones)."""
    out = dict(model.state_dict())
    out.update({f"buffer:{k}": b for k, b in model.named_buffers()})
    return out


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ in dtype, shape or any bit (empty when identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not _bitwise(a[k], b[k])]


def _bitwise(x: torch.Tensor, y: torch.Tensor) -> bool:
    x, y = x.detach().contiguous(), y.detach().contiguous()
    return x.reshape(-1).view(torch.uint8).equal(y.reshape(-1).view(torch.uint8)) if x.numel() else True


def outputs(model: nn.Module, example) -> list[torch.Tensor]:
    """Every tensor of one forward call, flattened in a fixed order (tensors, tuples, dicts, ModelOutputs)."""
    args, kwargs = example
    with torch.no_grad():
        out = model(*args, **kwargs)
    flat: list[torch.Tensor] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            flat.append(o)
        elif isinstance(o, dict):  # dicts and transformers' ModelOutput
            for k in sorted(o.keys()) if not hasattr(o, "to_tuple") else o.keys():
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif dataclasses.is_dataclass(o):
            walk(dataclasses.asdict(o))

    walk(out)
    assert flat, f"no tensors in the output of {type(model).__name__}"
    return flat


def hf_forward(model: nn.Module, example) -> torch.Tensor:
    return outputs(model, example)[0]


# every model of the matrix: save_weights / load_weights == load_state_dict


@pytest.mark.parametrize("peer", models())
def test_round_trips_match_load_state_dict(peer, tmp_path):
    fresh = peer.build()
    src = nudge(copy.deepcopy(fresh), seed=1)
    sd = src.state_dict()
    ref = copy.deepcopy(fresh)
    ref.load_state_dict(sd)  # the peer way: the reference state and outputs
    expected, example = every_tensor(ref), peer.example()
    expected_out = outputs(ref, example)
    total = sum(t.numel() * t.element_size() for t in sd.values())

    ours = ts.save_weights(src, tmp_path / "w.safetensors")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")  # DataParallel keys
    sharded = ts.save_weights({f"_orig_mod.{k}": v for k, v in sd.items()}, tmp_path / "c.safetensors",
                              max_shard_size=max(total // 3, 1))  # torch.compile keys, several shards
    assert sharded.name.endswith(".index.json")
    dst = fresh
    probe = next(k for k, t in sd.items() if t.is_floating_point())
    for round_, (path, removed) in enumerate([(ours, {}), (tmp_path / "ddp.pt", {"module.": len(sd)}),
                                              (sharded, {"_orig_mod.": len(sd)})]):
        nudge(dst, seed=10 + round_)  # a model holding other values before each load
        assert not _bitwise(dst.state_dict()[probe], expected[probe])
        report = ts.load_weights(dst, path)
        assert report.ok and report.prefixes_removed == removed, str(report)
        assert same_tensors(every_tensor(dst), expected) == [], path.name
    got = outputs(dst, example)  # after the last load (the state was bitwise equal after each)
    assert len(got) == len(expected_out) and all(torch.equal(a, b) for a, b in zip(got, expected_out))


# tied weights in transformers checkpoints


TIED = {
    "hf.gpt2": [("lm_head.weight", "transformer.wte.weight")],
    "hf.t5": [("encoder.embed_tokens.weight", "shared.weight"), ("decoder.embed_tokens.weight", "shared.weight"),
              ("lm_head.weight", "shared.weight")],
}


@pytest.mark.parametrize("peer", models(tag="tied"))
@pytest.mark.parametrize("shards", [None, "20KB"], ids=["single", "sharded"])
def test_save_pretrained_with_tied_weights_loads_strictly(peer, shards, tmp_path):
    src = nudge(peer.build(), seed=2)
    src.save_pretrained(tmp_path, safe_serialization=True, **({"max_shard_size": shards} if shards else {}))
    assert (tmp_path / ("model.safetensors.index.json" if shards else "model.safetensors")).is_file()
    ref = type(src).from_pretrained(tmp_path).eval()  # the peer's own loader

    dst = peer.build()
    report = ts.load_weights(dst, tmp_path)  # strict
    assert report.ok and report.missing == [], str(report)
    assert sorted(report.tied_in_model) == sorted(TIED[peer.name])
    assert "tied" in str(report) and "absent from the file" in str(report)
    assert same_tensors(every_tensor(dst), every_tensor(ref)) == []
    for key, partner in report.tied_in_model:
        assert dst.get_parameter(key) is dst.get_parameter(partner)
    example = peer.example()
    assert torch.equal(hf_forward(dst, example), hf_forward(ref, example))


def test_an_untied_key_absent_from_the_file_is_still_missing(tmp_path):
    import transformers

    cfg = BY_NAME["hf.gpt2"].build().config
    cfg.tie_word_embeddings = False
    untied = transformers.GPT2LMHeadModel(cfg)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    sd = {k: v for k, v in untied.state_dict().items() if k != "lm_head.weight"}
    ts.save_weights(sd, tmp_path / "w.safetensors")
    with pytest.raises(ts.IncompatibleCheckpointError, match="1 model keys missing") as err:
        ts.load_weights(untied, tmp_path / "w.safetensors")
    assert err.value.report.missing == ["lm_head.weight"] and err.value.report.tied_in_model == []


# loading into a model built on meta


def _non_persistent(model: nn.Module) -> list[str]:
    in_state = set(model.state_dict())
    return sorted(k for k, _ in model.named_buffers() if k not in in_state)


@pytest.mark.parametrize("peer", models(family="transformers"))
def test_meta_model_gets_every_tensor_and_the_outputs_of_a_normal_build(peer, tmp_path):
    src = nudge(peer.build(), seed=3)
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    with torch.device("meta"):
        torch.manual_seed(0)
        dst = peer.make().eval()
    report = ts.load_weights(dst, path)
    assert report.ok, str(report)
    assert report.recomputed == _non_persistent(src)  # BERT position_ids / token_type_ids, GPT-2 masks
    assert not [k for k, t in every_tensor(dst).items() if t.is_meta]
    assert same_tensors(every_tensor(dst), every_tensor(src)) == []
    example = peer.example()
    assert torch.equal(hf_forward(dst, example), hf_forward(src, example))


def test_meta_model_that_cannot_recompute_its_buffers_fails_and_names_them(tmp_path):
    peer = BY_NAME["timm.swin_tiny_patch4_window7_224"]
    src = peer.build()
    path = ts.save_weights(src, tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = peer.make().eval()
    expected = _non_persistent(src)
    assert any(k.endswith("relative_position_index") for k in expected)
    with pytest.raises(ts.IncompatibleCheckpointError, match="left on the meta device") as err:
        ts.load_weights(dst, path)
    assert err.value.report.on_meta == expected
    assert all(t.is_meta for t in every_tensor(dst).values())  # nothing was loaded
    report = ts.load_weights(dst, path, strict=False)
    assert not report.ok and report.on_meta == expected and "on meta" in str(report)
    assert "INCOMPLETE" in str(report)


@pytest.mark.parametrize("peer", models(tag="tied"))
def test_convert_of_a_pytorch_model_bin_keeps_ties_once(peer, tmp_path):
    src = nudge(peer.build(), seed=4)
    torch.save(src.state_dict(), tmp_path / "pytorch_model.bin")
    out = ts.convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "out" / "model.safetensors")
    info = ts.inspect_checkpoint(out)
    assert sorted(info.aliases.items()) == sorted(TIED[peer.name])
    assert info.values == sum(p.numel() for p in src.parameters()) + sum(
        b.numel() for k, b in src.named_buffers() if k in src.state_dict()
    )
    dst = peer.build()
    assert ts.load_weights(dst, out).ok
    assert same_tensors(every_tensor(dst), every_tensor(src)) == []
