"""Concurrency: several processes saving to one path while another loads it in a loop."""

from __future__ import annotations

import pytest
from reliability_tools import (
    Timer,
    check_generation,
    context,
    generation_weights,
    load_until,
    record,
    save_n,
    scale,
    start_child,
    temporaries,
)

import torchsmith as ts

WRITERS, SAVES = 4, 15
NBYTES = scale(16, 64) * 2**20


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_concurrent_saves_never_show_a_reader_a_partial_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    ts.save_weights(generation_weights(0, NBYTES), path)
    ctx = context()
    start, stop = ctx.Event(), ctx.Event()
    reader = start_child(load_until, str(path), stop, 100_000)
    writers = [start_child(save_n, str(path), NBYTES, (w + 1) * 1000, SAVES, start) for w in range(WRITERS)]
    try:
        with Timer() as timer:
            start.set()
            saved = sum(w.result(timeout=300) for w in writers)
        stop.set()
        seen = reader.result(timeout=120)
    finally:
        stop.set()
        for child in (reader, *writers):
            child.stop()
    assert saved == WRITERS * SAVES
    assert seen["failed"] == 0, seen["failures"]
    assert seen["loads"] > 0
    final = check_generation(path)
    assert final % 1000 == SAVES - 1  # the last save of one of the writers
    assert temporaries(path) == []
    record(
        f"concurrency {suffix}",
        writers=WRITERS,
        saves_each=SAVES,
        file_mib=NBYTES // 2**20,
        loads=seen["loads"],
        generations_seen=seen["generations"],
        failed_loads=seen["failed"],
        seconds=timer.seconds,
    )
