"""The weights torchvision publishes for the zoo's ResNets, registered under torchvision's tags.

Our ResNets' state-dict keys equal torchvision's, so its files load with no renaming. Facts copied from
torchvision 0.29 (``torchvision/models/resnet.py``: ``ResNet*_Weights``): the URL (whose file name carries
the sha256 prefix torch.hub checks), ImageNet-1k's 1000 categories, the evaluation transform
(``ImageClassification(crop_size=224, resize_size=256 or 232)``, bilinear, ImageNet mean and std) and the
published accuracy. ``DEFAULT`` is torchvision's: V2 where it exists.

    >>> [w.name for w in all_weights() if w.model == "resnet50"]
    ['resnet50.IMAGENET1K_V1', 'resnet50.IMAGENET1K_V2']
    >>> get_weights("resnet50").data_config()["crop_pct"] == 224 / 232     # resize to 232, crop 224
    True
"""

from __future__ import annotations

from ..pretrained import IMAGENET_CATEGORIES, all_weights, get_weights, register_weights

__all__: list[str] = []

_URL = "https://download.pytorch.org/models/"
_V1 = "https://github.com/pytorch/vision/tree/main/references/classification#resnet"
_V2 = "https://github.com/pytorch/vision/issues/3995#new-recipe"

# model, tag, file name, resize size (then a 224 crop), acc@1, acc@5, parameters, file size (MB), GFLOPS, recipe
TORCHVISION_RESNETS = [
    ("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 256, 69.758, 89.078, 11689512, 44.661, 1.814, _V1),
    ("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 256, 73.314, 91.420, 21797672, 83.275, 3.664, _V1),
    ("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 256, 76.130, 92.862, 25557032, 97.781, 4.089, _V1),
    ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 232, 80.858, 95.434, 25557032, 97.79, 4.089,
     "https://github.com/pytorch/vision/issues/3995#issuecomment-1013906621"),
    ("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 256, 77.374, 93.546, 44549160, 170.511, 7.801, _V1),
    ("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 232, 81.886, 95.780, 44549160, 170.53, 7.801, _V2),
    ("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 256, 78.312, 94.046, 60192808, 230.434, 11.514, _V1),
    ("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 232, 82.284, 96.002, 60192808, 230.474, 11.514, _V2),
]  # fmt: skip

for _model, _tag, _file, _resize, _top1, _top5, _params, _mb, _gflops, _recipe in TORCHVISION_RESNETS:
    register_weights(
        _model, _tag, url=_URL + _file, default=_tag.endswith("_V2"), categories=IMAGENET_CATEGORIES,
        classifier="fc", input_size=(3, 224, 224), interpolation="bilinear", crop_pct=224 / _resize,
        **{"acc@1": _top1, "acc@5": _top5, "num_params": _params, "file_size_mb": _mb, "gflops": _gflops,
           "resize_size": _resize, "recipe": _recipe, "license": "BSD-3-Clause", "source": "torchvision"},
    )  # fmt: skip
