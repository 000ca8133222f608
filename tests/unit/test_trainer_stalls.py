"""HostStalls: the trainer's account of garbage-collection time and torch.compile runs."""

from __future__ import annotations

import gc

import torch
from kftune.components.train_lora.pod.trainer import HostStalls


def test_garbage_collection_time_is_counted_until_closed() -> None:
    stalls = HostStalls()
    try:
        garbage = []
        for _ in range(20_000):  # reference cycles only the collector frees
            node: dict = {}
            node["self"] = node
            garbage.append(node)
        del garbage, node
        before, _ = stalls.snapshot()
        gc.collect()
        after, _ = stalls.snapshot()
        assert after > before
    finally:
        stalls.close()
    gc.collect()
    assert stalls.snapshot()[0] == after
    assert stalls._on_gc not in gc.callbacks


def test_compilations_count_recompiles_for_new_shapes() -> None:
    stalls = HostStalls()
    try:
        _, before = stalls.snapshot()
        compiled = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
        compiled(torch.ones(3))
        _, once = stalls.snapshot()
        compiled(torch.ones(3))  # the same shape: no new compilation
        assert stalls.snapshot()[1] == once
        compiled(torch.ones(5, 2))  # a new shape under dynamic=False: compiled again
        _, again = stalls.snapshot()
    finally:
        stalls.close()
    assert once == before + 1 and again == once + 1


def test_freeze_heap_collects_garbage_then_hides_survivors_from_the_collector(monkeypatch) -> None:
    monkeypatch.delenv("KFTUNE_GC_FREEZE", raising=False)
    survivors = [[index] for index in range(50_000)]  # long-lived, like a loaded model's objects
    garbage: dict = {}
    garbage["self"] = garbage  # a cycle only the collector frees
    probe = _Probe()
    garbage["probe"] = probe
    del garbage, probe
    try:
        frozen = HostStalls.freeze_heap()
        assert _Probe.freed  # collected first, so garbage is not frozen for good
        assert frozen >= len(survivors)
        tracked = {id(obj) for obj in gc.get_objects()}
        assert id(survivors[0]) not in tracked and id(survivors) not in tracked
    finally:
        gc.unfreeze()
    assert id(survivors[0]) in {id(obj) for obj in gc.get_objects()}


def test_freeze_heap_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("KFTUNE_GC_FREEZE", "0")
    before = gc.get_freeze_count()
    assert HostStalls.freeze_heap() == before == gc.get_freeze_count()


class _Probe:
    freed = False

    def __del__(self) -> None:
        type(self).freed = True
