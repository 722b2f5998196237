"""Imported once by the fork server, so each child starts with the libraries and model classes loaded."""

import contextlib

import timm  # noqa: F401
import torchvision.models  # noqa: F401
import torchvision.models.detection  # noqa: F401
import torchvision.models.optical_flow  # noqa: F401
import torchvision.models.quantization  # noqa: F401
import torchvision.models.segmentation  # noqa: F401
import torchvision.models.video  # noqa: F401
import transformers

import torchsmith  # noqa: F401

from .cases import HF

for _cls, _, _ in HF.values():  # transformers imports its model files lazily: once here, not in every child
    with contextlib.suppress(Exception):
        getattr(transformers, _cls)
