"""The model zoo: one file per architecture family, registered on import.

Builders live here and are reached by name through ``torchsmith.create_model``.
Each file lists its public names in ``__all__``; this package re-exports them all
(``torchsmith.zoo.unet`` is the builder function, as every other entry point).
"""

from . import fpn as _fpn
from . import mlp as _mlp
from . import multi_input as _multi_input
from . import resnet as _resnet
from . import unet as _unet
from .fpn import *  # noqa: F403
from .mlp import *  # noqa: F403
from .multi_input import *  # noqa: F403
from .resnet import *  # noqa: F403
from .unet import *  # noqa: F403

__all__ = [*_resnet.__all__, *_fpn.__all__, *_unet.__all__, *_mlp.__all__, *_multi_input.__all__]
