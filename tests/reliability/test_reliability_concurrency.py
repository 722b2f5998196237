"""Concurrency: several processes saving to one path while another loads it in a loop."""

from __future__ import annotations

import pytest
import torch
from reliability_tools import (
    Timer,
    check_generation,
    context,
    generation_weights,
    load_models_until,
    load_until,
    record,
    save_model_until,
    save_n,
    scale,
    start_child,
    temporaries,
)

import torchsmith as ts

WRITERS, SAVES = 4, 15
NBYTES = scale(16, 64) * 2**20
MODEL_LOADS = scale(300, 2000)


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


def test_load_model_during_save_model_sees_one_generation(tmp_path):
    """save_model renames the weights, then config.json; a load in between reads the pair again."""
    directory = tmp_path / "m"
    ctx = context()
    stop, reader_stop = ctx.Event(), ctx.Event()  # the reader stops by count; kept referenced for the child
    first = ts.create_model("ckpt_tiny", width=64, scale=0.0)
    with torch.no_grad():
        for t in first.state_dict().values():
            t.zero_()  # generation 0: scale and weights 0
    ts.save_model(first, directory)
    writers = [start_child(save_model_until, str(directory), (w + 1) * 100_000, stop) for w in range(2)]
    reader = start_child(load_models_until, str(directory), reader_stop, MODEL_LOADS)
    try:
        with Timer() as timer:
            seen = reader.result(timeout=300)
        stop.set()
        saved = sum(w.result(timeout=120) for w in writers)
    finally:
        stop.set()
        for child in (reader, *writers):
            child.stop()
    assert seen["failed"] == 0, seen["failures"]
    assert seen["loads"] == MODEL_LOADS and seen["generations"] > 1 and saved > 0
    record("concurrency save_model", writers=2, saves=saved, loads=seen["loads"],
           generations_seen=seen["generations"], failed_loads=seen["failed"], seconds=timer.seconds)
