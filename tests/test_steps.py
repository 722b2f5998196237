"""The one table of recorded operations (torchsmith.steps): each operation registered once, by the surgery
function that performs it; replay and after-load actions are loops over it; directories saved before the table
existed still load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchsmith as ts
from helpers import DATA
from torchsmith import steps, surgery

SAVED = DATA / "saved_v0_1"  # written by torchsmith 0.1.0 before the table (see its README.md)



@pytest.fixture
def own_table(monkeypatch):
    """Operations registered in a test are gone after it."""
    monkeypatch.setattr(steps, "_OPS", dict(steps._OPS))


def test_every_operation_is_registered_by_the_public_surgery_function_of_its_name():
    table = steps.recorded_ops()
    changes = {n for n in surgery.__all__ if callable(getattr(surgery, n))} - {"get_module", "freeze_report", "MultiInputModel", "FreezeReport"}
    assert set(table) == changes  # every public change records, under its own name
    for op, entry in table.items():
        fn = getattr(surgery, op)
        assert entry.name == op and entry.defined_by == f"{fn.__module__}.{fn.__qualname__}"
        assert entry.defined_by.startswith("torchsmith.surgery.")
    assert [op for op, entry in table.items() if entry.after_load] == ["optimize_for_inference"]


def test_a_second_registration_is_refused_naming_the_first(own_table):
    before = steps.recorded_ops()
    with pytest.raises(ts.DuplicateModelError, match=r"'replace_head' is already registered by torchsmith\.surgery\.heads\.replace_head"):
        steps.recorded_op("replace_head", replay=lambda m, s: m)(lambda m: m)
    assert steps.recorded_ops() == before


def test_the_zoo_records_its_head_change_as_the_replace_head_step():
    model = ts.create_model("mlp", in_features=6, hidden=(4,), num_classes=3)
    model.reset_classifier(7)
    assert ts.model_config(model)["steps"] == [{"op": "replace_head", "num_classes": 7, "path": "head"}]
    rebuilt = ts.build_from_config(ts.model_config(model))
    assert rebuilt.head.out_features == 7 and rebuilt.num_classes == 7


def test_an_operation_registered_in_one_place_saves_loads_and_acts_after_load(own_table, tmp_path):
    """A new operation touches one place: its registration. Replay runs before the weights are read (meta),
    the after-load action after them (real values)."""
    seen = []

    def after_load(model: nn.Module, step) -> None:
        seen.append((model.head.weight.is_meta, step))
        model.head.weight.requires_grad_(False)

    @steps.recorded_op("widen_head", replay=lambda model, step: widen_head(model, step["extra"]), after_load=after_load)
    def widen_head(model: nn.Module, extra: int) -> nn.Module:
        old = model.head
        model.head = nn.Linear(old.in_features, old.out_features + extra)
        steps.record(model, "widen_head", extra=extra)
        return model

    model = widen_head(ts.create_model("mlp", in_features=6, hidden=(4,), num_classes=3), 2)
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    assert loaded.head.out_features == 5 and torch.equal(loaded.head.weight, model.head.weight)
    assert seen == [(False, {"op": "widen_head", "extra": 2})] and not loaded.head.weight.requires_grad
    assert ts.model_config(loaded)["steps"] == [{"op": "widen_head", "extra": 2}]


def test_an_unknown_step_is_refused_with_the_closest_names():
    config = {"name": "mlp", "kwargs": {}, "steps": [{"op": "replace_haed", "num_classes": 3, "path": "head"}]}
    with pytest.raises(ts.ModelConfigError, match=r"step 0 .* not a recorded torchsmith operation\. Did you mean 'replace_head'"):
        ts.build_from_config(config)
    with pytest.raises(ts.ModelConfigError, match="Known: "):
        steps.finish_loaded(nn.Linear(2, 2), [{"op": "optimise_for_inference"}])


# directories saved before the table


def test_an_add_inputs_model_saved_before_fuse_and_relu_loads_and_computes_from_its_file():
    loaded = ts.load_model(SAVED / "add_inputs_mlp")
    assert isinstance(loaded, ts.MultiInputModel) and isinstance(loaded.act, nn.Identity)
    assert isinstance(loaded.backbone.head, nn.Identity)  # fused the features that went into the head
    step = ts.model_config(loaded)["steps"][-1]
    assert "fuse" not in step and step["relu"] is False  # recorded as it was read
    w = load_file(SAVED / "add_inputs_mlp" / "model.safetensors")
    x, extra = torch.randn(3, 12), torch.randn(3, 2)
    hidden = torch.relu(x @ w["backbone.features.0.weight"].T + w["backbone.features.0.bias"])  # (3, 8)
    expected = torch.cat([hidden, extra], 1) @ w["head.weight"].T + w["head.bias"]  # (3, 10) -> (3, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x, extra), expected)


def test_a_chain_saved_before_the_table_loads_with_its_after_load_action():
    directory = SAVED / "chain_unet"
    loaded = ts.load_model(directory)
    ops = [s["op"] for s in ts.model_config(loaded)["steps"]]
    assert ops == ["adapt_input_channels", "replace_head", "freeze", "fold_batchnorm", "optimize_for_inference"]
    saved = load_file(directory / "model.safetensors")
    state = loaded.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], v) for k, v in saved.items())
    assert loaded.stem[0].in_channels == 1 and loaded.head.out_channels == 2 and isinstance(loaded.stem[1], nn.Identity)
    # optimize_for_inference's after-load action: eval mode, no grad, 4-D weights channels-last
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.parameters() if p.dim() == 4)
