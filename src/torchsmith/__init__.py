"""torchsmith: define, inspect, modify, save and load PyTorch models.

    >>> import torchsmith
    >>> model = torchsmith.create_model("resnet50", num_classes=20)
    >>> torchsmith.list_models("resnet1*")
    ['resnet101', 'resnet101_fpn', 'resnet152', 'resnet152_fpn', 'resnet18', 'resnet18_fpn']
    >>> torchsmith.save_model(model, "out/resnet50-20")          # config.json + model.safetensors
    PosixPath('out/resnet50-20')
    >>> model = torchsmith.load_model("out/resnet50-20")         # rebuilt without pickle

``import torchsmith`` is instant: the errors and ``__version__`` are here at once; the first use of any other
public name imports the whole API (torch, the zoo's registrations) in one go (PEP 562 ``__getattr__``), so the
command line's ``--help`` and ``--version`` never import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CheckpointError,
    ChecksumError,
    CorruptCheckpointError,
    DuplicateModelError,
    FeatureExtractionError,
    HeadNotFoundError,
    IncompatibleCheckpointError,
    InspectError,
    ModelConfigError,
    SpecError,
    SurgeryError,
    TorchsmithError,
    UnknownModelError,
    UnsafeCheckpointError,
    UnsaveableModelError,
    SignatureError,
    DownloadError,
)

if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ imports these
    from .checkpoint import (
        CheckpointDiff,
        CheckpointInfo,
        Limits,
        LoadReport,
        convert_checkpoint,
        diff_checkpoints,
        inspect_checkpoint,
        load_weights,
        read_weights,
        save_weights,
        sign_checkpoint,
        verify_checkpoint,
    )
    from .distributed import load_distributed, save_distributed
    from .features import FeatureExtractor, extract_features, feature_info, feature_nodes
    from .inspect import Summary, Trace, diagram, summary, trace
    from .layers import FeatureInfo, FeatureInfoList, FeaturePyramidNetwork, FrozenBatchNorm2d, LastLevelMaxPool, LastLevelP6P7
    from .pretrained import Weights, data_config, fetch_weights, get_weights, list_pretrained, register_weights
    from .registry import create_layer, create_model, get_model_builder, list_models, model_config, register_model, update_config
    from .surgery import (
        FreezeReport,
        MultiInputModel,
        adapt_input_channels,
        add_inputs,
        fold_batchnorm,
        freeze,
        freeze_report,
        get_module,
        optimize_for_inference,
        replace_head,
        replace_module,
        unfreeze,
    )
    from .models_io import build_from_config, load_model, save_model
    from .zoo import MLP, BackboneWithFPN, EncoderUNet, ResNet, UNet
    from .spec import GraphModel, LayerDict, LayerList, build, register_block, spec_schema, to_spec

__all__ = [
    "__version__",
    # errors: one root, a subclass per area
    "TorchsmithError",
    "UnknownModelError",
    "DuplicateModelError",
    "ModelConfigError",
    "FeatureExtractionError",
    "SurgeryError",
    "HeadNotFoundError",
    "InspectError",
    "CheckpointError",
    "CorruptCheckpointError",
    "ChecksumError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnsaveableModelError",
    "SignatureError",
    "DownloadError",
    "SpecError",
    # registry
    "create_model",
    "create_layer",
    "list_models",
    "register_model",
    "get_model_builder",
    "model_config",
    "update_config",
    # pretrained weights: create_model(name, pretrained=True / weights=TAG)
    "list_pretrained",
    "get_weights",
    "register_weights",
    "fetch_weights",
    "data_config",
    "Weights",
    # layers
    "FeatureInfo",
    "FeatureInfoList",
    "FrozenBatchNorm2d",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    # zoo classes (builders are reached by name through create_model, or in torchsmith.zoo)
    "ResNet",
    "BackboneWithFPN",
    "UNet",
    "EncoderUNet",
    "MLP",
    "build_from_config",
    # features
    "FeatureExtractor",
    "extract_features",
    "feature_nodes",
    "feature_info",
    # surgery
    "get_module",
    "replace_module",
    "replace_head",
    "FreezeReport",
    "freeze",
    "freeze_report",
    "unfreeze",
    "adapt_input_channels",
    "MultiInputModel",
    "add_inputs",
    "fold_batchnorm",
    "optimize_for_inference",
    # inspection
    "summary",
    "Summary",
    "trace",
    "Trace",
    "diagram",
    # checkpoints
    "save_weights",
    "load_weights",
    "read_weights",
    "save_model",
    "load_model",
    "LoadReport",
    "Limits",
    "inspect_checkpoint",
    "CheckpointInfo",
    "diff_checkpoints",
    "CheckpointDiff",
    "convert_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
    # distributed checkpoints (torch.distributed.checkpoint)
    "save_distributed",
    "load_distributed",
    # specs
    "build",
    "to_spec",
    "spec_schema",
    "register_block",
    "GraphModel",
    "LayerList",
    "LayerDict",
]


# the modules whose public names are above, imported together on first use (the zoo registers its models then)
_MODULES = ("checkpoint", "distributed", "features", "inspect", "layers", "pretrained", "registry", "surgery", "models_io", "zoo", "spec")


def _load_api() -> None:
    """Import every module of the API and bind each public name here (once; later lookups are plain globals)."""
    modules = [importlib.import_module(f".{m}", __name__) for m in _MODULES]
    for name in __all__:
        if name in globals():
            continue
        owner = next((m for m in modules if name in getattr(m, "__all__", ())), None) or next(
            (m for m in modules if hasattr(m, name)), None)
        if owner is None:
            raise ImportError(f"torchsmith.__all__ names {name!r}, which none of {_MODULES} defines")
        globals()[name] = getattr(owner, name)


def __getattr__(name: str) -> Any:
    if name in __all__:
        _load_api()
        return globals()[name]
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a subpackage: torchsmith.zoo, torchsmith.cli, ...
    raise AttributeError(f"module 'torchsmith' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
