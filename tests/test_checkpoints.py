"""Checkpoints: written atomically, pruned, listed, and a run resumed from one ends exactly as
the run that was never interrupted."""

from __future__ import annotations

import json

import pytest

from conftest import ticket_lines
from tunewright.contract import Hyperparameters
from tunewright.trainer import checkpoints


class Crash(Exception):
    pass


def lora_model(tiny_model, seed: int):
    import torch

    from tunewright.methods import detect_runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods

    method = get_method(load_methods(), "lora")
    config = build_config(method, {})
    torch.manual_seed(seed)
    return method.prepare(method.load_base(tiny_model, config, detect_runtime()), config)


def trained_weights(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("crash_after", [3, 4], ids=["inside-an-epoch", "at-an-epoch-end"])
def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_the_uninterrupted_run(
    tiny_model, tiny_tokenizer, tmp_path, precision, crash_after
):
    import torch

    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(16)]
    # 16 examples in batches of 4: an epoch is 4 steps; 3 epochs.
    hp = Hyperparameters(epochs=3, batch_size=4, learning_rate=1e-3, max_seq_length=256, seed=0)
    autocast = torch.bfloat16 if precision == "bf16" else None
    pad = tiny_tokenizer.pad_token_id

    model = lora_model(tiny_model, seed=0)
    whole, validations = [], []
    run = training.TrainingRun(model, examples, hp, pad, autocast)
    run.run(whole.append, lambda step, epoch: validations.append(step))
    expected = trained_weights(model)
    assert validations == [4, 8, 12]

    folder = tmp_path / "checkpoints"
    model = lora_model(tiny_model, seed=0)
    before = []

    def crash(run: training.TrainingRun, epoch_ended: bool) -> None:
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        checkpoints.save(folder, run, trained, before[-1].loss)
        if run.position.step == crash_after:
            raise Crash

    with pytest.raises(Crash):
        training.TrainingRun(model, examples, hp, pad, autocast).run(before.append, None, crash)

    # A new process would build the model from another random state: the checkpoint decides.
    model = lora_model(tiny_model, seed=1)
    run = training.TrainingRun(model, examples, hp, pad, autocast)
    found = checkpoints.latest(folder)
    assert found.step == crash_after
    checkpoints.load(found, run, model)
    after = []
    run.run(after.append)

    assert [p.step for p in before + after] == list(range(1, 13))
    assert [p.loss for p in before + after] == [p.loss for p in whole]
    assert [p.learning_rate for p in after] == [p.learning_rate for p in whole[crash_after:]]
    final = trained_weights(model)
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def test_a_crash_while_writing_leaves_the_last_complete_checkpoint_and_prune_removes_the_rest(
    tiny_model, tiny_tokenizer, tmp_path, monkeypatch
):
    import torch

    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    examples = [tokenize_for_training(tiny_tokenizer, json.loads(line)["messages"], 256) for line in ticket_lines(8)]
    hp = Hyperparameters(epochs=6, batch_size=4, learning_rate=1e-3, max_seq_length=256, seed=0)
    model = lora_model(tiny_model, seed=0)
    folder = tmp_path / "checkpoints"
    validation = {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.5, 10: 2.2}  # the best at step 4

    def save(run: training.TrainingRun, epoch_ended: bool) -> None:
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        checkpoints.save(folder, run, trained, 0.5, validation.get(run.position.step))

    training.TrainingRun(model, examples, hp, tiny_tokenizer.pad_token_id).run(lambda p: None, None, save)
    assert [c.step for c in checkpoints.complete(folder)] == list(range(1, 13))
    assert checkpoints.latest(folder).validation_loss is None

    def torn(*args, **kwargs):
        raise OSError("No space left on device")

    run = training.TrainingRun(model, examples, hp, tiny_tokenizer.pad_token_id)
    run.position.step = 13
    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        checkpoints.save(folder, run, trained_weights(model), 0.4)
    assert (folder / ".step-00000013.tmp").is_dir()
    assert checkpoints.latest(folder).step == 12

    removed = checkpoints.prune(folder, keep=2)
    assert folder / ".step-00000013.tmp" in removed
    assert [c.step for c in checkpoints.complete(folder)] == [4, 11, 12]
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000004", "step-00000011", "step-00000012"]


def test_the_policy_writes_every_n_steps_and_at_epoch_ends_or_keeps_under_5_percent_of_the_time():
    every = checkpoints.Policy(3)
    assert [s for s in range(1, 10) if every.due(s, epoch_ended=s == 4)] == [3, 4, 6, 9]

    now = [0.0]
    auto = checkpoints.Policy(0, clock=lambda: now[0])
    now[0] = 59.0
    assert not auto.due(10, epoch_ended=False)
    assert auto.due(10, epoch_ended=True)
    now[0] = 60.0
    assert auto.due(11, epoch_ended=False)
    auto.written(seconds=6.0)  # a slow write: the next waits 20 times as long
    now[0] = 60.0 + 119.0
    assert not auto.due(12, epoch_ended=False)
    now[0] = 60.0 + 120.0
    assert auto.due(13, epoch_ended=False)


def test_any_kept_checkpoint_exports_like_a_finished_job_and_a_missing_one_is_not_found(services, tiny_model):
    from safetensors.torch import load_file

    from tunewright.client import ServiceError

    client = services.client
    dataset = client.create_dataset(client.upload_bytes("e.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    job = client.create_job(
        dataset.name, base_model=str(tiny_model), epochs=3, batch_size=8, evaluate=False, keep_checkpoints=3
    )
    list(client.watch_job(job.name))
    # A short job checkpoints at each epoch's end.
    first = client.list_checkpoints(job.name)[0]
    listed = client.list_checkpoints(job.name)
    assert [c.step for c in listed] == [4, 8, 12] and [c.epoch for c in listed] == [1.0, 2.0, 3.0]
    assert all(c.validation_loss is not None and c.size_bytes > 0 for c in listed)
    assert listed[-1].name == f"{job.name}/checkpoints/12"

    exported = client.export_model(first.name, format="safetensors")
    job_id = job.name.split("/")[1]
    assert exported.name == f"models/{job_id}-step-{first.step}" and exported.job == first.name
    assert exported.max_kl_divergence is not None and exported.max_kl_divergence <= exported.kl_tolerance
    final = client.export_model(job.name, format="safetensors")

    def weights(model) -> dict:
        return load_file(services.root / "serve" / "models" / model.name.split("/")[1] / "model.safetensors")

    # The checkpoint at step 4 is another model than the finished job's.
    early, last = weights(exported), weights(final)
    assert early.keys() == last.keys() and any(not (early[k] == last[k]).all() for k in early)

    with pytest.raises(ServiceError) as missing:
        client.export_model(f"{job.name}/checkpoints/5", format="safetensors")
    assert missing.value.code == "NOT_FOUND" and missing.value.reason == "CHECKPOINT_NOT_FOUND"
    assert "ListCheckpoints" in missing.value.message
    with pytest.raises(ServiceError) as malformed:
        client.export_model(f"{job.name}/checkpoints/last", format="safetensors")
    assert malformed.value.code == "INVALID_ARGUMENT" and malformed.value.violations[0][0] == "job"
