"""torchsmith: define, inspect, modify, save and load PyTorch models.

    >>> import torchsmith
    >>> model = torchsmith.create_model("resnet50", num_classes=20)
    >>> torchsmith.list_models("resnet*")
    ['resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50']
"""

from .errors import DuplicateModelError, ModelConfigError, TorchsmithError, UnknownModelError
from .layers import (
    FeatureInfo,
    FeaturePyramidNetwork,
    FrozenBatchNorm2d,
    LastLevelMaxPool,
    LastLevelP6P7,
)
from .registry import create_model, get_model_builder, list_models, model_config, register_model

# checkpoints (issue 4)
from .checkpoint import (
    CheckpointDiff,
    CheckpointInfo,
    LoadReport,
    convert_checkpoint,
    diff_checkpoints,
    inspect_checkpoint,
    load_model,
    load_weights,
    read_weights,
    save_model,
    save_weights,
)
from .errors import (
    CheckpointError,
    ChecksumError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
    UnsaveableModelError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "TorchsmithError",
    "UnknownModelError",
    "DuplicateModelError",
    "ModelConfigError",
    # registry
    "create_model",
    "list_models",
    "register_model",
    "get_model_builder",
    "model_config",
    # layers
    "FeatureInfo",
    "FrozenBatchNorm2d",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
]

# checkpoints (issue 4)
__all__ += [
    "save_weights",
    "load_weights",
    "read_weights",
    "save_model",
    "load_model",
    "LoadReport",
    "inspect_checkpoint",
    "CheckpointInfo",
    "diff_checkpoints",
    "CheckpointDiff",
    "convert_checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "ChecksumError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnsaveableModelError",
]
