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
