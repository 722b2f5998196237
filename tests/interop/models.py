"""The peer-model matrix: torchvision, timm and transformers models people use, random weights, small inputs.

Every test module in tests/interop takes its models from here, so the matrix lives in one place.
``PeerModel.build()`` returns a fresh model (tests may change it) in eval mode; ``example()`` returns
``(args, kwargs)`` for one forward call. Nothing downloads weights: ``weights=None`` / ``pretrained=False``
and tiny transformers configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import timm
import torch
import torchvision.models as tvm
import torchvision.models.detection as tvd
import torchvision.models.segmentation as tvs
import transformers
from torch import nn


@dataclass(frozen=True)
class PeerModel:
    name: str  # e.g. "tv.resnet50", "timm.efficientnet_b0", "hf.gpt2"
    family: str  # "torchvision" | "timm" | "transformers"
    kind: str  # "classifier" | "detector" | "segmentation" | "features" | "tokens"
    make: Callable[[], nn.Module]
    example_fn: Callable[[], tuple[tuple, dict]]
    tags: frozenset[str] = field(default_factory=frozenset)  # "aux", "tied", "bnact", "nhwc", "tokens-out", ...

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return self.make().eval()

    def example(self) -> tuple[tuple, dict]:
        torch.manual_seed(1)
        return self.example_fn()

    def __str__(self) -> str:
        return self.name


def _image(h: int = 64, w: int | None = None, batch: int = 1):
    return lambda: ((torch.randn(batch, 3, h, w or h),), {})


def _images_list(h: int = 96, w: int = 128):
    return lambda: (([torch.rand(3, h, w)],), {})


def _tokens(seq: int = 8, vocab: int = 100, **extra):
    def make():
        ids = torch.randint(0, vocab, (2, seq))
        kwargs = {k: torch.randint(0, vocab, (2, v)) for k, v in extra.items()}
        return (ids,), kwargs

    return make


def _bert_config():
    return transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
    )


def _gpt2_config():
    return transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)


def _t5_config():
    return transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0,
    )


MODELS: list[PeerModel] = [
    # torchvision
    PeerModel("tv.resnet50", "torchvision", "classifier", lambda: tvm.resnet50(weights=None), _image()),
    PeerModel("tv.mobilenet_v3_large", "torchvision", "classifier", lambda: tvm.mobilenet_v3_large(weights=None), _image()),
    PeerModel("tv.efficientnet_b0", "torchvision", "classifier", lambda: tvm.efficientnet_b0(weights=None), _image()),
    PeerModel("tv.convnext_tiny", "torchvision", "classifier", lambda: tvm.convnext_tiny(weights=None), _image()),
    PeerModel("tv.vit_b_16", "torchvision", "classifier", lambda: tvm.vit_b_16(weights=None, image_size=64), _image(),
              frozenset({"tokens-out", "zero-head"})),
    PeerModel("tv.swin_t", "torchvision", "classifier", lambda: tvm.swin_t(weights=None), _image(), frozenset({"nhwc"})),
    PeerModel("tv.densenet121", "torchvision", "classifier", lambda: tvm.densenet121(weights=None), _image()),
    PeerModel("tv.googlenet", "torchvision", "classifier",
              lambda: tvm.googlenet(weights=None, aux_logits=True, init_weights=True), _image(), frozenset({"aux"})),
    PeerModel("tv.inception_v3", "torchvision", "classifier",
              lambda: tvm.inception_v3(weights=None, aux_logits=True, init_weights=True), _image(299),
              frozenset({"aux", "transform_input"})),
    PeerModel("tv.fasterrcnn_resnet50_fpn", "torchvision", "detector",
              lambda: tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=96, max_size=128),
              _images_list()),
    PeerModel("tv.deeplabv3_resnet50", "torchvision", "segmentation",
              lambda: tvs.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True), _image(),
              frozenset({"dict-out", "aux"})),
    # timm
    PeerModel("timm.resnet50", "timm", "classifier", lambda: timm.create_model("resnet50", pretrained=False), _image()),
    PeerModel("timm.efficientnet_b0", "timm", "classifier",
              lambda: timm.create_model("efficientnet_b0", pretrained=False), _image(), frozenset({"bnact"})),
    PeerModel("timm.mobilenetv3_small_100", "timm", "classifier",
              lambda: timm.create_model("mobilenetv3_small_100", pretrained=False), _image(), frozenset({"bnact"})),
    PeerModel("timm.vit_small_patch16_224", "timm", "classifier",
              lambda: timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64), _image(),
              frozenset({"tokens-out"})),
    PeerModel("timm.convnext_nano", "timm", "classifier", lambda: timm.create_model("convnext_nano", pretrained=False),
              _image()),
    PeerModel("timm.swin_tiny_patch4_window7_224", "timm", "classifier",
              lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=224), _image(224),
              frozenset({"nhwc"})),
    PeerModel("timm.resnet18_features", "timm", "features",
              lambda: timm.create_model("resnet18", pretrained=False, features_only=True), _image(), frozenset({"list-out"})),
    # transformers (tiny configs)
    PeerModel("hf.bert", "transformers", "tokens",
              lambda: transformers.BertForSequenceClassification(_bert_config()), _tokens(), frozenset({"tokens-in"})),
    PeerModel("hf.gpt2", "transformers", "tokens", lambda: transformers.GPT2LMHeadModel(_gpt2_config()), _tokens(),
              frozenset({"tokens-in", "tied"})),
    PeerModel("hf.t5", "transformers", "tokens",
              lambda: transformers.T5ForConditionalGeneration(_t5_config()), _tokens(decoder_input_ids=5),
              frozenset({"tokens-in", "tied"})),
]

BY_NAME = {m.name: m for m in MODELS}


def models(*, kind: str | None = None, family: str | None = None, tag: str | None = None, without: str | None = None):
    """The matrix filtered, as pytest params with readable ids."""
    chosen = [
        m for m in MODELS
        if (kind is None or m.kind == kind) and (family is None or m.family == family)
        and (tag is None or tag in m.tags) and (without is None or without not in m.tags)
    ]
    return [pytest.param(m, id=m.name) for m in chosen]
