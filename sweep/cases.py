"""Every model the sweep runs: torchvision builders, a family-spread selection of timm, tiny transformers.

A :class:`Case` is plain data (its name says how to build it), so a child process rebuilds it from the name
alone. Nothing downloads: ``weights=None``, ``pretrained=False``, transformers from configs (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["Case", "all_cases", "sample", "build", "example", "by_name"]


@dataclass(frozen=True)
class Case:
    name: str  # "tv.resnet50", "timm.convnext_atto", "hf.bert"
    library: str  # torchvision | timm | transformers
    family: str  # table of docs/compatibility.md: "torchvision classification", "timm convnext", ...
    kind: str  # image | detection | segmentation | video | flow | tokens | seq2seq | pixels
    params: int | None = None  # estimated, for samples that must stay quick


# torchvision

TV_KINDS = {"detection": "detection", "segmentation": "segmentation", "video": "video", "optical_flow": "flow", "quantization": "image"}


def _tv_cases() -> list[Case]:
    import torchvision.models as tvm

    out = []
    for name in tvm.list_models():
        module = tvm.get_model_builder(name).__module__.removeprefix("torchvision.models.")
        group = module.split(".")[0] if "." in module else "classification"
        try:
            params = list(tvm.get_model_weights(name))[0].meta.get("num_params")
        except Exception:  # noqa: BLE001 - a builder without weights: size unknown
            params = None
        out.append(Case(f"tv.{name}", "torchvision", f"torchvision {group.replace('_', ' ')}", TV_KINDS.get(group, "image"), params))
    return out


def _tv_build(name: str, attempt: dict) -> nn.Module:
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    module = builder.__module__
    kwargs: dict = {"weights": None}
    if ".detection." in module or ".segmentation." in module:
        kwargs["weights_backbone"] = None
    if ".detection." in module and ("rcnn" in name or "retinanet" in name or "fcos" in name):
        kwargs.update(min_size=96, max_size=128)
    if ".quantization." in module:
        kwargs["quantize"] = False
    if name.startswith("vit_"):
        kwargs["image_size"] = attempt.get("size", 64) if name != "vit_h_14" else 56
    if name in ("googlenet", "inception_v3", "quantized_googlenet", "quantized_inception_v3"):
        kwargs["init_weights"] = True  # (torchvision warns otherwise)
    return builder(**kwargs)


# timm: the smallest model of each name prefix, so every family is there and the sweep stays quick

DATA = Path(__file__).resolve().parent / "data"  # the catalogue of the timm version the docs were made with


def _timm_sizes(state: Path | None = None) -> dict[str, tuple[int | None, str]]:
    """``name -> (parameters, timm module)`` for every timm model, built on meta once per timm version (minutes),
    kept in ``sweep/data`` or ``state``."""
    import timm

    name = f"timm-catalog-{timm.__version__}.json"
    for path in (DATA / name, (state or Path(".sweep")) / name):
        if path.exists():
            return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    names = timm.list_models()
    module_of = {n: m for m in timm.list_modules() for n in timm.list_models(module=m)}
    sizes: dict[str, tuple[int | None, str]] = {}
    for name in names:
        module = module_of.get(name, "?")
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            n = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a model that does not build on meta is still swept (size unknown)
            n = None
        sizes[name] = (n, module)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(list(v))}" for k, v in sorted(sizes.items())) + "\n}\n")
    return sizes


def _prefix(name: str) -> str:
    return re.split(r"[_\d]", name)[0]


def _timm_cases(state: Path | None = None) -> list[Case]:
    sizes = _timm_sizes(state)
    chosen: dict[str, tuple[int, str]] = {}
    for name, (n, _) in sizes.items():  # the smallest of each name prefix (timm.list_models() grouped by prefix)
        key = _prefix(name)
        size = n if n is not None else 10**12
        if key not in chosen or (size, name) < chosen[key]:
            chosen[key] = (size, name)
    covered = {sizes[name][1] for _, name in chosen.values()}
    for name, (n, module) in sorted(sizes.items(), key=lambda kv: (kv[1][0] or 10**12, kv[0])):
        if module not in covered:  # every timm module (architecture file) at least once
            covered.add(module)
            chosen[f"module:{module}"] = (n or 10**12, name)
    return sorted(
        (Case(f"timm.{name}", "timm", f"timm {sizes[name][1]}", "image", sizes[name][0]) for _, name in chosen.values()),
        key=lambda c: c.name,
    )


def _timm_build(name: str, attempt: dict) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **attempt.get("kwargs", {}))


# transformers: tiny configs

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
SEQ2SEQ = dict(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, decoder_start_token_id=2, pad_token_id=1)  # fmt: skip
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=3)

HF: dict[str, tuple[str, dict, str]] = {  # model_type -> (model class, config kwargs, input kind)
    "bert": ("BertForSequenceClassification", SMALL, "tokens"),
    "roberta": ("RobertaForSequenceClassification", {**SMALL, "pad_token_id": 1}, "tokens"),
    "distilbert": ("DistilBertForSequenceClassification", dict(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64), "tokens"),
    "albert": ("AlbertForSequenceClassification", {**SMALL, "embedding_size": 16}, "tokens"),
    "electra": ("ElectraForSequenceClassification", {**SMALL, "embedding_size": 16}, "tokens"),
    "deberta-v2": ("DebertaV2ForSequenceClassification", SMALL, "tokens"),
    "xlm-roberta": ("XLMRobertaForMaskedLM", {**SMALL, "pad_token_id": 1}, "tokens"),
    "gpt2": ("GPT2LMHeadModel", dict(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64), "tokens"),
    "gpt_neo": ("GPTNeoForCausalLM", dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]], max_position_embeddings=64, window_size=8), "tokens"),
    "opt": ("OPTForCausalLM", dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32), "tokens"),
    "bloom": ("BloomForCausalLM", dict(vocab_size=100, hidden_size=32, n_layer=2, n_head=2), "tokens"),
    "llama": ("LlamaForCausalLM", {**SMALL, "num_key_value_heads": 1}, "tokens"),
    "mistral": ("MistralForCausalLM", {**SMALL, "num_key_value_heads": 1}, "tokens"),
    "qwen2": ("Qwen2ForCausalLM", {**SMALL, "num_key_value_heads": 1}, "tokens"),
    "phi": ("PhiForCausalLM", SMALL, "tokens"),
    "gemma": ("GemmaForCausalLM", {**SMALL, "num_key_value_heads": 1, "head_dim": 16}, "tokens"),
    "falcon": ("FalconForCausalLM", dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2), "tokens"),
    "llama-seqcls": ("LlamaForSequenceClassification", {**SMALL, "num_key_value_heads": 1, "pad_token_id": 0}, "tokens"),
    "t5": ("T5ForConditionalGeneration", dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=0), "seq2seq"),
    "bart": ("BartForConditionalGeneration", SEQ2SEQ, "seq2seq"),
    "marian": ("MarianMTModel", SEQ2SEQ, "seq2seq"),
    "mbart": ("MBartForConditionalGeneration", SEQ2SEQ, "seq2seq"),
    "pegasus": ("PegasusForConditionalGeneration", SEQ2SEQ, "seq2seq"),
    "vit": ("ViTForImageClassification", VISION, "pixels"),
    "deit": ("DeiTForImageClassification", VISION, "pixels"),
    "convnext": ("ConvNextForImageClassification", dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3), "pixels"),
    "resnet": ("ResNetForImageClassification", dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3), "pixels"),
    "swin": ("SwinForImageClassification", dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=3), "pixels"),
    "mobilevit": ("MobileViTForImageClassification", dict(image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=3), "pixels"),
}


def _hf_cases() -> list[Case]:
    return [Case(f"hf.{t}", "transformers", "transformers", kind, 10**5) for t, (_, _, kind) in HF.items()]


def _hf_build(name: str, attempt: dict) -> nn.Module:
    import transformers

    cls, kwargs, _ = HF[name]
    config = transformers.AutoConfig.for_model(name.removesuffix("-seqcls"), **kwargs)
    if hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"  # the math form, which FlopCounterMode counts
    return getattr(transformers, cls)(config)


# building and inputs

BUILDERS = {"torchvision": _tv_build, "timm": _timm_build, "transformers": _hf_build}


def build(case: Case, attempt: dict) -> nn.Module:
    """The model of ``case``, random weights, eval mode, the same values for the same seed."""
    torch.manual_seed(0)
    return BUILDERS[case.library](case.name.split(".", 1)[1], attempt).eval()


def attempts(case: Case) -> list[dict]:
    """Input sizes (and build arguments) to try, smallest first: the first whose forward runs is used."""
    base = case.name.split(".", 1)[1]
    if case.kind == "video":
        return [{"size": 64, "frames": 8}, {"size": 112, "frames": 16}, {"size": 224, "frames": 16}]
    if case.kind in ("detection", "tokens", "seq2seq", "pixels"):
        return [{"size": 96}]
    if case.kind == "flow":
        return [{"size": 128}]
    tries = [{"size": 64}, {"size": 96}, {"size": 128}]
    if case.library == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(base)
        native = tuple(getattr(cfg, "input_size", (3, 224, 224)) or (3, 224, 224))
        tries = [{"size": 64}, {"size": 64, "kwargs": {"img_size": 64}}, {"size": 128, "kwargs": {"img_size": 128}},
                 {"size": native[-1]}]  # fmt: skip
        if getattr(cfg, "fixed_input_size", False):
            tries = tries[1:]
        return tries
    return tries + [{"size": 224}, {"size": 299}]


def example(case: Case, attempt: dict, batch: int = 1) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one forward call."""
    g = torch.Generator().manual_seed(1)
    size = attempt.get("size", 64)
    if case.kind == "detection":
        return ([torch.rand(3, size, size * 4 // 3, generator=g) for _ in range(batch)],), {}
    if case.kind == "video":
        return (torch.randn(batch, 3, attempt["frames"], size, size, generator=g),), {}
    if case.kind == "flow":
        return (torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g)), {}
    if case.kind == "tokens":
        return (torch.randint(3, 100, (batch, 8), generator=g),), {}
    if case.kind == "seq2seq":
        return (torch.randint(3, 100, (batch, 8), generator=g),), {"decoder_input_ids": torch.randint(3, 100, (batch, 5), generator=g)}
    if case.kind == "pixels":
        return (torch.randn(batch, 3, 32, 32, generator=g),), {}
    return (torch.randn(batch, 3, size, size, generator=g),), {}


# the lists

def all_cases(state: Path | None = None) -> list[Case]:
    return _tv_cases() + _timm_cases(state) + _hf_cases()


def by_name(name: str, cases: list[Case] | None = None) -> Case:
    for case in cases if cases is not None else all_cases():
        if case.name == name:
            return case
    raise KeyError(name)


def sample(cases: list[Case], n: int, *, seed: int = 0, max_params: int | None = None) -> list[Case]:
    """``n`` cases spread over the libraries, then over each library's families (round robin, in a seeded order),
    optionally only models up to ``max_params`` parameters (a sample that must stay quick)."""
    rng = random.Random(seed)
    libraries: dict[str, dict[str, list[Case]]] = {}
    for case in sorted(cases, key=lambda c: c.name):
        if max_params is None or (case.params is not None and case.params <= max_params):
            libraries.setdefault(case.library, {}).setdefault(case.family, []).append(case)
    queues: dict[str, list[list[Case]]] = {}
    for library, families in sorted(libraries.items()):
        for members in families.values():
            rng.shuffle(members)
        order = [families[f] for f in sorted(families)]
        rng.shuffle(order)
        queues[library] = order
    out: list[Case] = []
    while len(out) < n and any(queues.values()):
        for library in sorted(queues):
            queue = queues[library]
            if queue and len(out) < n:
                family = queue.pop(0)
                out.append(family.pop())
                if family:
                    queue.append(family)
    return sorted(out, key=lambda c: c.name)


if __name__ == "__main__":  # a quick look: python -m sweep.cases
    cs = all_cases()
    print(len(cs), {lib: sum(c.library == lib for c in cs) for lib in BUILDERS}, file=sys.stdout)
