"""Trainer data: tokenization masks, padding-free packing, the job-wide example order."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random

import pytest
import torch
from kftune.components.common import tokenization
from kftune.components.common.demo import CHAT_TEMPLATE
from kftune.components.common.errors import InputError
from kftune.components.train_lora.pod import data, kernels
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = "hello world the cat sat on mat what is two plus four six answer".split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
PLAIN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("{% generation %}", "").replace(
    "{% endgeneration %}", "")


def word_tokenizer(chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS + ["\n"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>")
    tokenizer.chat_template = chat_template
    return tokenizer


def decode_targets(tokenizer, example: data.Example) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(label) for label in example.labels if label != -100]


# -- tokenization ----------------------------------------------------------------------------------


def test_text_learns_every_next_token_and_ends_with_eos() -> None:
    tokenizer = word_tokenizer()
    (example,) = tokenization.tokenize_rows("causal-lm", [{"text": "the cat sat"}], tokenizer, 64)
    assert tokenizer.convert_ids_to_tokens(list(example.input_ids)) == ["the", "cat", "sat",
                                                                       "<eos>"]
    assert decode_targets(tokenizer, example) == ["cat", "sat", "<eos>"]
    assert example.labels[-1] == -100


def test_prompt_completion_learns_the_completion_only() -> None:
    tokenizer = word_tokenizer()
    rows = [{"prompt": "what is two plus four", "completion": "six"}]
    (example,) = tokenization.tokenize_rows("causal-lm", rows, tokenizer, 64)
    assert decode_targets(tokenizer, example) == ["six", "<eos>"]


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE],
                         ids=["generation markers", "no generation markers"])
def test_chat_learns_assistant_turns_only(template: str) -> None:
    tokenizer = word_tokenizer(template)
    messages = [
        {"role": "user", "content": "what is two plus four"},
        {"role": "assistant", "content": "six"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello world"},
    ]
    (example,) = tokenization.tokenize_rows("causal-lm", [{"messages": messages}], tokenizer, 128)
    targets = decode_targets(tokenizer, example)
    assert [t for t in targets if t in WORDS] == ["six", "hello", "world"]
    assert "what" not in targets and "<|user|>" not in targets


def test_truncation_to_max_seq_length() -> None:
    tokenizer = word_tokenizer()
    (example,) = tokenization.tokenize_rows("causal-lm", [{"text": "the cat sat on the mat"}],
                                    tokenizer, 3)
    assert len(example.input_ids) == 3 and len(example.labels) == 3


def test_messages_need_a_chat_template() -> None:
    tokenizer = word_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(InputError, match="has a messages column but the model's tokenizer has no"):
        tokenization.tokenize_rows("causal-lm", [{"messages": [{"role": "user", "content": "hi"}]}],
                           tokenizer, 8)


@pytest.mark.parametrize(
    ("task", "columns", "num_labels", "fragment"),
    [
        ("sequence-classification", ["text"], 2, "missing ['label']"),
        ("sequence-classification", ["text", "label"], None, "must give num_labels"),
        ("causal-lm", ["prompt"], None, "got columns ['prompt']"),
    ],
    ids=["no label", "no num_labels", "prompt without completion"],
)
def test_columns_that_do_not_fit_the_task(task, columns, num_labels, fragment) -> None:
    problems = tokenization.check_columns(task, columns, num_labels)
    assert any(fragment in problem for problem in problems), problems


# -- packing ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    # Larger weights than the init so that a mask mistake changes the logits visibly.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(5)
    return model


def random_examples(lengths) -> list[data.Example]:
    generator = torch.Generator().manual_seed(1)
    examples = []
    for index, length in enumerate(lengths):
        ids = torch.randint(3, 64, (length,), generator=generator).tolist()
        examples.append(data.Example(index, tuple(ids),
                                     tokenization.aligned_labels(ids, [True] * length)))
    return examples


def test_packed_forward_equals_separate_forwards(tiny_llama) -> None:
    examples = random_examples([5, 9, 3])
    packed = data.collate_causal_lm(examples, pad_id=0, packing=True)
    assert packed["input_ids"].shape == (1, 17) and "attention_mask" not in packed
    with torch.no_grad():
        packed_logits = tiny_llama(input_ids=packed["input_ids"],
                                   position_ids=packed["position_ids"], use_cache=False).logits[0]
        separate = torch.cat([
            tiny_llama(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
            for example in examples
        ])
        contiguous = tiny_llama(input_ids=packed["input_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(packed_logits, separate, atol=1e-4, rtol=1e-4)
    # Without restarting positions the examples would attend to each other.
    assert not torch.allclose(contiguous, separate, atol=1e-2)


def test_packed_and_padded_losses_agree(tiny_llama) -> None:
    examples = random_examples([4, 11, 7])
    with torch.no_grad():
        packed = kernels.causal_lm_loss(tiny_llama,
                                        data.collate_causal_lm(examples, 0, packing=True))
        padded = kernels.causal_lm_loss(tiny_llama,
                                        data.collate_causal_lm(examples, 0, packing=False))
    torch.testing.assert_close(packed[0], padded[0], atol=1e-3, rtol=1e-4)
    assert packed[1].item() == padded[1].item() == 3 + 10 + 6


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_padding_to_a_multiple_changes_no_loss(tiny_llama, packing: bool) -> None:
    examples = random_examples([4, 11, 7])  # 22 tokens
    plain = data.collate_causal_lm(examples, 0, packing=packing)
    rounded = data.collate_causal_lm(examples, 0, packing=packing, pad_to_multiple_of=16)
    assert rounded["input_ids"].shape[-1] == (32 if packing else 16)
    if packing:
        # The padding is a segment of its own: positions restart, a boundary closes it.
        assert rounded["position_ids"][0, 22:].tolist() == list(range(10))
        assert rounded["cu_seq_lens"].tolist() == [0, 4, 15, 22, 32]
        assert rounded["max_length"] == 11
    with torch.no_grad():
        loss, count = kernels.causal_lm_loss(tiny_llama, plain)
        rounded_loss, rounded_count = kernels.causal_lm_loss(tiny_llama, rounded)
    torch.testing.assert_close(rounded_loss, loss, atol=1e-3, rtol=1e-4)
    assert rounded_count.item() == count.item() == 3 + 10 + 6


def test_padding_to_a_multiple_keeps_whole_multiples_and_empty_batches() -> None:
    whole = data.collate_causal_lm(random_examples([8, 8]), 0, packing=True, pad_to_multiple_of=16)
    assert whole["cu_seq_lens"].tolist() == [0, 8, 16]  # no empty padding segment
    empty = data.collate_causal_lm([], 0, packing=True, pad_to_multiple_of=16)
    assert empty["input_ids"].shape == (1, 16) and (empty["labels"] == -100).all()
    classification = data.collate_classification(
        [data.Example(0, (5, 6, 7), 1)], pad_id=0, pad_to_multiple_of=8)
    assert classification["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]


def test_empty_micro_batch_does_not_make_compiled_layers_recompile() -> None:
    import torch._dynamo.utils

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    for layer in model.model.layers:  # as kernels.prepare_model does on GPU
        layer.compile(backend="eager", dynamic=True)
    for lengths in ([5, 9, 3], [12, 30]):
        loss, _ = kernels.causal_lm_loss(model, data.collate_causal_lm(random_examples(lengths), 0,
                                                                       packing=True))
        loss.backward()
    compiled = torch._dynamo.utils.counters["frames"]["total"]
    loss, count = kernels.causal_lm_loss(model, data.collate_causal_lm([], 0, packing=True))
    loss.backward()
    # A 1-token dummy row would be specialized on (size 1) and compile every layer again.
    assert torch._dynamo.utils.counters["frames"]["total"] == compiled
    assert loss.item() == 0 and count.item() == 0


def test_empty_micro_batch_contributes_nothing(tiny_llama) -> None:
    loss_sum, count = kernels.causal_lm_loss(tiny_llama, data.collate_causal_lm([], 0, True))
    assert loss_sum.item() == 0 and count.item() == 0


def test_classification_batch_is_padded() -> None:
    examples = [data.Example(0, (5, 6, 7), 1), data.Example(1, (8,), 0)]
    batch = data.collate_classification(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


# -- the job-wide order ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    examples: int
    world: int
    per_device: int
    accumulation: int


LAYOUTS = [
    Layout("one process", 10, 1, 3, 1),
    Layout("2 ranks, even", 16, 2, 4, 2),
    Layout("4 ranks, short last step", 23, 4, 2, 2),
    Layout("2 nodes x 2, accumulation 3", 50, 4, 3, 3),
    Layout("more slots than examples in last step", 9, 4, 2, 1),
]


def epoch_of_every_rank(layout: Layout, epochs: int = 2) -> dict[int, list[int]]:
    order = data.GlobalOrder(layout.examples, seed=3)
    global_batch = layout.world * layout.per_device * layout.accumulation
    seen: dict[int, list[int]] = collections.defaultdict(list)
    steps = order.steps(data.DataPosition(), global_batch)
    for _ in range(epochs * order.steps_per_epoch(global_batch)):
        step, position = next(steps)
        for rank in range(layout.world):
            micro = data.rank_micro_batches(step, rank, layout.world, layout.per_device,
                                            layout.accumulation)
            assert len(micro) == layout.accumulation
            assert all(len(batch) <= layout.per_device for batch in micro)
            seen[position.epoch if position.consumed else position.epoch - 1].extend(
                itertools.chain.from_iterable(micro))
    return seen


@pytest.mark.parametrize("layout", LAYOUTS, ids=[layout.name for layout in LAYOUTS])
def test_every_example_once_per_epoch_across_all_ranks(layout: Layout) -> None:
    seen = epoch_of_every_rank(layout)
    assert sorted(seen) == [0, 1]
    for indices in seen.values():
        assert sorted(indices) == list(range(layout.examples))


DEAL_LAYOUTS = [
    Layout("1 rank", 12, 1, 12, 1),
    Layout("4 ranks", 64, 4, 16, 1),
    Layout("2 ranks x 2 micro-batches", 40, 2, 10, 2),
    Layout("short last step", 13, 4, 4, 1),
]


@pytest.mark.parametrize("layout", DEAL_LAYOUTS, ids=[layout.name for layout in DEAL_LAYOUTS])
def test_token_balanced_dealing_is_a_balanced_partition(layout: Layout) -> None:
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(32, 2048, (layout.examples,), generator=generator).tolist()
    step = list(range(layout.examples))
    slots = [batch for rank in range(layout.world)
             for batch in data.rank_micro_batches(step, rank, layout.world, layout.per_device,
                                                  layout.accumulation, lengths)]
    assert sorted(index for batch in slots for index in batch) == step
    assert all(len(batch) <= layout.per_device for batch in slots)
    loads = [sum(lengths[index] for index in batch) for batch in slots]
    if layout.examples >= layout.world * layout.accumulation * layout.per_device:
        assert max(loads) - min(loads) <= max(lengths), loads


def test_order_is_shuffled_per_epoch_and_deterministic() -> None:
    order = data.GlobalOrder(100, seed=1)
    assert order.epoch_order(0) == data.GlobalOrder(100, seed=1).epoch_order(0)
    assert order.epoch_order(0) != order.epoch_order(1)
    assert data.GlobalOrder(5, seed=1, shuffle=False).epoch_order(3) == [0, 1, 2, 3, 4]


def test_resume_from_a_position_continues_the_same_order_even_with_another_world_size() -> None:
    order = data.GlobalOrder(30, seed=5)
    first = order.steps(data.DataPosition(), 8)
    taken = [next(first) for _ in range(2)]
    position = taken[-1][1]
    assert position == data.DataPosition(0, 16)
    # Resumed with a global batch of 6 (another world size): the rest of epoch 0, then epoch 1.
    resumed = order.steps(position, 6)
    rest = []
    while True:
        step, after = next(resumed)
        rest.extend(step)
        if after.consumed == 30:
            break
    done = [index for step, _ in taken for index in step]
    assert sorted(done + rest) == list(range(30))
    assert next(resumed)[1] == data.DataPosition(1, 6)


# -- token budgets ---------------------------------------------------------------------------------


def lognormal_lengths(count: int, seed: int, longest: int) -> list[int]:
    """Instruction-data-like lengths: log-normal around 350 tokens, clipped to 16..longest."""
    rng = random.Random(seed)
    return [min(longest, max(16, int(rng.lognormvariate(5.85, 0.75)))) for _ in range(count)]


@pytest.mark.parametrize(("world", "accumulation", "tokens"), [(1, 1, 4096), (2, 2, 4096),
                                                               (4, 1, 8192), (3, 2, 2048)])
def test_token_steps_see_every_example_once_and_fill_no_slot_past_the_budget(
        world, accumulation, tokens) -> None:
    lengths = lognormal_lengths(500, seed=world, longest=2048)
    budget = data.TokenBudget(lengths, world * accumulation, tokens)
    order = data.GlobalOrder(len(lengths), seed=11)
    steps = order.token_steps(data.DataPosition(), budget)
    seen: dict[int, list[int]] = collections.defaultdict(list)
    total = order.total_token_steps(2, budget)
    for _ in range(total):
        step, position = next(steps)
        epoch = position.epoch if position.consumed else position.epoch - 1
        for rank in range(world):
            micro = data.rank_micro_batches(step, rank, world, 1, accumulation, budget=budget)
            assert len(micro) == accumulation
            for batch in micro:
                assert sum(lengths[index] for index in batch) <= tokens
                seen[epoch].extend(batch)
    assert sorted(seen) == [0, 1]
    for indices in seen.values():
        assert sorted(indices) == list(range(len(lengths)))
    assert position == data.DataPosition(1, len(lengths))  # total_token_steps counted exactly


def test_token_steps_are_full_and_balanced() -> None:
    lengths = lognormal_lengths(4000, seed=0, longest=2048)
    budget = data.TokenBudget(lengths, 4, 16384)
    steps = data.GlobalOrder(len(lengths), seed=1).token_steps(data.DataPosition(), budget)
    for _ in range(20):
        step, _ = next(steps)
        loads = [sum(lengths[i] for i in slot) for slot in budget.deal(step)]
        # Every slot is nearly full (the next example did not fit in the emptiest one) and
        # longest-first dealing keeps the ranks within a few percent of each other.
        assert min(loads) > 16384 - 2048, loads
        assert max(loads) - min(loads) < 0.05 * 16384, loads


def test_an_example_longer_than_the_budget_trains_alone() -> None:
    budget = data.TokenBudget([100, 5000, 100, 100], 2, 1000)
    steps = data.GlobalOrder(4, seed=0, shuffle=False).token_steps(data.DataPosition(), budget)
    assert [next(steps)[0] for _ in range(3)] == [[0], [1], [2, 3]]


def test_token_steps_resume_from_a_position() -> None:
    lengths = lognormal_lengths(300, seed=4, longest=1024)
    order = data.GlobalOrder(len(lengths), seed=2)
    budget = data.TokenBudget(lengths, 2, 4096)
    first = order.token_steps(data.DataPosition(), budget)
    taken = [next(first) for _ in range(5)]
    again = order.token_steps(taken[2][1], budget)
    assert [next(again) for _ in range(2)] == taken[3:]


def test_fractional_epochs_round_the_last_epoch_up() -> None:
    lengths = [100] * 40
    budget = data.TokenBudget(lengths, 2, 1000)  # 20 examples a step: 2 steps an epoch
    order = data.GlobalOrder(len(lengths), seed=0)
    assert order.total_token_steps(1, budget) == 2
    assert order.total_token_steps(1.25, budget) == 3
    assert order.total_token_steps(0.1, budget) == 1
