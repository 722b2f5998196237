"""Fuzzing with hypothesis: safetensors header bytes and config.json contents; only TorchsmithError escapes.

Each run happens in a child process under an address-space cap (``HEADROOM`` above its size at
start) with a timeout, so a crash, a hang or a huge allocation fails the test too. A failing
example is printed in the failure (hypothesis adds it to the traceback).
"""

from __future__ import annotations

from reliability_tools import Timer, record, run_child, scale
from reliability_tools import fuzz_configs, fuzz_headers, fuzz_torch_objects

EXAMPLES = scale(300, 10_000)
HEADROOM = 256 * 2**20
TIMEOUT = scale(300, 3000)


def test_fuzzed_safetensors_headers_raise_only_torchsmith_errors(tmp_path):
    with Timer() as timer:
        counts = run_child(fuzz_headers, EXAMPLES, str(tmp_path), HEADROOM, timeout=TIMEOUT)
    assert counts["examples"] >= EXAMPLES * 0.9, counts  # hypothesis ran (about) as many as asked
    record("fuzz safetensors headers", **counts, seconds=timer.seconds)


def test_fuzzed_config_json_raises_only_torchsmith_errors(tmp_path):
    with Timer() as timer:
        counts = run_child(fuzz_configs, EXAMPLES, str(tmp_path), HEADROOM, timeout=TIMEOUT)
    assert counts["examples"] >= EXAMPLES * 0.9, counts
    record("fuzz config.json", **counts, seconds=timer.seconds)


def test_fuzzed_torch_objects_raise_only_torchsmith_errors(tmp_path):
    """Real torch files: tensors of every kind (meta, sparse, quantized, nested, complex, expanded), odd keys, nesting."""
    with Timer() as timer:
        counts = run_child(fuzz_torch_objects, EXAMPLES, str(tmp_path), HEADROOM, timeout=TIMEOUT)
    assert counts["examples"] >= EXAMPLES * 0.9, counts
    record("fuzz torch objects", **counts, seconds=timer.seconds)
