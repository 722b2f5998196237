"""Small models and independent references for the inspection tests (summary, trace, diagram)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


class TinyLM(nn.Module):
    """A small language model: tied embedding / head, two transformer layers, a dict output."""

    def __init__(self, vocab: int = 100, dim: int = 32, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, 64, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]  # (B, T, D)
        h = self.norm(self.blocks(h))
        return {"logits": self.head(h), "hidden": h}


@dataclass
class Pair:
    main: torch.Tensor
    extra: tuple


class Outputs(nn.Module):
    """Returns a dataclass holding a tensor and a tuple of (tensor, list of tensors)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return Pair(self.a(x), (self.b(x), [x, x.sum(-1)]))


def dict_of_layers() -> nn.Module:
    """The tutorial's dict-of-layers composition: a ModuleDict with a layer added by key, run in order."""

    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict(OrderedDict(linear=nn.Linear(784, 256), act=nn.ReLU()))
            self.layers["output"] = nn.Linear(256, 10)

        def forward(self, x):
            for layer in self.layers.values():
                x = layer(x)
            return x

    return DictNet()


def saved_bytes_real(model: nn.Module, *args, **kwargs) -> int:
    """Bytes autograd keeps for backward in a real forward: distinct storages (by address), parameters
    and buffers excluded. The independent reference for ``summary(...).saved_bytes``."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args, **kwargs)
    total = sum(seen.values())
    del out
    return total
