"""Intermediate outputs of any ``nn.Module``, by (nested) dotted name.

``extract_features`` returns a module whose forward gives ``{name: tensor}``.
Three strategies, chosen in this order by ``mode="auto"``:

- ``"children"``: the requested nodes are top-level children run one after the
  other (an ``nn.Sequential``, or a model whose traced graph is that chain up
  to the last requested child). The extractor runs those children in a loop.
- ``"fx"``: ``torch.fx`` traces the model (node names as torchvision's
  ``get_graph_node_names``); modules that hold no requested node are kept
  whole as leaves. Any node can be requested, function nodes too
  (``"layer1.0.add"``). A forward that branches on ``self.training`` is traced
  in both modes and the extractor follows ``.train()`` / ``.eval()``.
- ``"hooks"``: forward hooks on the requested modules, for models that do not
  trace (data-dependent control flow, ``.item()``). Module names only.

Every strategy stops computing after the last requested node: the graph or the
loop is cut there, hooks stop the forward once everything is captured.

A module called more than once (``resnet``'s shared ``relu``): its name gives
the output of its **first** call; ``name_1``, ``name_2`` ... give later calls
(torchvision's naming). A requested tensor that a later in-place operation
would overwrite (``bn3`` before ``out += identity``) is cloned, so every
returned tensor holds the value the node produced.

Example::

    >>> model = create_model("resnet50").eval()
    >>> body = extract_features(model, {"layer2": "c3", "layer3.1.conv2": "mid"})
    >>> body.strategy
    'fx'
    >>> {k: tuple(v.shape) for k, v in body(torch.randn(1, 3, 224, 224)).items()}
    {'c3': (1, 512, 28, 28), 'mid': (1, 256, 14, 14)}
"""

from .extract import FeatureExtractor, extract_features
from .info import feature_info
from .nodes import feature_nodes

__all__ = ["FeatureExtractor", "extract_features", "feature_nodes", "feature_info"]
