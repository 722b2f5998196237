"""The model zoo: one file per architecture family, registered on import.

Builders live here and are reached by name through ``torchsmith.create_model``.
Each file lists its public names in ``__all__``; this package re-exports them all.
A family's file is named in the plural (``resnets``, ``fpns``, ``unets``, ``mlps``),
so a builder named after its family (``torchsmith.zoo.unet``, ``torchsmith.zoo.mlp``)
never shadows the module that defines it.
"""

from . import fpns, mlps, multi_input, resnets, unets, weights  # weights: torchvision's, registered for the ResNets
from .fpns import *  # noqa: F403
from .mlps import *  # noqa: F403
from .multi_input import *  # noqa: F403
from .resnets import *  # noqa: F403
from .unets import *  # noqa: F403

__all__ = [*resnets.__all__, *fpns.__all__, *unets.__all__, *mlps.__all__, *multi_input.__all__]
