"""Model surgery for any ``nn.Module``: find, replace, re-head, freeze, re-input, fold.

One file per job: ``modules`` (find, replace), ``heads``, ``freeze``, ``channels``, ``inputs``, ``fold``,
``quantize`` (int8, through torchao).

Every function here changes the model you pass, in place, and returns it (so
calls chain); ``add_inputs`` and ``optimize_for_inference(compile=True)``
return a wrapper around it. None copies: ``copy.deepcopy(model)`` first to
keep the original. Reports come from their own functions (``freeze_report``).
On a model built through the registry, each change of structure is recorded
as a JSON step in ``model.torchsmith_config`` so ``load_model`` can replay it.

The tutorial's "modify a pretrained model" section, done right: setting
``fc.out_features = 20`` changes a printed number and nothing else;
:func:`replace_head` builds a new layer, so the model really gives 20 outputs.

Example::

    >>> model = create_model("resnet50")
    >>> replace_head(model, 20)(torch.randn(1, 3, 224, 224)).shape     # (B, 20)
    torch.Size([1, 20])
    >>> print(freeze_report(freeze(model, exclude=["layer2", "layer3", "layer4"])))   # doctest: +ELLIPSIS
    frozen: conv1, bn1, layer1, fc ...
"""

from ..zoo.multi_input import MultiInputModel
from .channels import adapt_input_channels
from .fold import fold_batchnorm, optimize_for_inference
from .freeze import FreezeReport, freeze, freeze_report, unfreeze
from .heads import replace_head
from .inputs import add_inputs
from .modules import get_module, replace_module

__all__ = [
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
]
