"""The training loop and the base-against-tuned evaluation. Plain PyTorch, no gRPC.

Methods only decide what is trainable (``Method.prepare``); batching, the optimizer,
the schedule, progress reports and evaluation are the same for every method.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

from tunewright.contract import Hyperparameters, Progress
from tunewright.core.chat import IGNORE_INDEX, TokenizedExample, end_of_turn_tokens, prompt_and_reference, render
from tunewright.methods import Runtime


def peak_memory_bytes(device: torch.device) -> int:
    """The worker's peak memory so far: PyTorch's allocations on a GPU, else the process's
    peak resident memory (Linux reports it in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_of(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


def collate(batch: list[TokenizedExample], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    width = max(len(example.input_ids) for example in batch)
    ids, labels, mask = [], [], []
    for example in batch:
        pad = width - len(example.input_ids)
        ids.append(example.input_ids + [pad_id] * pad)
        labels.append(example.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def total_steps(n_examples: int, hp: Hyperparameters) -> int:
    steps = hp.epochs * math.ceil(n_examples / hp.batch_size)
    return min(steps, hp.max_steps) if hp.max_steps else steps


def schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of steps, then linear decay to zero."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train(
    model: Any,
    examples: list[TokenizedExample],
    hp: Hyperparameters,
    pad_id: int,
    on_progress: Callable[[Progress], None],
    validate: Callable[[int, float], None] | None = None,
    autocast: torch.dtype | None = None,
) -> None:
    """Trains the parameters of ``model`` that require grad with AdamW.

    ``validate(step, epoch)``, when given, is called at the end of every epoch and at the
    last step; the model is back in training mode after it returns. ``autocast`` (a dtype)
    runs the forward passes under ``torch.autocast``; the weights and AdamW's state keep their
    own dtype.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the method left no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    steps = total_steps(len(examples), hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, steps))
    batches_per_epoch = math.ceil(len(examples) / hp.batch_size)
    rng = random.Random(hp.seed)
    device = device_of(model)
    model.train()
    step = 0
    for epoch in range(hp.epochs):
        if step >= steps:
            return
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(batches_per_epoch):
            if step >= steps:
                break
            started = time.perf_counter()
            step_examples = [examples[i] for i in order[b * hp.batch_size : (b + 1) * hp.batch_size]]
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss, tokens = accumulate_gradients(model, step_examples, hp.micro_batch_size, pad_id, device)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_done = epoch + (b + 1) / batches_per_epoch
            on_progress(
                Progress(
                    step=step,
                    total_steps=steps,
                    epoch=epoch_done,
                    loss=loss,
                    learning_rate=learning_rate,
                    tokens_per_second=tokens / (time.perf_counter() - started),
                    peak_memory_bytes=peak_memory_bytes(device),
                )
            )
        if validate is not None:
            validate(step, epoch_done)
            model.train()


def accumulate_gradients(
    model: Any, examples: list[TokenizedExample], micro_batch_size: int, pad_id: int, device: torch.device
) -> tuple[float, int]:
    """Adds to the parameters' ``.grad`` the gradient of the batch's mean loss per trained
    token, in passes of ``micro_batch_size`` examples (0: one pass). Each pass's mean loss is
    weighted by its share of the batch's trained tokens, so the gradient is the one pass's
    over the whole batch, whatever the split. Returns (the batch's mean loss, its tokens)."""
    size = micro_batch_size or len(examples)
    chunks = [collate(examples[i : i + size], pad_id, device) for i in range(0, len(examples), size)]
    # The model's loss is the mean over the labels after the one-token shift: count those.
    trained = [int((c["labels"][:, 1:] != IGNORE_INDEX).sum()) for c in chunks]
    total = max(1, sum(trained))
    loss = 0.0
    for chunk, count in zip(chunks, trained, strict=True):
        if count == 0:
            continue
        weighted = model(**chunk).loss * (count / total)
        weighted.backward()
        loss += float(weighted.detach())
    return loss, sum(int(c["attention_mask"].sum()) for c in chunks)


def autocast_dtype(precision: str, runtime: Runtime) -> tuple[torch.dtype | None, str]:
    """The dtype ``train`` autocasts to for ``precision`` ("auto", "bf16", "fp32") on this
    device (None: no autocast), and a line for the job's events saying why."""
    if precision == "fp32":
        return None, "precision: float32, as asked"
    if precision == "bf16":
        native = "" if runtime.bf16 else " (this device emulates bfloat16: slower than float32)"
        return torch.bfloat16, f"precision: bfloat16 autocast, as asked{native}"
    if runtime.bf16:
        return torch.bfloat16, f"precision: bfloat16 autocast ({runtime.device} computes bfloat16 natively)"
    return None, f"precision: float32 ({runtime.device} has no native bfloat16)"


@torch.no_grad()
def mean_loss(model: Any, examples: list[TokenizedExample], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per trained token, in nats."""
    model.eval()
    device = device_of(model)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(losses)
        count += int((labels != IGNORE_INDEX).sum())
    return total / max(1, count)


@torch.no_grad()
def generate_answers(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy answers to each conversation's last assistant turn, stopping at end of turn."""
    model.eval()
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)] or [tokenizer.eos_token_id]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers = []
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [
                render(tokenizer, prompt_and_reference(c)[0], generation_prompt=True)
                for c in conversations[i : i + batch_size]
            ]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device_of(model)
            )
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            width = encoded["input_ids"].shape[1]
            answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output)
    finally:
        tokenizer.padding_side = side
    return answers


def score(answers: list[str], references: list[str]) -> dict[str, float]:
    def first_line(text: str) -> str:
        return text.strip().splitlines()[0].strip().lower() if text.strip() else ""

    n = max(1, len(references))
    return {
        "exact_match": sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True)) / n,
        "first_line_match": sum(first_line(a) == first_line(r) for a, r in zip(answers, references, strict=True)) / n,
    }
