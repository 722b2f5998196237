"""What several test areas share: paths, reference weights and inputs, and the checks that a model is unchanged.

One definition of each; test files import them (``from helpers import snapshot``). Model fixtures live in
their own modules beside this one (``ckpt_models``, ``inspect_models``, ``reference_models``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# paths

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"
GOLDEN = TESTS / "golden"
SPECS = ROOT / "examples" / "specs"
DOCS = ROOT / "docs"
# the browser the Playwright tests drive: Debian's Chromium, or the one `make test CHROMIUM=...` names
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


# the FLOP reference


@contextmanager
def flop_reference() -> Iterator[FlopCounterMode]:
    """``FlopCounterMode`` with the model's work run as the products it has formulas for: attention in its math
    form, recurrent layers without oneDNN's fused kernel (``mkldnn_rnn_layer``; timm's sequencer2d_s counted 0.65
    G without its LSTMs). Run the forward with grad enabled: nn.MultiheadAttention's fused inference path has no
    formula either. Only the enabled flag of oneDNN changes (its TF32 and precision settings are left alone)."""
    with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(
        enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None
    ), FlopCounterMode(display=False) as counter:
        yield counter


# tensors as bytes and copies


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t`` (any dtype, empty tensors included), to compare bit for bit."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def snapshot(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, bytes]:
    """Every state-dict tensor's raw bytes, to prove a model (or a state dict) is byte-for-byte unchanged."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: bits(v) for k, v in state.items()}


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model.state_dict()`` (devices and dtypes kept)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    """``model``'s state equals ``saved``: the same keys, devices, dtypes and values."""
    now = model.state_dict()
    return now.keys() == saved.keys() and all(
        now[k].device == v.device and now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in saved.items()
    )


# the model as it was


def fingerprint(model: nn.Module) -> list:
    """Everything a probe or a failed operation must leave as it was, module by module: class, identity, mode,
    attributes (tensors by device and shape), hook counts, parameters' grad flags and devices, buffers' devices."""
    out = []
    for name, m in model.named_modules():
        attrs = {k: (v.device, tuple(v.shape)) if isinstance(v, torch.Tensor) else
                 [(t.device, tuple(t.shape)) for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else
                 type(v).__name__
                 for k, v in vars(m).items() if not k.startswith("_")}  # fmt: skip
        out.append((name, type(m), id(m), m.training, attrs, len(m._forward_hooks), len(m._forward_pre_hooks),
                    {k: (p.requires_grad, p.device) for k, p in m.named_parameters(recurse=False)},
                    {k: b.device for k, b in m.named_buffers(recurse=False)}))  # fmt: skip
    return out


def probe_snapshot(model: nn.Module) -> dict:
    """Everything a probe must leave as it was: tensors (identity, storage, device, dtype, grad flag, and
    values: version counter, storage address, checksum), modes, attributes, hooks, classes."""
    state = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        checksum = None if t.is_meta else float(t.detach().sum(dtype=torch.float64)) if t.numel() else 0.0
        state[name] = (t.device, t.dtype, t.requires_grad, (t._version, t.untyped_storage().data_ptr(), checksum), id(t))
    modules = {}
    for name, m in model.named_modules(remove_duplicate=False):
        attrs = {}
        for k, v in vars(m).items():
            attrs[k] = (id(v), tuple((kk, id(vv)) for kk, vv in v.items()) if isinstance(v, dict) else None)
        modules[name] = (type(m), m.training, attrs)
    return {"state": state, "modules": modules}


def probe_differences(a: dict, b: dict) -> list[str]:
    """The differences between two :func:`probe_snapshot` results (empty when the model is untouched)."""
    problems = []
    if a["state"].keys() != b["state"].keys():
        problems.append(f"tensor names differ: {set(a['state']) ^ set(b['state'])}")
    for k in a["state"].keys() & b["state"].keys():
        (d1, t1, g1, v1, i1), (d2, t2, g2, v2, i2) = a["state"][k], b["state"][k]
        if (d1, t1, g1, i1) != (d2, t2, g2, i2):
            problems.append(f"{k}: device/dtype/grad/identity changed")
        elif v1 != v2:
            problems.append(f"{k}: written in place or storage replaced")
    if a["modules"] != b["modules"]:
        for k in a["modules"]:
            if a["modules"][k] != b["modules"].get(k):
                problems.append(f"module {k!r}: class, mode, attributes or hooks changed")
    return problems


# reference weights and inputs


def formula_weights_(model: nn.Module) -> nn.Module:
    """Fill a model with the fixture's implementation-independent formula weights (tests/data/README in
    shared/fixtures: sorted keys, ``sin(arange * 0.7 + i)`` scaled per kind of tensor)."""
    sd = model.state_dict()
    new = {}
    for i, key in enumerate(sorted(sd)):
        t = sd[key]
        if not t.is_floating_point():
            new[key] = t
            continue
        base = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + i)
        if key.endswith("running_var"):
            v = 1 + 0.5 * base**2
        elif t.dim() > 1:
            v = base * math.sqrt(2 / math.prod(t.shape[1:]))
        elif key.endswith("weight"):
            v = 1 + 0.1 * base
        else:
            v = 0.1 * base
        new[key] = v.reshape(t.shape).to(t.dtype)
    model.load_state_dict(new)
    return model


def formula_input() -> torch.Tensor:
    """The fixture's formula input, ``sin(arange(N) * 0.01)`` as (1, 3, 224, 224)."""
    n = 3 * 224 * 224
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.01).reshape(1, 3, 224, 224).float()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between ``a`` and the reference ``b``, relative to ``max|b|``."""
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def randomise_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding and freezing are really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def state_dict_signature(model: nn.Module) -> list[list]:
    """``[key, shape, dtype]`` for every state-dict entry, in order (the fixture's ``state_dict`` field)."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
