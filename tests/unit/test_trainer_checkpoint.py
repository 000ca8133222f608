"""Checkpoints: atomic commit, newest loadable wins, corrupt ones skipped, foreign ones refused."""

from __future__ import annotations

import pytest
import torch
from kftune.components.common.errors import InputError
from kftune.components.train_lora.pod import checkpoint

IDENTITY = {"base_model": {"uri": "hf://org/model", "architecture": "LlamaForCausalLM"},
            "lora": {"layer.lora_A.weight": [8, 64]}}


def save(output_dir, step: int, keep: int | None = None, identity=IDENTITY):
    state = {"step": step, "adapter": {"layer.lora_A.weight": torch.full((8, 64), float(step))}}
    return checkpoint.save_checkpoint(output_dir, step, state, dict(identity), keep)


def test_newest_checkpoint_is_loaded(tmp_path):
    for step in (2, 10, 4):
        save(tmp_path, step)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [10, 4, 2]
    state = checkpoint.load_latest(tmp_path, IDENTITY)
    assert state["step"] == 10 and state["adapter"]["layer.lora_A.weight"][0, 0] == 10


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest(tmp_path, IDENTITY) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: (path / "state.pt").write_bytes(b"not a checkpoint"),
        lambda path: (path / "COMPLETE").unlink(),
        lambda path: (path / "meta.json").write_text("{"),
    ],
    ids=["truncated state", "no COMPLETE marker", "broken meta"],
)
def test_damaged_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
    save(tmp_path, 3)
    damage(save(tmp_path, 6))
    state = checkpoint.load_latest(tmp_path, IDENTITY)
    assert state["step"] == 3
    assert "skipping checkpoint" in caplog.text and "step-6" in caplog.text


def test_partial_directory_from_a_crash_is_ignored_and_cleaned(tmp_path):
    save(tmp_path, 3)
    partial = tmp_path / "checkpoints" / ".step-6.partial-abc"
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"half")
    assert checkpoint.load_latest(tmp_path, IDENTITY)["step"] == 3
    save(tmp_path, 9)
    assert not partial.exists()


def test_failed_write_leaves_no_checkpoint(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_checkpoint(tmp_path, 5, {"step": 5, "bad": Unpicklable()}, {}, None)
    assert checkpoint.list_checkpoints(tmp_path) == []
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_only_the_newest_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 3]


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        ({**IDENTITY, "base_model": {"uri": "hf://org/other", "architecture": "X"}},
         "from a different base model"),
        ({**IDENTITY, "lora": {"layer.lora_A.weight": [16, 64]}}, "from a different LoRA shape"),
    ],
    ids=["other base model", "other LoRA rank"],
)
def test_checkpoint_of_another_model_or_lora_shape_is_an_error(tmp_path, other, fragment):
    save(tmp_path, 4)
    with pytest.raises(InputError) as caught:
        checkpoint.load_latest(tmp_path, other)
    assert fragment in str(caught.value) and "use a new output location" in str(caught.value)
