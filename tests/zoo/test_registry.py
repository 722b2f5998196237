from __future__ import annotations

import pytest
import torch
from torch import nn

import torchsmith
from torchsmith import DuplicateModelError, TorchsmithError, UnknownModelError, create_model, get_model_builder, list_models, register_model
from torchsmith.registry import _REGISTRY

ZOO = {
    "mlp", "unet", "unet_resnet18", "unet_resnet34", "unet_resnet50",
    *[f"resnet{d}" for d in (18, 34, 50, 101, 152)],
    *[f"resnet{d}_fpn" for d in (18, 34, 50, 101, 152)],
}


@pytest.fixture
def scratch_registry():
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_list_models_and_patterns():
    assert ZOO <= set(list_models())
    assert list_models("resnet*_fpn") == sorted(f"resnet{d}_fpn" for d in (18, 34, 50, 101, 152))
    assert list_models("resnet?8") == ["resnet18"]
    assert list_models("nothing*") == []


def test_unknown_model_names_the_closest():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet5O")
    msg = str(info.value)
    assert "'resnet5O'" in msg and "'resnet50'" in msg.split("Did you mean")[1].split(",")[0]
    assert isinstance(info.value, TorchsmithError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownModelError, match="'unet'"):
        create_model("Unet")


def test_duplicate_registration_is_refused_and_named(scratch_registry):
    with pytest.raises(DuplicateModelError, match="'resnet50' is already registered.*torchsmith.zoo.resnets"):
        @register_model(name="resnet50")
        def my_resnet50():
            return nn.Linear(1, 1)
    assert create_model("resnet50").__class__.__name__ == "ResNet"  # the original survives


def test_builder_and_class_record_their_arguments(scratch_registry):
    @register_model
    def tiny(*, width: int = 4, depth: int = 1) -> nn.Module:
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    @register_model(name="tiny_cls")
    class TinyNet(nn.Module):
        def __init__(self, width: int = 3, *, act: str = "relu"):
            super().__init__()
            self.fc = nn.Linear(width, 1)

    init = TinyNet.__init__
    assert create_model("tiny", depth=2).torchsmith_config == {"name": "tiny", "kwargs": {"depth": 2}, "steps": []}
    assert tiny(width=8).torchsmith_config == {"name": "tiny", "kwargs": {"width": 8}, "steps": []}  # direct calls too
    assert create_model("tiny_cls", width=5, act="gelu").torchsmith_config == {
        "name": "tiny_cls", "kwargs": {"width": 5, "act": "gelu"}, "steps": []
    }  # fmt: skip
    assert create_model("tiny_cls").torchsmith_config == {"name": "tiny_cls", "kwargs": {}, "steps": []}
    # the registry records through a builder; it never rewrites the class it registers
    assert TinyNet.__init__ is init and not hasattr(TinyNet(5), "torchsmith_config")
    # the record is not state: no state_dict key, and it rebuilds the same architecture
    model = create_model("resnet18", num_classes=3)
    cfg = torchsmith.model_config(model)
    rebuilt = create_model(cfg["name"], **cfg["kwargs"])
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert rebuilt.fc.out_features == 3


def test_every_zoo_model_reports_feature_info_and_builds_on_meta():
    for name in sorted(ZOO):
        with torch.device("meta"):
            model = create_model(name)
        assert model.feature_info, name
        names = dict(model.named_modules())
        if name.endswith("_fpn"):
            continue  # FPN levels are output keys, checked in test_fpn
        for info in model.feature_info:
            assert info.module in names, (name, info)


@pytest.mark.parametrize("name", ["resnet18", "unet", "unet_resnet18", "resnet18_fpn", "mlp"])
def test_feature_info_speaks_timms_names_and_they_match_the_maps(name):
    """timm's meaning, measured on a real forward: ``channels()`` / ``num_chs`` are each level's channels,
    ``reduction()`` / ``reduction`` its input size / map size (0 for a map without a grid), ``module_name()``
    the module (an FPN: the output key) giving it."""
    from torchsmith import FeatureInfoList

    model = create_model(name).eval()
    info = model.feature_info
    x = torch.randn(1, 784) if name == "mlp" else torch.randn(1, 3, 64, 64)
    maps: dict[str, torch.Tensor] = {}
    hooks = [] if name.endswith("_fpn") else [
        model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: maps.setdefault(m, o)) for m in info.module_name()
    ]  # fmt: skip
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    maps = dict(out) if name.endswith("_fpn") else maps
    levels = [maps[m] for m in info.module_name()]
    assert isinstance(info, FeatureInfoList) and len(info) == len(levels)
    assert info.channels() == [y.shape[1] for y in levels] == [f.num_chs for f in info] == [f.channels for f in info]
    measured = [x.shape[-1] // y.shape[-1] if y.dim() == 4 else 0 for y in levels]
    assert info.reduction() == measured == [f.reduction for f in info] == [f.stride for f in info]
    last = len(info) - 1
    assert (info.channels(-1), info.reduction(last), info.module_name([last, 0])) == (
        levels[-1].shape[1], measured[-1], [info[-1].module, info[0].module])
    assert info.get_dicts(idx=0) == {"num_chs": levels[0].shape[1], "reduction": measured[0], "module": info[0].module}
    assert isinstance(info[1:], FeatureInfoList) and info[1:].channels() == info.channels()[1:]


def test_wrong_keyword_names_what_the_builder_accepts():
    with pytest.raises(torchsmith.ModelConfigError, match=r"resnet50: .*'num_class'.*'num_classes'"):
        create_model("resnet50", num_class=3)
    with pytest.raises(torchsmith.ModelConfigError, match="backbone_name"):
        create_model("unet_resnet34", backbone_name="resnet18")  # fixed by the entry point


def test_entry_point_signatures_are_keyword_only():
    import inspect

    from torchsmith import zoo

    for name in ZOO:
        params = inspect.signature(getattr(zoo, name)).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), name


def test_public_api_is_listed_and_importable():
    names = set(torchsmith.__all__)
    assert len(names) == len(torchsmith.__all__)  # no duplicates
    for name in names:
        assert hasattr(torchsmith, name), name
    required = {
        "create_model", "list_models", "register_model", "TorchsmithError", "UnknownModelError",
        "FrozenBatchNorm2d", "FeaturePyramidNetwork", "LastLevelMaxPool", "LastLevelP6P7", "BackboneWithFPN",
        "extract_features", "feature_nodes", "feature_info", "get_module", "replace_module", "replace_head",
        "freeze", "unfreeze", "adapt_input_channels", "add_inputs", "optimize_for_inference",
        "save_weights", "load_weights", "LoadReport", "save_model", "load_model",
    }
    assert required <= names
    errors = [getattr(torchsmith, n) for n in names if n.endswith("Error")]
    assert all(issubclass(e, torchsmith.TorchsmithError) for e in errors)


def test_zoo_entry_points_are_plain_defs_and_public_names_are_in_each_files_all():
    import inspect
    import re
    from pathlib import Path

    from torchsmith import zoo

    zoo_dir = Path(zoo.__file__).parent
    source = "\n".join(p.read_text() for p in zoo_dir.glob("*.py"))
    for name in ZOO:
        assert re.search(rf"^def {name}\(", source, re.M), f"no `def {name}(` in torchsmith/zoo"
    for module in (zoo.resnets, zoo.fpns, zoo.unets, zoo.mlps):
        public = {
            n for n, obj in vars(module).items()
            if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__
        }  # fmt: skip
        assert public <= set(module.__all__), (module.__name__, public - set(module.__all__))
    assert set(zoo.__all__) >= ZOO


def test_zoo_builders_never_shadow_the_zoo_modules():
    """``torchsmith.zoo.unet`` is the builder; the module that defines it must stay reachable by its own name."""
    import importlib
    import pkgutil

    from torchsmith import zoo

    modules = [info.name for info in pkgutil.iter_modules(zoo.__path__)]
    assert {"resnets", "fpns", "unets", "mlps", "multi_input"} <= set(modules)
    for name in modules:
        assert getattr(zoo, name) is importlib.import_module(f"torchsmith.zoo.{name}"), name
    assert not ZOO & set(modules), ZOO & set(modules)


def test_update_config_checks_keywords_against_the_builder():
    model = create_model("mlp")
    with pytest.raises(torchsmith.ModelConfigError, match=r"mlp does not take num_clases\. Did you mean 'num_classes'"):
        torchsmith.update_config(model, kwargs={"num_clases": 3})
    assert torchsmith.model_config(model)["kwargs"] == {}  # nothing changed
    assert torchsmith.update_config(model, kwargs={"num_classes": 3})
    assert torchsmith.model_config(model)["kwargs"] == {"num_classes": 3}
    assert not torchsmith.update_config(nn.Linear(1, 1), kwargs={"x": 1})  # no config: nothing to update


def test_create_layer_records_a_torch_nn_layer_and_refuses_other_names():
    layer = torchsmith.create_layer("LeakyReLU", negative_slope=0.2)
    assert isinstance(layer, nn.LeakyReLU) and layer.negative_slope == 0.2
    assert torchsmith.model_config(layer) == {"name": "torch.nn.LeakyReLU", "kwargs": {"negative_slope": 0.2}, "steps": []}
    with pytest.raises(UnknownModelError, match="Did you mean 'LeakyReLU'"):
        torchsmith.create_layer("LeakyRelu")
    with pytest.raises(UnknownModelError):
        create_model("torch.nn.functional")  # only torch.nn module classes, never an import


def test_create_layer_builds_only_the_allow_list_and_says_what_to_do():
    with pytest.raises(UnknownModelError) as info:  # a torch.nn layer, but one no config can name
        torchsmith.create_layer("MultiheadAttention", embed_dim=8, num_heads=2)
    msg = str(info.value)
    assert msg.startswith("create_layer: torch.nn.MultiheadAttention is not on torchsmith's allow-list of torch.nn layers.")
    assert "torchsmith.codec.NN_LAYERS" in msg and "replace_module" in msg and "@register_model" in msg
    with pytest.raises(UnknownModelError, match=r"create_layer: torch.nn has no layer 'Conv2D' on torchsmith's allow-list\. Did you mean 'Conv2d'"):
        torchsmith.create_layer("Conv2D", in_channels=3, out_channels=4, kernel_size=3)
    with pytest.raises(UnknownModelError, match="not on torchsmith's allow-list"):
        create_model("torch.nn.Sequential")  # a container is not a layer: the config name is refused too
    assert type(create_model("torch.nn.Hardswish")) is nn.Hardswish  # what save_model wrote before still builds


def test_unknown_keywords_of_create_model_get_a_did_you_mean():
    with pytest.raises(torchsmith.ModelConfigError) as caught:
        create_model("resnet50", num_clases=3, in_chanels=1)
    message = str(caught.value)
    assert message.startswith("resnet50: unknown keyword arguments 'num_clases', 'in_chanels'. Did you mean 'num_classes'")
    assert "help(torchsmith.get_model_builder('resnet50'))" in message and "torchsmith.zoo.resnet50" not in message


@pytest.mark.parametrize("kwargs, suggested", [({"pretraind": True}, "'pretrained'"), ({"weight": "X"}, "'weights'")])
def test_a_misspelt_weights_keyword_is_suggested_with_the_way_to_load_weights(kwargs, suggested):
    with pytest.raises(torchsmith.ModelConfigError) as caught:
        create_model("resnet50", **kwargs)
    message = str(caught.value)
    assert f"Did you mean {suggested}" in message
    assert "torchsmith.create_model('resnet50', pretrained=True)" in message and "list_pretrained('resnet50*')" in message


def test_the_builder_called_with_pretrained_points_to_create_model():
    with pytest.raises(torchsmith.ModelConfigError) as caught:
        get_model_builder("resnet50")(pretrained=True)
    message = str(caught.value)
    assert "'pretrained' is create_model's keyword, not the builder's" in message and "Did you mean" not in message
    assert "torchsmith.create_model('resnet50', pretrained=True)" in message
