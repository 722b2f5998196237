"""Inspection figures, side by side in one process (make bench).

1. resnet152 at 224x224 on the meta device: torchsmith.summary (shapes, parameters, FLOPs, saved
   activations) against torchinfo.summary (shapes, parameters; no FLOPs), interleaved rounds, median ratio.
2. A 70B-parameter Llama-like model (80 layers, grouped-query attention, sequence 2048) built on meta:
   summary time (target < 2 s), peak RSS growth (target < 1 GiB), FLOPs against the analytic count (within 1%).
3. A 5,000-node diagram: time to write the page, and to open it in headless Chromium (when installed).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchsmith as ts

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


# 1. resnet152 against torchinfo


def bench_resnet152() -> None:
    try:
        import torchinfo
    except ImportError:
        print("torchinfo not installed (pip install -e '.[dev]'); skipping the side-by-side")
        return
    with torch.device("meta"):
        model = ts.create_model("resnet152")
    size = (1, 3, 224, 224)

    def ours() -> None:
        ts.summary(model, size)

    def theirs() -> None:
        torchinfo.summary(model, input_size=size, device="meta", verbose=0)

    ours(), theirs()  # warm up both (meta kernels, imports)
    times: dict[str, list[float]] = {"torchsmith": [], "torchinfo": []}
    for _ in range(ROUNDS):
        for name, fn in (("torchsmith", ours), ("torchinfo", theirs)):
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["torchsmith"], times["torchinfo"])]
    s = ts.summary(model, size)
    print(f"resnet152 summary on meta, {ROUNDS} interleaved rounds (median): "
          f"torchsmith {statistics.median(times['torchsmith']):.3f} s (incl. {s.total_flops / 1e9:.2f} GFLOPs, "
          f"saved activations), torchinfo {statistics.median(times['torchinfo']):.3f} s (no FLOPs); "
          f"ratio {statistics.median(ratios):.2f}x (target <= 1.5x)")


# 2. a 70B Llama-like model on meta


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate(x, cos, sin):  # rotary position embedding on (B, H, T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab=128_256, dim=8192, layers=80, heads=64, kv_heads=8, hidden=28_672, max_seq=2048):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, heads, kv_heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        hd = dim // heads
        freqs = 1.0 / (500_000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(max_seq).float(), freqs)
        self.register_buffer("cos", torch.cat((angles, angles), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((angles, angles), -1).sin(), persistent=False)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.embed_tokens(ids)  # (B, T, D)
        cos, sin = self.cos[:T], self.sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def analytic_flops(B=1, T=2048, vocab=128_256, dim=8192, layers=80, heads=64, kv_heads=8, hidden=28_672) -> int:
    """2 FLOPs per multiply-accumulate of every matmul; attention as FlopCounterMode counts it (no causal saving)."""
    kv = kv_heads * (dim // heads)
    projections = 2 * B * T * dim * (dim + kv + kv + dim)
    mlp = 3 * 2 * B * T * dim * hidden
    attention = 2 * 2 * B * T * T * dim  # q @ k^T and p @ v over all query heads
    return layers * (projections + mlp + attention) + 2 * B * T * dim * vocab


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)


def bench_llama70b() -> None:
    with torch.device("meta"):
        model = Llama()
    params = sum(p.numel() for p in model.parameters())
    ts.summary(model, (1, 16), dtype=torch.long)  # warm up the meta kernels on a short sequence
    gc.collect()
    before = rss_peak()
    start = time.perf_counter()
    s = ts.summary(model, (1, 2048), dtype=torch.long, depth=2)
    elapsed = time.perf_counter() - start
    growth = rss_peak() - before
    expected = analytic_flops()
    error = abs(s.total_flops - expected) / expected
    print(f"Llama-like 70B ({params / 1e9:.1f} B parameters, 80 layers, GQA 64/8, seq 2048) on meta: "
          f"summary {elapsed:.2f} s (target < 2 s), peak RSS growth {growth / 2**20:.0f} MiB (target < 1024 MiB), "
          f"FLOPs {s.total_flops / 1e12:.2f} TFLOPs vs analytic {expected / 1e12:.2f} TFLOPs "
          f"(error {100 * error:.3f}%, target < 1%)")


# 3. a 5,000-node diagram


def bench_diagram() -> None:
    model = nn.Sequential(*[nn.Sequential(*[nn.Linear(4, 4) if (i + s) % 2 else nn.Tanh() for i in range(100)])
                            for s in range(50)])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = ts.diagram(model, (2, 4), path=Path(tmp) / "wide.html")
        written = time.perf_counter() - start
        line = f"5,000-node diagram: written in {written:.2f} s ({path.stat().st_size / 2**20:.1f} MiB)"
        if not Path("/usr/bin/chromium").exists():
            print(line + "; /usr/bin/chromium not installed, page not opened")
            return
        from playwright.sync_api import sync_playwright

        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page()
            opens = []
            for _ in range(3):
                start = time.perf_counter()
                page.goto(path.as_uri())
                page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)  # no eval: the page's CSP
                opens.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.click("g.node[data-path='0']", position={"x": 12, "y": 10})
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=120_000)  # no eval: the page's CSP
            expand = time.perf_counter() - start
            browser.close()
        print(line + f"; opens in headless Chromium in {statistics.median(opens):.2f} s (median of 3), "
              f"expanding a 100-node module {expand:.2f} s")


def main() -> int:
    torch.set_num_threads(max(1, math.floor((os.cpu_count() or 2) / 2)))
    bench_resnet152()
    bench_llama70b()
    bench_diagram()
    return 0


if __name__ == "__main__":
    sys.exit(main())
