"""The training loop on its own: where it measures the validation loss."""

import json

import pytest

from conftest import ticket_lines
from tunewright.contract import Hyperparameters


def test_validation_runs_at_every_epoch_end_and_at_a_last_step_inside_an_epoch(tiny_model, tiny_tokenizer):
    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    model = load_model(tiny_model)
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(8)]
    # 8 examples in batches of 4: two steps an epoch; max_steps=5 stops halfway through the third epoch.
    hp = Hyperparameters(epochs=4, batch_size=4, learning_rate=1e-3, max_seq_length=256, seed=0, max_steps=5)
    steps, validations = [], []

    def validate(step: int, epoch: float) -> None:
        validations.append((step, epoch))
        model.eval()  # as mean_loss leaves it: the loop must put it back in training mode

    training.train(model, examples, hp, tiny_tokenizer.pad_token_id, lambda p: steps.append(model.training), validate)
    assert validations == [(2, 1.0), (4, 2.0), (5, pytest.approx(2.5))]
    assert all(steps), "every step trained in training mode"


def test_accumulated_micro_batches_give_the_whole_batch_gradient(tiny_model, tiny_tokenizer):
    """Micro-batches of 3, 3 and 2 examples (with different numbers of trained tokens) add up
    to the gradient and the loss of one pass over all 8."""
    import torch

    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    model = load_model(tiny_model)
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(8)]
    assert len({len(e.input_ids) for e in examples}) > 1  # the passes really differ in size

    def gradient(micro_batch_size: int) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss, tokens = training.accumulate_gradients(
            model, examples, micro_batch_size, tiny_tokenizer.pad_token_id, torch.device("cpu")
        )
        assert tokens == sum(len(e.input_ids) for e in examples)
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole_loss, whole = gradient(0)
    split_loss, split = gradient(3)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert torch.allclose(split, whole, rtol=1e-4, atol=1e-7)
    assert float((split - whole).abs().max()) < 1e-4 * float(whole.abs().max())


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("layout", ["packed", "left-padded", "right-padded"])
def test_a_batch_in_any_layout_has_the_loss_and_gradient_of_its_examples_run_one_by_one(
    layout, attention, tiny_model, tiny_tokenizer
):
    """No example sees another: packed into one row, or padded on either side, with either
    attention the trainer uses on a CPU, the batch's summed loss and its gradient are the
    sums over the examples run alone."""
    import torch

    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    model = load_model(tiny_model)
    model.config._attn_implementation = attention  # as training.attention_for sets it
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(6)]
    assert len({len(e.input_ids) for e in examples}) > 1

    def loss_and_gradient(batch: list) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        inputs, targets = training.batch_inputs(batch, tiny_tokenizer.pad_token_id, layout)
        loss = training.summed_loss(model, inputs, targets)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    batch_loss, batch_grad = loss_and_gradient(examples)
    alone = [loss_and_gradient([example]) for example in examples]
    assert batch_loss == pytest.approx(sum(loss for loss, _ in alone), rel=1e-5)
    summed = torch.stack([grad for _, grad in alone]).sum(0)
    assert torch.isfinite(batch_grad).all()
    assert float((batch_grad - summed).abs().max()) < 1e-4 * float(summed.abs().max())


def test_packing_without_restarting_positions_would_let_examples_see_each_other(tiny_model, tiny_tokenizer):
    """The control for the test above: the same packed row with one running position count
    is one long sequence to the model, and its loss is not the examples' own."""
    import torch

    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    model = load_model(tiny_model).eval()
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(3)]
    inputs, targets = training.batch_inputs(examples, tiny_tokenizer.pad_token_id, "packed")
    with torch.no_grad():
        packed = float(training.summed_loss(model, inputs, targets))
        running = dict(inputs, position_ids=torch.arange(inputs["input_ids"].shape[1]).unsqueeze(0))
        leaked = float(training.summed_loss(model, running, targets))
    assert leaked != pytest.approx(packed, rel=1e-3)


def test_left_padding_computes_logits_only_from_the_first_trained_column(tiny_model, tiny_tokenizer):
    from tunewright.core.chat import IGNORE_INDEX, tokenize_for_training
    from tunewright.trainer import training

    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(4)]
    inputs, targets = training.batch_inputs(examples, tiny_tokenizer.pad_token_id, "left-padded")
    width = inputs["input_ids"].shape[1]
    answer = max(
        len(e.input_ids) - next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX) for e in examples
    )
    assert inputs["logits_to_keep"] == answer + 1 < width
    assert targets.shape == (4, answer + 1)
    assert int((targets != IGNORE_INDEX).sum()) == sum(e.trained_tokens for e in examples)


def test_frozen_linears_held_in_bfloat16_and_uncast_adapter_inputs_give_what_autocast_gives(tiny_model, tiny_tokenizer):
    import peft
    import torch

    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    model = peft.get_peft_model(
        load_model(tiny_model), peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(4)]
    inputs, targets = training.batch_inputs(examples, tiny_tokenizer.pad_token_id, "left-padded")
    before = {name: p for name, p in model.named_parameters()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = training.summed_loss(model, inputs, targets)
        with training.frozen_linears_in(model, torch.bfloat16), training.adapter_inputs_uncast(model, True):
            held = [p.dtype for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
            swapped = training.summed_loss(model, inputs, targets)
    assert set(held) == {torch.bfloat16}
    assert float(swapped) == float(plain)
    after = dict(model.named_parameters())
    assert all(after[name] is p for name, p in before.items()), "the float32 weights are back, the same objects"
    assert all(p.dtype == torch.float32 for p in after.values())


def test_the_worker_keeps_freed_memory_for_reuse():
    """In a process of its own: the setting lasts as long as the process."""
    import subprocess
    import sys

    code = "from tunewright.trainer import training; raise SystemExit(0 if training.keep_freed_memory() else 1)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0  # glibc, as here


def test_training_in_bfloat16_learns_as_float32_does(tiny_model, tiny_tokenizer):
    """Only the passes run in bfloat16: the loss follows the float32 run step by step. (With
    the optimizer's step under autocast as well, the adapters stopped learning: the loss
    stayed where it started while the float32 run's fell.)"""
    import torch

    from tunewright.core.chat import tokenize_for_training
    from tunewright.methods import detect_runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods
    from tunewright.trainer import training

    method = get_method(load_methods(), "lora")
    config = build_config(method, {})
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(32)]
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=1e-3)

    def losses(autocast) -> list[float]:
        torch.manual_seed(0)
        model = method.prepare(method.load_base(tiny_model, config, detect_runtime()), config)
        seen: list[float] = []
        training.train(
            model, examples, hp, tiny_tokenizer.pad_token_id, lambda p: seen.append(p.loss), autocast=autocast
        )
        return seen

    full, half = losses(None), losses(torch.bfloat16)
    assert full[-1] < full[0] - 0.2, full  # the float32 run learns
    assert half == pytest.approx(full, abs=0.05), (half, full)


def test_gradient_checkpointing_recomputes_with_the_attention_the_pass_used(tiny_model, tiny_tokenizer, monkeypatch):
    """qlora recomputes activations in the backward pass. With some batches narrow enough for
    the plain attention and others not, each pass must be recomputed with the attention that
    ran it: the trainer picks one for the whole training."""
    import peft

    from tunewright.core.basemodel import load_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(8)]
    lengths = sorted(len(e.input_ids) for e in examples)
    monkeypatch.setattr(training, "EAGER_ATTENTION_MAX_WIDTH", lengths[len(lengths) // 2])
    model = load_model(tiny_model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    steps = []
    hp = Hyperparameters(epochs=1, batch_size=2, learning_rate=1e-3, seed=0)
    training.train(model, examples, hp, tiny_tokenizer.pad_token_id, steps.append)
    assert len(steps) == 4 and all(step.loss > 0 for step in steps)


@pytest.mark.parametrize("method_name", ["lora", "full"])
def test_checkpointed_activations_give_the_same_gradient(tiny_model, tiny_tokenizer, method_name):
    """gradient_checkpointing "on" (``checkpoint_activations`` after the method's prepare)
    recomputes what a pass would have kept: the loss and the trained gradients are those of a
    pass that kept everything. (A prefix cannot be recomputed layer by layer: CreateJob
    refuses "on" for it.)"""
    import torch

    from tunewright.core.chat import tokenize_for_training
    from tunewright.methods import Runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods
    from tunewright.trainer import training

    method = get_method(load_methods(), method_name)
    config = build_config(method, {})
    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(6)]
    layout = training.layout_for(False, method.capabilities.takes_position_ids, True)[0]

    def gradient(checkpointed: bool) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        model = method.prepare(method.load_base(tiny_model, config, Runtime("cpu", False)), config)
        assert training.checkpoint_activations(model) if checkpointed else True
        model.train()
        loss, _ = training.accumulate_gradients(
            model, examples, 0, tiny_tokenizer.pad_token_id, torch.device("cpu"), layout
        )
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    kept_loss, kept = gradient(False)
    recomputed_loss, recomputed = gradient(True)
    assert recomputed_loss == pytest.approx(kept_loss, rel=1e-6)
    assert torch.allclose(recomputed, kept, rtol=1e-5, atol=1e-8)


def test_batches_grouped_by_length_are_a_shuffled_permutation_with_little_padding():
    import random

    from tunewright.trainer.training import GROUP_BATCHES, grouped_by_length

    rng = random.Random(0)
    lengths = [rng.randrange(20, 400) for _ in range(1000)]
    batch = 8

    def padding(order: list[int]) -> float:
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    shuffled = list(range(len(lengths)))
    random.Random(1).shuffle(shuffled)
    grouped = grouped_by_length(shuffled, lengths, batch, random.Random(1))
    assert sorted(grouped) == list(range(len(lengths)))
    assert padding(shuffled) > 0.3 and padding(grouped) < 0.05
    # With 1003 examples the last run (examples 768-1002 here) leaves a batch of 3 over: its
    # three longest, which stay last, where the loop expects the epoch's short batch.
    lengths += [5, 6, 7]
    order = grouped_by_length(list(range(len(lengths))), lengths, batch, random.Random(2))
    assert sorted(order) == list(range(1003))
    assert order[-3:] == sorted(range(768, 1003), key=lengths.__getitem__)[-3:]
    # Within a run of GROUP_BATCHES batches the batches do not go from short to long.
    means = [sum(lengths[i] for i in grouped[s : s + batch]) for s in range(0, batch * GROUP_BATCHES, batch)]
    assert means != sorted(means) and means != sorted(means, reverse=True)
    # The same generator state gives the same order (a resumed run draws what the first would).
    assert grouped_by_length(shuffled, lengths[:1000], batch, random.Random(1)) == grouped
