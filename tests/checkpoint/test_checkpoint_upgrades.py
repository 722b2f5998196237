"""load_weights honours what modules declare for older checkpoints, exactly as load_state_dict does; rename=.

The reference is torch's own ``load_state_dict`` on the same tensors: every tensor of the two models is compared
bit for bit, and the report names each change a module made.
"""

from __future__ import annotations

import re

import pytest
import torch
from ckpt_models import TinyNet, filled
from helpers import snapshot
from safetensors.torch import save_file
from torch import nn

import torchsmith as ts
from torchsmith.layers import FeaturePyramidNetwork, LastLevelMaxPool


def fpn() -> nn.Module:
    return FeaturePyramidNetwork([8, 16, 32], 4, extra_blocks=LastLevelMaxPool())


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The FPN keys before torchvision 0.13 (and before ours took its layout): a conv per block, no ``.0``."""
    return {re.sub(r"(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"\1.\2.", k): v for k, v in state.items()}


def as_loaded_by_torch(make, state: dict[str, torch.Tensor], *, strict: bool = True) -> nn.Module:
    torch.manual_seed(5)
    model = make()
    model.load_state_dict(state, strict=strict)
    return model


def fresh(make) -> nn.Module:
    torch.manual_seed(5)  # the same starting values as the reference, so kept values compare too
    return make()


def changes(report) -> list[tuple]:
    return [(u.module, u.change, u.key, u.new_key) for u in report.upgraded]


# module upgrades


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_old_layout_fpn_loads_as_load_state_dict_loads_it(tmp_path, suffix):
    state = old_layout(filled(fpn(), seed=3).state_dict())
    path = tmp_path / f"old{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)  # a plain dict: no metadata
    model = fresh(fpn)
    report = ts.load_weights(model, path)
    assert snapshot(model) == snapshot(as_loaded_by_torch(fpn, state))
    assert report.ok and len(report.loaded) == 12
    assert ("", "renamed", "inner_blocks.0.weight", "inner_blocks.0.0.weight") in changes(report)
    assert len(report.upgraded) == 12
    assert "inner_blocks.2.bias -> inner_blocks.2.0.bias  (by FeaturePyramidNetwork)" in str(report)


def test_upgrades_find_keys_behind_wrappers_and_under_submodules(tmp_path):
    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.fpn = fpn()

    state = {"module." + k: v for k, v in old_layout(filled(Detector(), seed=1).state_dict()).items()}  # DataParallel's
    torch.save(state, tmp_path / "dp.pt")
    model = fresh(Detector)
    report = ts.load_weights(model, tmp_path / "dp.pt")
    reference = as_loaded_by_torch(Detector, {k.removeprefix("module."): v for k, v in state.items()})
    assert snapshot(model) == snapshot(reference) and report.ok
    assert ("fpn", "renamed", "module.fpn.layer_blocks.1.weight", "fpn.layer_blocks.1.0.weight") in changes(report)


def test_the_version_in_a_torch_files_metadata_is_honoured(tmp_path):
    """A file saved by torch.save(model.state_dict()) carries each module's version: a version-2 FPN file with the
    old keys is not upgraded (torch refuses it too); version 1 is."""
    state = filled(fpn(), seed=2).state_dict()
    old = type(state)(old_layout(state))
    for version, fits in ((1, True), (2, False)):
        old._metadata = type(state._metadata)((k, {"version": version}) for k in state._metadata)
        torch.save(old, tmp_path / f"v{version}.pt")
        model, before = fresh(fpn), None
        before = snapshot(model)
        if fits:
            ts.load_weights(model, tmp_path / f"v{version}.pt")
            assert snapshot(model) == snapshot(as_loaded_by_torch(fpn, old))
        else:
            with pytest.raises(ts.IncompatibleCheckpointError) as info:
                ts.load_weights(model, tmp_path / f"v{version}.pt")
            with pytest.raises(RuntimeError, match="Missing key"):
                as_loaded_by_torch(fpn, old)
            assert snapshot(model) == before and not info.value.report.upgraded
            assert "inner_blocks.0.weight" in info.value.report.unexpected


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_batchnorm_without_num_batches_tracked_keeps_the_model_count(tmp_path, suffix):
    source = filled(TinyNet(), seed=4)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"bn{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    def counted():
        model = TinyNet()
        model.bn.num_batches_tracked.fill_(11)
        return model

    model = fresh(counted)
    report = ts.load_weights(model, path)
    assert snapshot(model) == snapshot(as_loaded_by_torch(counted, state))
    assert int(model.bn.num_batches_tracked) == 11 and report.ok and not report.missing
    assert changes(report) == [("bn", "added", None, "bn.num_batches_tracked")]
    assert "bn.num_batches_tracked added  (by BatchNorm2d at 'bn')" in str(report)


def test_batchnorm_checkpoints_load_into_frozen_batchnorm(tmp_path):
    """FrozenBatchNorm2d drops num_batches_tracked in its _load_from_state_dict: a BatchNorm file fits."""
    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ts.save_weights(filled(bn, seed=1), tmp_path / "bn.safetensors")
    frozen = nn.Sequential(nn.Conv2d(3, 4, 1), ts.FrozenBatchNorm2d(4))
    report = ts.load_weights(frozen, tmp_path / "bn.safetensors")
    reference = nn.Sequential(nn.Conv2d(3, 4, 1), ts.FrozenBatchNorm2d(4))
    reference.load_state_dict(bn.state_dict())
    assert snapshot(frozen) == snapshot(reference) and report.ok
    assert changes(report) == [("1", "removed", "1.num_batches_tracked", None)]


class Transposed(nn.Module):
    """Stored its weight transposed, as ``w_t``, in version 1: the upgrade computes a new tensor."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 5))
        self.scale = nn.Parameter(torch.ones(3))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        if (prefix + "w_t") in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "w_t").t().contiguous()
        if (prefix + "scale") in state_dict and local_metadata.get("version") is None:
            state_dict[prefix + "scale"].mul_(2)  # in place, on the tensor it was handed
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_a_module_that_computes_values_runs_on_the_real_tensors_once(tmp_path, monkeypatch):
    make = lambda: nn.Sequential(nn.Linear(2, 2), Transposed())  # noqa: E731
    state = {"0.weight": torch.randn(2, 2), "0.bias": torch.randn(2), "1.w_t": torch.randn(5, 3), "1.scale": torch.randn(3)}
    save_file(state, tmp_path / "old.safetensors")
    model = fresh(make)
    report = ts.load_weights(model, tmp_path / "old.safetensors")
    assert snapshot(model) == snapshot(as_loaded_by_torch(make, {k: v.clone() for k, v in state.items()}))
    assert ("1", "renamed", "1.w_t", "1.weight") not in changes(report)
    assert {c[1] for c in changes(report)} == {"computed", "removed"} and report.ok


def test_a_refused_load_leaves_the_model_as_it_was_whatever_the_hooks_did(tmp_path):
    make = lambda: nn.Sequential(nn.Linear(2, 2), Transposed(), nn.BatchNorm1d(3))  # noqa: E731
    state = {"1.w_t": torch.randn(5, 3), "1.scale": torch.randn(3), "2.weight": torch.randn(3)}  # 0.* missing
    save_file(state, tmp_path / "partial.safetensors")
    model = make()
    model[2].num_batches_tracked.fill_(3)
    before = snapshot(model)
    with pytest.raises(ts.IncompatibleCheckpointError):
        ts.load_weights(model, tmp_path / "partial.safetensors")
    assert snapshot(model) == before
    report = ts.load_weights(model, tmp_path / "partial.safetensors", strict=False)
    assert sorted(report.missing) == ["0.bias", "0.weight", "2.bias", "2.running_mean", "2.running_var"]


def test_load_state_dict_pre_hooks_are_run_with_and_without_the_module(tmp_path):
    renamed = {}

    def public(module, state_dict, prefix, *rest):  # register_load_state_dict_pre_hook: the module first
        renamed["module"] = module
        if prefix + "kernel" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "kernel")

    def private(state_dict, prefix, *rest):  # _register_load_state_dict_pre_hook: no module
        if prefix + "offset" in state_dict:
            state_dict[prefix + "bias"] = state_dict.pop(prefix + "offset")

    def make():
        model = nn.Sequential(nn.Linear(3, 3))
        model[0].register_load_state_dict_pre_hook(public)
        model[0]._register_load_state_dict_pre_hook(private)
        return model

    state = {"0.kernel": torch.randn(3, 3), "0.offset": torch.randn(3)}
    save_file(state, tmp_path / "hooked.safetensors")
    model = fresh(make)
    report = ts.load_weights(model, tmp_path / "hooked.safetensors")
    assert snapshot(model) == snapshot(as_loaded_by_torch(make, state)) and renamed["module"] is not None
    assert sorted(changes(report)) == [("0", "renamed", "0.kernel", "0.weight"), ("0", "renamed", "0.offset", "0.bias")]


def test_old_weight_norm_checkpoints_load_into_the_parametrized_layer(tmp_path):
    """torch's weight_norm parametrization declares a hook that turns weight_g / weight_v into its own names."""
    old = nn.Sequential(nn.Conv1d(2, 4, 3))
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(old[0])
    state = {k: v.detach().clone() for k, v in old.state_dict().items()}
    assert {"0.weight_g", "0.weight_v"} <= set(state)
    save_file(state, tmp_path / "wn.safetensors")
    make = lambda: nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3)))  # noqa: E731
    model = fresh(make)
    report = ts.load_weights(model, tmp_path / "wn.safetensors")
    assert snapshot(model) == snapshot(as_loaded_by_torch(make, state)) and report.ok
    assert {c[3] for c in changes(report)} == {"0.parametrizations.weight.original0", "0.parametrizations.weight.original1"}


def test_models_without_upgrades_plan_as_before(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    ts.save_weights(model, tmp_path / "plain.safetensors")
    report = ts.load_weights(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)), tmp_path / "plain.safetensors")
    assert report.ok and report.upgraded == [] and "upgraded" not in str(report)


# rename=


def test_rename_with_regular_expressions_in_order(tmp_path):
    source = filled(TinyNet(), seed=6)
    state = {k.replace("conv.", "stem.conv.").replace("head.", "fc."): v for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "renamed.safetensors")
    model = TinyNet()
    rules = {r"^stem\.conv\.": "stem.", r"^stem\.": "conv.", r"^fc\.": "head."}  # applied in order
    report = ts.load_weights(model, tmp_path / "renamed.safetensors", rename=rules)
    assert snapshot(model) == snapshot(source) and report.ok
    assert sorted(report.renamed) == [("fc.weight", "head.weight"), ("stem.conv.bias", "conv.bias"), ("stem.conv.weight", "conv.weight")]
    assert "renamed     3 keys by rename=" in str(report)
    assert report.to_dict()["renamed"] == [list(p) for p in report.renamed] or report.to_dict()["renamed"] == report.renamed


def test_rename_with_a_callable_that_drops_keys_like_timm_filter_functions(tmp_path):
    source = filled(TinyNet(), seed=7)
    state = {"model." + k: v for k, v in source.state_dict().items()} | {"model.aux.weight": torch.zeros(2)}
    save_file(state, tmp_path / "lightning.safetensors")

    def filter_fn(key: str) -> str | None:  # timm's checkpoint_filter_fn shape: rename, drop what does not belong
        return None if key.startswith("model.aux.") else key.removeprefix("model.")

    model = TinyNet()
    report = ts.load_weights(model, tmp_path / "lightning.safetensors", rename=filter_fn)
    assert snapshot(model) == snapshot(source) and report.ok
    assert report.dropped == ["model.aux.weight"] and len(report.renamed) == 9
    assert "dropped 1" in str(report)


def test_rename_is_applied_before_the_upgrades(tmp_path):
    state = {"neck." + k: v for k, v in old_layout(filled(fpn(), seed=8).state_dict()).items()}
    save_file(state, tmp_path / "neck.safetensors")
    model = fresh(fpn)
    report = ts.load_weights(model, tmp_path / "neck.safetensors", rename={r"^neck\.": ""})
    assert snapshot(model) == snapshot(as_loaded_by_torch(fpn, {k.removeprefix("neck."): v for k, v in state.items()}))
    assert len(report.renamed) == 12 and len(report.upgraded) == 12


@pytest.mark.parametrize("rename,message", [
    ({r"^(conv|bn)\.": "x."}, "maps both .* to 'x.weight'"),
    ({"(": ""}, "not a regular expression"),
    (lambda k: 3, "must return a non-empty string"),
    (["a"], "takes a mapping"),
])  # fmt: skip
def test_bad_renames_are_refused_before_anything_is_read(tmp_path, rename, message):
    ts.save_weights(TinyNet(), tmp_path / "w.safetensors")
    model = TinyNet()
    before = snapshot(model)
    with pytest.raises(ts.CheckpointError, match=message):
        ts.load_weights(model, tmp_path / "w.safetensors", rename=rename)
    assert snapshot(model) == before


def test_lazy_models_are_refused_with_the_next_step(tmp_path):
    ts.save_weights(nn.Sequential(nn.Linear(3, 2)), tmp_path / "w.safetensors")
    with pytest.raises(ts.CheckpointError, match="run one forward first"):
        ts.load_weights(nn.Sequential(nn.LazyLinear(2)), tmp_path / "w.safetensors")


class NeedsVersion(nn.Module):
    """Like torchvision's MNASNet: refuses a state dict whose metadata names no version."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        if local_metadata.get("version") not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_a_module_that_needs_a_version_reads_a_file_without_one_as_its_own(tmp_path):
    source = filled(NeedsVersion(), seed=4)
    ts.save_weights(source, tmp_path / "w.safetensors")  # safetensors: no per-module metadata
    with pytest.raises(ValueError, match="instead of None"):  # torch's own path on the same tensors
        NeedsVersion().load_state_dict(dict(source.state_dict()))
    model = fresh(NeedsVersion)
    report = ts.load_weights(model, tmp_path / "w.safetensors")
    assert snapshot(model) == snapshot(as_loaded_by_torch(NeedsVersion, source.state_dict()))  # with its metadata
    assert report.ok and changes(report) == [("", "assumed", "version 2", None)]
    assert "no version in the file: read as the model's version 2" in report.upgraded[0].describe()


def test_a_module_that_refuses_the_files_version_is_a_checkpoint_error(tmp_path):
    state = filled(NeedsVersion(), seed=4).state_dict()
    state._metadata[""] = {"version": 7}
    torch.save(state, tmp_path / "v7.pt")
    model = fresh(NeedsVersion)
    before = snapshot(model)
    with pytest.raises(ts.CheckpointError, match=r"NeedsVersion refused .* \(version 7\).*instead of 7.*rename="):
        ts.load_weights(model, tmp_path / "v7.pt")
    assert snapshot(model) == before
