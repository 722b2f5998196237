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
from .zoo import MLP, BackboneWithFPN, EncoderUNet, ResNet, UNet

# features and surgery (issue 3)
from .errors import FeatureExtractionError, SurgeryError
from .features import FeatureExtractor, extract_features, feature_info, feature_nodes
from .surgery import (
    FreezeReport,
    MultiInputModel,
    adapt_input_channels,
    add_inputs,
    fold_batchnorm,
    freeze,
    get_module,
    optimize_for_inference,
    replace_head,
    replace_module,
    unfreeze,
)

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
    # zoo classes (builders are reached by name through create_model, or in torchsmith.zoo)
    "ResNet",
    "BackboneWithFPN",
    "UNet",
    "EncoderUNet",
    "MLP",
]

# features and surgery (issue 3)
__all__ += [
    "FeatureExtractionError",
    "SurgeryError",
    "FeatureExtractor",
    "extract_features",
    "feature_nodes",
    "feature_info",
    "get_module",
    "replace_module",
    "replace_head",
    "FreezeReport",
    "freeze",
    "unfreeze",
    "adapt_input_channels",
    "MultiInputModel",
    "add_inputs",
    "fold_batchnorm",
    "optimize_for_inference",
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
