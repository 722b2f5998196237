"""Declarative model specs: models as data (YAML, JSON or a dict), validated, built, saved and rebuilt.

``build`` returns a new model; nothing here changes a model in place. A spec names only torch.nn
layers (from the config codec's allow-list, ``torchsmith.codec.NN_LAYERS``), registered blocks, graph ops and registered models: nothing is
imported or evaluated. A spec-built model records its spec through the registry (as the model
``"spec"``), so ``save_model`` writes it to ``config.json`` and ``load_model`` rebuilds it with no code.

    >>> import torch, torchsmith
    >>> model = torchsmith.build('''
    ... input: [1, 3, 224, 224]
    ... layers:
    ...   conv1: {Conv2d: [3, 20, 5]}
    ...   relu1: ReLU
    ...   conv2: {Conv2d: [auto, 64, 5]}
    ...   relu2: ReLU
    ... ''')
    >>> [name for name, _ in model.named_children()]
    ['conv1', 'relu1', 'conv2', 'relu2']
    >>> model(torch.rand(1, 3, 224, 224)).shape       # (B, 64, 216, 216)
    torch.Size([1, 64, 216, 216])
    >>> torchsmith.to_spec(model)["layers"]["conv1"]
    {'Conv2d': [3, 20, 5]}

Roles: ``api`` holds what this package offers (``build``, ``to_spec``, ``output_shapes``, the registered
model ``"spec"``), ``source`` reads text and files, ``parse`` validates into a tree (every problem, with paths),
``builder`` makes modules (shapes inferred on meta), ``modules`` holds the graph and container modules,
``ops`` the graph ops, ``names`` what names resolve to, ``schema`` the JSON Schema.
"""

from . import blocks as _blocks  # noqa: F401 - registers the zoo's U-Net blocks
from . import ops as _ops  # noqa: F401 - registers the graph ops
from .api import build, output_shapes, to_spec
from .modules import GraphModel, GraphNode, LayerDict, LayerList
from .names import register_block, register_op
from .schema import spec_schema

__all__ = [
    "build",
    "to_spec",
    "spec_schema",
    "register_block",
    "register_op",
    "GraphModel",
    "GraphNode",
    "LayerList",
    "LayerDict",
    "output_shapes",
]
